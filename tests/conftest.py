"""Shared fixtures: the real snapshot (read in place from ../shared) and small frames cut from it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import torch

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SNAPSHOT = (REPO / ".." / "shared" / "data" / "mp_insertion_electrodes" / "ma2022_mp_insertion_electrodes_4300.csv").resolve()


@pytest.fixture(scope="session")
def snapshot_path() -> Path:
    assert SNAPSHOT.is_file(), f"the snapshot must sit at {SNAPSHOT} (../shared beside the repo)"
    return SNAPSHOT


@pytest.fixture(scope="session")
def snapshot_text(snapshot_path) -> pd.DataFrame:
    """The snapshot as the loader reads it: all text."""
    return pd.read_csv(snapshot_path, dtype=str, keep_default_na=False)


@pytest.fixture
def small_raw(snapshot_text) -> pd.DataFrame:
    """60 real electrodes covering several ions, as text, to corrupt in tests."""
    return snapshot_text.groupby("working_ion").head(6).reset_index(drop=True).copy()


@pytest.fixture(autouse=True)
def _no_mp_key(monkeypatch):
    """Tests decide the data source themselves; a developer's real key must never leak into them."""
    monkeypatch.delenv("MP_API_KEY", raising=False)
    yield


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, snapshot_path):
    """The whole default workflow once, on the snapshot, with a tiny recipe (3 seeds, 30 epochs, 3 trials)."""
    from test_workflow import snakemake, tiny_config

    workdir = tmp_path_factory.mktemp("tiny")
    results = workdir / "results"
    config = tiny_config(results, snapshot_path)
    snakemake(config, workdir)
    return config, results, workdir
