"""Individual contribution of input feature groups (paper Eq. 9, Fig 6), for feature set 2.

    Contribution_i = ((PC_v + PC_c + PC_e) / 3) / ((PC_v,i + PC_c,i + PC_e,i) / 3)

PC_x is the Pearson r between DFT and predicted target x of the network trained on every feature;
PC_x,i the same for a network retrained without feature group i. A value above 1 means that leaving
the group out lowers the correlation. The chemical formula takes no part (the paper: without it the
model does not work). Every group is retrained with the same seeds as the full model, and each seed's
contribution pairs the two networks of that seed, so seed noise cancels where it can. The full network
of a seed is the train job's own where there is one: the same data, recipe and seed train the same
network, so its saved predictions stand in for a second training.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Iterable, Mapping

import numpy as np
import pandas as pd

from electrode_ml.errors import InputError
from electrode_ml.metrics import regression_metrics
from electrode_ml.schema import TARGETS

if TYPE_CHECKING:  # the type only: importing the model would import torch
    from electrode_ml.model import Trainer

log = logging.getLogger(__name__)

FULL = "all features"
# The paper's analysis of feature set 2's model: the groups below are that set's columns.
MODEL = "model2"

# Fig 6's eight input features -> the feature-set-2 columns they produce (exact names or block prefixes).
FEATURE_GROUPS: dict[str, tuple[str, ...]] = {
    "formation energy": ("dft__charge_formation_energy_per_atom", "dft__discharge_formation_energy_per_atom"),
    "energy per atom": ("dft__charge_energy_per_atom", "dft__discharge_energy_per_atom"),
    "ion type": ("working_ion__*",),
    "band gap": ("dft__charge_band_gap", "dft__discharge_band_gap"),
    "Fermi level": ("dft__charge_efermi", "dft__discharge_efermi"),
    "stability": ("dft__stability_charge", "dft__stability_discharge"),
    "crystal system": ("crystal_system__*",),
    "space group": ("space_group__*",),
}


def group_columns(columns: Iterable[str], group: str, groups: Mapping[str, tuple[str, ...]] = FEATURE_GROUPS) -> list[str]:
    """The feature columns of ``group``: exact names, or every column starting with a ``prefix*``."""
    columns = list(columns)
    chosen = []
    for pattern in groups[group]:
        if pattern.endswith("*"):
            chosen += _prefixed(columns, pattern)
        elif pattern in columns:
            chosen.append(pattern)
        else:
            raise InputError(f"feature contribution: group {group!r} needs column {pattern!r}, "
                             "which the feature table lacks (feature set 2 is required)")
    if not chosen:
        raise InputError(f"feature contribution: no column of group {group!r} in the feature table")
    return chosen


def pearson_by_target(true: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Pearson r per target column (the paper's PC_v, PC_c, PC_e)."""
    return np.array([regression_metrics(true[:, index], predicted[:, index])["r"] for index in range(true.shape[1])])


def contribution(r_full: np.ndarray, r_without: np.ndarray) -> float:
    """Eq. 9: mean Pearson r with every feature over the mean Pearson r without the group."""
    return float(np.mean(r_full) / np.mean(r_without))




def _prefixed(columns: list[str], pattern: str) -> list[str]:
    return [name for name in columns if name.startswith(pattern[:-1])]


def _left_out_by_configuration(columns: list[str], patterns: tuple[str, ...]) -> bool:
    """A block given only by prefixes that match no column (e.g. ``features.space_groups: false``)."""
    return all(pattern.endswith("*") and not _prefixed(columns, pattern) for pattern in patterns)


