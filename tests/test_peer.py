"""The peer baseline peer_gbm: Magpie features + gradient-boosted trees, on the real snapshot."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml
from threadpoolctl import threadpool_limits

from electrode_ml import peer, steps
from electrode_ml.data import validate_electrodes
from electrode_ml.fileio import file_sha256, write_parquet
from electrode_ml.schema import CRYSTAL_SYSTEMS, TARGETS, WORKING_IONS
from electrode_ml.split import make_split

REPO = Path(__file__).resolve().parents[1]
PAPER_SPLIT = {"method": "random", "fractions": (0.81, 0.0902, 0.0998), "seed": 42}
PREDICTION_COLUMNS = ["battery_id", "split", "target", "true", "mean", "std", "n",
                      "ci_low", "ci_high", "pi_low", "pi_high", "source"]


def typed(raw: pd.DataFrame) -> pd.DataFrame:
    electrodes, _ = validate_electrodes(raw, ions=list(WORKING_IONS), voltage_window=(-1, 7))
    return electrodes


@pytest.fixture(scope="module")
def electrodes(snapshot_text) -> pd.DataFrame:
    return typed(snapshot_text)


@pytest.fixture(scope="module")
def split(electrodes) -> pd.DataFrame:
    return make_split(electrodes, **PAPER_SPLIT)


@pytest.fixture(scope="module")
def step_run(electrodes, split, tmp_path_factory):
    """peer_gbm_step once on the whole snapshot, as the rule calls it."""
    root = tmp_path_factory.mktemp("peer")
    write_parquet(electrodes, root / "electrodes.parquet")
    write_parquet(split, root / "split.parquet")
    input = SimpleNamespace(electrodes=root / "electrodes.parquet", split=root / "split.parquet")
    output = SimpleNamespace(predictions=root / "predictions.parquet", metrics=root / "metrics.json",
                             parity=root / "parity.png", errors=root / "error_histograms.png")
    rounds = yaml.safe_load((REPO / "config.yaml").read_text())["peer_gbm"]["max_iter"]  # the shipped budget
    # both cores: the tests run one at a time, and the shipped budget takes over a minute on one
    steps.peer_gbm_step(input, output, SimpleNamespace(seed=0, max_iter=rounds, code="peer-code"), threads=2)
    return output


def test_magpie_ships_with_matminer_and_needs_no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("Magpie featurisation tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    peer._magpie.cache_clear()
    row = peer.formula_magpie(pd.Series(["LiFePO4"])).iloc[0]
    assert row["magpie_mean_Number"] == pytest.approx((3 + 26 + 15 + 4 * 8) / 7)
    assert row["magpie_maximum_Number"] == 26 and row["magpie_minimum_Number"] == 3


def test_magpie_features_on_snapshot_rows(small_raw):
    electrodes = typed(small_raw)
    features = peer.magpie_features(electrodes)
    labels = peer.magpie_labels()
    assert len(labels) == 132
    expected = (["battery_id"] + [f"charge_{label}" for label in labels] + [f"discharge_{label}" for label in labels]
                + [f"ion_{ion}" for ion in WORKING_IONS]
                + [f"{end}_crystal_{name}" for end in ("charge", "discharge") for name in CRYSTAL_SYSTEMS]
                + ["charge_space_group_number", "discharge_space_group_number"])
    assert list(features.columns) == expected
    assert features["battery_id"].tolist() == electrodes["battery_id"].tolist()
    values = features.drop(columns="battery_id").to_numpy(dtype=float)
    assert values.shape == (len(electrodes), 290) and np.isfinite(values).all()
    ions = features[[f"ion_{ion}" for ion in WORKING_IONS]].to_numpy()
    assert (ions.sum(axis=1) == 1).all()
    assert (ions.argmax(axis=1) == [WORKING_IONS.index(ion) for ion in electrodes["working_ion"]]).all()
    # The charged formula has lost its working ion (Li0TiO2): its lightest element is then O, not Li.
    first_li = electrodes.index[electrodes["working_ion"] == "Li"][0]
    assert features.loc[first_li, "discharge_magpie_minimum_Number"] == 3
    assert features.loc[first_li, "charge_magpie_minimum_Number"] > 3


def test_step_writes_the_ensemble_format(step_run, split):
    summary = pd.read_parquet(step_run.predictions)
    assert list(summary.columns) == PREDICTION_COLUMNS
    assert len(summary) == len(split) * len(TARGETS)
    assert (summary["std"] == 0).all() and (summary["n"] == 1).all()
    assert (summary["ci_low"] == summary["mean"]).all() and (summary["ci_high"] == summary["mean"]).all()
    assert (summary["pi_low"] < summary["mean"]).all() and (summary["pi_high"] > summary["mean"]).all()
    metrics = json.loads(step_run.metrics.read_text())
    assert set(metrics) == {"n_seeds", "seeds", "ensemble_mean", "best_single_seed", "train_mean_baseline",
                            "coverage", "prediction_interval", "provenance"}
    assert metrics["n_seeds"] == 1 and len(metrics["seeds"]) == 1
    assert metrics["provenance"] == {"code": "peer-code",
                                     "electrodes_sha256": file_sha256(step_run.predictions.parent / "electrodes.parquet")}
    assert set(metrics["coverage"]) == {"pi"}  # no CI of a mean of one model (its "CI" covered 0 %)
    assert step_run.parity.stat().st_size > 0 and step_run.errors.stat().st_size > 0


def test_interval_width_follows_each_electrode_and_covers_the_test_split(step_run):
    summary = pd.read_parquet(step_run.predictions)
    widths = (summary["pi_high"] - summary["pi_low"]).groupby(summary["target"])
    for target, width in widths:
        # one width per electrode, not one for all: the quantile GBMs' spread sets it
        assert width.nunique() > 0.9 * len(width), target
        assert width.max() > 3 * width.min(), target
    metrics = json.loads(step_run.metrics.read_text())
    assert metrics["prediction_interval"]["spread"].startswith("half the gap")
    for target in TARGETS:
        assert 0.90 <= metrics["coverage"]["pi"]["test"][target] <= 0.99, target


def test_gbm_beats_the_training_mean_on_validation(step_run):
    metrics = json.loads(step_run.metrics.read_text())
    for target in TARGETS:
        model = metrics["ensemble_mean"]["val"][target]["mae"]
        baseline = metrics["train_mean_baseline"]["val"][target]["mae"]
        assert model < 0.5 * baseline, (target, model, baseline)
    # The peer baseline: about 0.39 V on the paper's random split.
    assert metrics["ensemble_mean"]["test"]["average_voltage"]["mae"] < 0.5


def test_same_seed_gives_identical_predictions(electrodes, split):
    frames = peer.feature_sets(electrodes, split)
    with threadpool_limits(limits=1):
        first, second = (peer.fit_predict_gbm(frames["train"], frames, seed=3, max_iter=40) for _ in range(2))
    for name in ("train", "val", "test"):
        assert list(first[name].columns) == ["battery_id", "split", *TARGETS]
        assert len(first[name]) == (split["split"] == name).sum()
        pd.testing.assert_frame_equal(first[name], second[name])
