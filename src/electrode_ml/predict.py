"""Scoring electrodes with a trained ensemble: the fitted featuriser plus every seed's network."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import torch

from electrode_ml.ensemble import Z_95, interval_scale
from electrode_ml.errors import InputError
from electrode_ml.features import (applicability, base_model, featurizer_inputs, is_physics_model,
                                   uses_voltage_trees)
from electrode_ml.fileio import read_json
from electrode_ml.model import StackedEnsemble, TrainedNetwork
from electrode_ml.physics import PhysicsBaseline, combine
from electrode_ml.schema import TARGETS
from electrode_ml.trees import CAPACITY, VoltageTrees


@dataclass
class MemberPredictions:
    """Per-network values, shape (n_networks, n_rows, 3); where physics gave a value outright,
    shape (n_rows, 3); and, per row, why the physics did not describe it ('' where it did, and
    for a model without physics)."""

    members: np.ndarray
    held: np.ndarray
    physics_notes: np.ndarray


def _fitted(path: Path, what: str, pronoun: str):
    """A joblib file the workflow fits, or one line saying it is missing."""
    if not path.exists():
        raise InputError(f"no {what} at {path} (rerun the workflow to fit {pronoun})")
    return joblib.load(path)


@dataclass
class TrainedEnsemble:
    """What a workflow run leaves for later use: featuriser + networks of one model."""

    model: str
    featurizer: object
    networks: StackedEnsemble
    intervals: dict  # the calibration of the 95 % interval (metrics.json's prediction_interval)
    physics: PhysicsBaseline | None = None
    trees: VoltageTrees | None = None

    @classmethod
    def load(cls, results: str | Path, model: str, device: str = "cpu", dtype=torch.float32) -> "TrainedEnsemble":
        """A physics model reuses its base model's featuriser and networks (see physics.py); the
        calibration of the intervals comes from the model's evaluated ensemble (metrics.json)."""
        results = Path(results)
        base = base_model(model)
        transformer_path = results / "features" / base / "transformers.joblib"
        checkpoints = sorted((results / "train" / base).glob("seed_*/model.pt"))
        if not transformer_path.exists() or not checkpoints:
            raise InputError(f"no trained {model} under {results} (run the workflow first, "
                             f"or pass --results pointing at its output folder)")
        networks = [TrainedNetwork.from_checkpoint(torch.load(path, map_location="cpu", weights_only=False))
                    for path in checkpoints]
        physics = _fitted(results / "physics" / model / "physics.joblib", f"fitted physics of {model}",
                          "it") if is_physics_model(model) else None
        trees = None
        if uses_voltage_trees(model):
            trees_path = results / "physics" / model / "voltage_trees.joblib"
            trees = _fitted(trees_path, f"voltage trees of {model}", "them")
            if not getattr(trees, "models", None):
                raise InputError(f"voltage trees of {model} at {trees_path} are an earlier release's single "
                                 f"model (rerun the workflow to fit them again)")
        metrics_path = results / "ensemble" / model / "metrics.json"
        if not metrics_path.exists():  # no calibration: the calibrated interval promised would be missing
            raise InputError(f"no evaluated ensemble of {model} at {metrics_path}: the workflow calibrates the "
                             f"intervals of the models in config `models` (add {model} there and rerun)")
        intervals = read_json(metrics_path)["prediction_interval"]
        return cls(model, joblib.load(transformer_path), StackedEnsemble(networks, device=device, dtype=dtype),
                   intervals, physics, trees)

    @property
    def input_columns(self) -> list[str]:
        """What a candidate must hold: its id and the columns the run's featuriser reads (the physics
        reads the formulas and the ion, and model2_phys the DFT energies, which it reads too)."""
        return ["battery_id", *featurizer_inputs(self.featurizer)]

    def features(self, electrodes: pd.DataFrame) -> np.ndarray:
        return np.asarray(self.featurizer.transform(electrodes), dtype=np.float32)

    def predict_members(self, electrodes: pd.DataFrame, chunk_rows: int = 20000) -> MemberPredictions:
        """Every network's predictions, computed in chunks to bound memory (see MemberPredictions)."""
        parts = [self._predict_chunk(electrodes.iloc[start:start + chunk_rows])
                 for start in range(0, len(electrodes), chunk_rows)]
        if not parts:
            return MemberPredictions(np.zeros((len(self.networks), 0, len(TARGETS))),
                                     np.zeros((0, len(TARGETS)), dtype=bool), np.array([], dtype=object))
        return MemberPredictions(np.concatenate([part.members for part in parts], axis=1),
                                 np.concatenate([part.held for part in parts]),
                                 np.concatenate([part.physics_notes for part in parts]))

    def _predict_chunk(self, electrodes: pd.DataFrame) -> MemberPredictions:
        features = self.features(electrodes)
        members = self.networks.predict(features)
        if self.physics is None:
            return MemberPredictions(members, np.zeros(members.shape[1:], dtype=bool),
                                     np.full(len(electrodes), "", dtype=object))
        notes = self.physics.reasons(electrodes)
        physics = self.physics.transform(electrodes, notes)
        if self.trees is not None:  # the trees' share follows the physics capacity
            members = self.trees.blend(members, features, physics[:, CAPACITY])
        return MemberPredictions(combine(physics[np.newaxis], members), ~np.isnan(physics), notes)

    def predict(self, electrodes: pd.DataFrame) -> pd.DataFrame:
        """Wide table: battery_id and, per target, mean, std, the paper's 95 % CI of the mean, the
        calibrated 95 % prediction interval (physics values get the physics quantile) and where the
        value came from; then, for a physics model, why the physics did not describe a row, the
        elements no training formula held and, with DFT inputs, the fields outside their training
        range (:func:`electrode_ml.features.applicability`)."""
        predicted = self.predict_members(electrodes)
        members, held = predicted.members, predicted.held
        n = members.shape[0]
        mean = members.mean(axis=0)
        std = members.std(axis=0, ddof=1)
        half = Z_95 * std / np.sqrt(n)
        columns = {"battery_id": electrodes["battery_id"].to_numpy()}
        for index, target in enumerate(TARGETS):
            columns[f"{target}_mean"] = mean[:, index]
            columns[f"{target}_std"] = std[:, index]
            columns[f"{target}_ci_low"] = mean[:, index] - half[:, index]
            columns[f"{target}_ci_high"] = mean[:, index] + half[:, index]
            quantile = self.intervals["quantile"][target]
            by_source = np.where(held[:, index], quantile.get("physics", np.inf), quantile["network"])
            pi_half = by_source * interval_scale(std[:, index], self.intervals["spread_floor"][target])
            columns[f"{target}_pi_low"] = mean[:, index] - pi_half
            columns[f"{target}_pi_high"] = mean[:, index] + pi_half
            columns[f"{target}_source"] = np.where(held[:, index], "physics", "network")
        if self.physics is not None:
            columns["physics_note"] = predicted.physics_notes
        flags = applicability(self.featurizer, electrodes)
        columns.update({name: flags[name].to_numpy() for name in flags.columns.drop("battery_id")})
        return pd.DataFrame(columns)
