"""`electrode-ml predict` / `screen` against the ensemble of the tiny end-to-end run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from electrode_ml.cli import candidate_columns, main, passes
from electrode_ml.schema import TARGETS

pytestmark = pytest.mark.e2e


@pytest.fixture
def candidates(snapshot_text, tmp_path) -> Path:
    rows = snapshot_text.sample(40, random_state=1)[candidate_columns("model2")]
    path = tmp_path / "candidates.csv"
    rows.to_csv(path, index=False)
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "electrode_ml.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("model", ["model1", "model2_phys"])
def test_predict_writes_mean_ci_and_interval_per_target(tiny_run, candidates, tmp_path, model):
    _, results, _ = tiny_run
    out = tmp_path / "out.csv"
    assert main(["predict", str(candidates), "-o", str(out), "--model", model, "--results", str(results)]) == 0
    table = pd.read_csv(out)
    assert len(table) == 40
    for target in TARGETS:
        assert (table[f"{target}_ci_low"] <= table[f"{target}_mean"]).all()
        assert (table[f"{target}_pi_low"] <= table[f"{target}_ci_low"]).all()
        assert (table[f"{target}_ci_high"] <= table[f"{target}_pi_high"]).all()
    # predictions equal the ensemble's for the same electrodes (same featuriser, same networks)
    ensemble = pd.read_parquet(results / "ensemble" / model / "predictions.parquet")
    voltage = ensemble[ensemble["target"] == "average_voltage"].set_index("battery_id")["mean"]
    np.testing.assert_allclose(table["average_voltage_mean"], voltage.loc[table["battery_id"]], rtol=1e-4, atol=1e-4)


def test_bad_row_is_one_line_and_nothing_is_written(tiny_run, candidates, tmp_path):
    _, results, _ = tiny_run
    rows = pd.read_csv(candidates, dtype=str)
    rows.loc[7, "formula_discharge"] = "Li2Qq"
    rows.to_csv(candidates, index=False)
    out = tmp_path / "out.csv"
    run = run_cli("predict", str(candidates), "-o", str(out), "--model", "model1", "--results", str(results))
    assert run.returncode == 2
    error_lines = [line for line in run.stderr.splitlines() if "error" in line]
    assert len(error_lines) == 1 and rows.loc[7, "battery_id"] in error_lines[0] and "formula_discharge" in error_lines[0]
    assert "Traceback" not in run.stderr
    assert not out.exists() and not list(tmp_path.glob(".out.csv*"))


def test_skip_bad_writes_rejects_and_scores_the_rest(tiny_run, candidates, tmp_path):
    _, results, _ = tiny_run
    rows = pd.read_csv(candidates, dtype=str)
    rows.loc[3, "charge_space_group_number"] = "231"
    rows.loc[5, "working_ion"] = "Xe"
    rows.to_csv(candidates, index=False)
    out = tmp_path / "out.csv"
    assert main(["predict", str(candidates), "-o", str(out), "--model", "model1", "--results", str(results), "--skip-bad"]) == 0
    assert len(pd.read_csv(out)) == 38
    rejects = pd.read_csv(tmp_path / "out.rejects.csv")
    assert set(rejects["field"]) == {"charge_space_group_number", "working_ion"}


def test_only_bad_rows_gives_empty_output_and_rejects(tiny_run, candidates, tmp_path):
    _, results, _ = tiny_run
    rows = pd.read_csv(candidates, dtype=str).head(3)
    rows["working_ion"] = "Xe"
    rows.to_csv(candidates, index=False)
    out = tmp_path / "out.csv"
    assert main(["predict", str(candidates), "-o", str(out), "--model", "model1", "--results", str(results), "--skip-bad"]) == 0
    assert pd.read_csv(out).empty
    assert len(pd.read_csv(tmp_path / "out.rejects.csv")) == 3


@pytest.mark.parametrize("content, words", [("", "empty file"), ("battery_id,formula_charge\n", "no rows")])
def test_empty_inputs_are_one_line(tiny_run, tmp_path, content, words):
    _, results, _ = tiny_run
    path = tmp_path / "in.csv"
    path.write_text(content)
    run = run_cli("predict", str(path), "-o", str(tmp_path / "out.csv"), "--results", str(results))
    assert run.returncode == 2 and words in run.stderr and "Traceback" not in run.stderr


def test_model2_needs_dft_columns(tiny_run, candidates, tmp_path):
    _, results, _ = tiny_run
    pd.read_csv(candidates).drop(columns="charge_band_gap").to_csv(candidates, index=False)
    run = run_cli("predict", str(candidates), "-o", str(tmp_path / "o.csv"), "--model", "model2", "--results", str(results))
    assert run.returncode == 2 and "charge_band_gap" in run.stderr


def test_screen_agrees_with_hand_filter(tiny_run, candidates, tmp_path):
    _, results, _ = tiny_run
    out = tmp_path / "screened.csv"
    assert main(["screen", str(candidates), "-o", str(out), "--model", "model1", "--results", str(results),
                 "--voltage", "1.5", "--capacity", "80", "--energy", "150"]) == 0
    table = pd.read_csv(out)
    hand = ((table["average_voltage_mean"] >= 1.5) & (table["capacity_grav_mean"] >= 80)
            & (table["energy_grav_mean"] >= 150))
    assert (table["passes"] == hand).all()
    assert (table["passes_at_pi_low"] <= table["passes"]).all()


def test_passes_on_a_handmade_frame():
    frame = pd.DataFrame({"average_voltage_mean": [2.5, 1.9, 3.0], "capacity_grav_mean": [120, 150, 99],
                          "energy_grav_mean": [300, 285, 297]})
    assert passes(frame, 2.0, 100, 200).tolist() == [True, False, False]


def test_readme_example_file_scores(tiny_run, tmp_path):
    _, results, _ = tiny_run
    example = Path(__file__).resolve().parents[1] / "docs" / "example_candidates.csv"
    out = tmp_path / "example.csv"
    assert main(["predict", str(example), "-o", str(out), "--model", "model1_phys", "--results", str(results)]) == 0
    table = pd.read_csv(out).set_index("battery_id")
    # olivine LiFePO4: the stoichiometric capacity, whatever the networks say
    assert table.loc["olivine-LiFePO4", "capacity_grav_mean"] == pytest.approx(169.9, abs=0.2)