def run_contribution(frames: Mapping[str, pd.DataFrame], trainer: Trainer, seeds: Iterable[int],
                     groups: Mapping[str, tuple[str, ...]] = FEATURE_GROUPS, evaluate: str = "val",
                     trained: Mapping[int, pd.DataFrame] | None = None) -> pd.DataFrame:
    """Train the full network and one per left-out group, for every seed; one row per (group, seed).

    ``frames`` are the feature tables (battery_id, targets, feature columns) of the train, val and
    test splits. ``trained`` maps a seed to the predictions of its full network already trained (the
    train rule's layout), which are used instead of training it again. Columns: group, seed,
    n_removed, the Pearson r and MAE of each target on ``evaluate`` and on test, mean_r, and
    contribution (Eq. 9 against the full network of the same seed).
    """
    trained = dict(trained or {})
    features = [name for name in frames["train"].columns if name != "battery_id" and name not in TARGETS]
    present = [group for group in groups if not _left_out_by_configuration(features, groups[group])]
    runs = [(group, group_columns(features, group, groups)) for group in present]
    # a group constant on the training split (the ion type of one-ion data) carries nothing to leave
    # out: its "contribution" would be the two trainings' noise, ranked as a finding
    constant = {group for group, columns in runs if (frames["train"][columns].nunique() <= 1).all()}
    for group in sorted(constant):
        log.warning("feature contribution: left out %r, whose columns are constant on the training split", group)
    runs = [(FULL, [])] + [(group, columns) for group, columns in runs if group not in constant]
    y = {split: frame[list(TARGETS)].to_numpy(np.float64) for split, frame in frames.items()}
    scored = [split for split in dict.fromkeys((evaluate, "test")) if split in frames]
    rows = []
    for group, removed in runs:
        kept = [name for name in features if name not in set(removed)]
        x = {split: frame[kept].to_numpy(np.float32) for split, frame in frames.items()}
        for seed in seeds:
            reused = group == FULL and int(seed) in trained
            if reused:
                predictions = predictions_by_split(trained[int(seed)], frames)
            else:
                predict = trainer(x["train"], y["train"], x["val"], y["val"], int(seed))
                predictions = {split: predict(x[split]) for split in scored}
            row = {"group": group, "seed": int(seed), "n_removed": len(removed), "n_features": len(kept)}
            for split in scored:
                predicted = predictions[split]
                r = pearson_by_target(y[split], predicted)
                for index, target in enumerate(TARGETS):
                    row[f"{split}_r_{target}"] = float(r[index])
                    row[f"{split}_mae_{target}"] = float(np.mean(np.abs(predicted[:, index] - y[split][:, index])))
                row[f"{split}_mean_r"] = float(np.mean(r))
            rows.append(row)
            log.info("%s, seed %d%s: mean r on %s %.4f", group, seed, " (the train job's network)" if reused else "",
                     evaluate, row[f"{evaluate}_mean_r"])
    table = pd.DataFrame(rows)
    return add_contributions(table, evaluate)


def predictions_by_split(predictions: pd.DataFrame, frames: Mapping[str, pd.DataFrame]) -> dict[str, np.ndarray]:
    """A train job's predictions (battery_id, split, targets) in the row order of each split's feature table."""
    by_split = {}
    for split, frame in frames.items():
        part = predictions[predictions["split"] == split].set_index("battery_id")
        missing = pd.Index(frame["battery_id"]).difference(part.index)
        if len(missing):
            raise InputError(f"feature contribution: the full network's predictions lack {split} electrode "
                             f"{missing[0]!r}: they were made on other feature tables")
        by_split[split] = part.loc[frame["battery_id"], list(TARGETS)].to_numpy(np.float64)
    return by_split


def add_contributions(table: pd.DataFrame, evaluate: str = "val") -> pd.DataFrame:
    """Per-seed Eq. 9 against the full network of the same seed (NaN for the full network itself)."""
    table = table.copy()
    for split in dict.fromkeys((evaluate, "test")):
        column = f"{split}_mean_r"
        if column not in table:
            continue
        full = table[table["group"] == FULL].set_index("seed")[column]
        paired = table["seed"].map(full)
        name = "contribution" if split == evaluate else f"contribution_{split}"
        table[name] = np.where(table["group"] == FULL, np.nan, paired / table[column])
    return table


def summarise(per_seed: pd.DataFrame, evaluate: str = "val") -> pd.DataFrame:
    """One row per left-out group, largest contribution first: mean, std, min and max over seeds, the
    contribution of the seed-averaged correlations, and the mean Pearson r of each target without it."""
    rows = []
    full = per_seed[per_seed["group"] == FULL]
    for group, part in per_seed[per_seed["group"] != FULL].groupby("group", sort=False):
        values = part["contribution"]
        row = {
            "group": group,
            "n_removed": int(part["n_removed"].iloc[0]),
            "n_seeds": int(len(part)),
            "contribution_mean": float(values.mean()),
            "contribution_std": float(values.std(ddof=1)) if len(values) > 1 else float("nan"),
            "contribution_min": float(values.min()),
            "contribution_max": float(values.max()),
            "contribution_of_mean_r": contribution(full[f"{evaluate}_mean_r"].mean(), part[f"{evaluate}_mean_r"].mean()),
        }
        if "contribution_test" in part:
            row["contribution_test_mean"] = float(part["contribution_test"].mean())
        for target in TARGETS:
            row[f"{evaluate}_r_{target}_without"] = float(part[f"{evaluate}_r_{target}"].mean())
            row[f"{evaluate}_r_{target}_full"] = float(full[f"{evaluate}_r_{target}"].mean())
        rows.append(row)
    summary = pd.DataFrame(rows)
    return summary.sort_values("contribution_mean", ascending=False).reset_index(drop=True)


