"""`electrode-ml predict` / `screen` against the ensemble of the tiny end-to-end run."""

from __future__ import annotations

import gzip
import io
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest

from electrode_ml.candidates import candidate_columns, passes
from electrode_ml.cli import main
from electrode_ml.errors import InputError
from electrode_ml.fileio import read_json
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


@pytest.mark.parametrize("model", ["model1", "model1_phys", "model2_phys"])
def test_predict_writes_mean_ci_and_interval_per_target(tiny_run, tmp_path, model):
    _, results, _ = tiny_run
    # the run's own (exact-formula) validation electrodes, so that the two predictions must agree
    ensemble = pd.read_parquet(results / "ensemble" / model / "predictions.parquet")
    val_ids = ensemble.loc[ensemble["split"] == "val", "battery_id"].unique()
    electrodes = pd.read_parquet(results / "data" / "electrodes.parquet")
    electrodes = electrodes[electrodes["battery_id"].isin(val_ids)]
    candidates = tmp_path / "candidates.csv"
    electrodes[candidate_columns("model2")].to_csv(candidates, index=False)
    out = tmp_path / "out.csv"
    assert main(["predict", str(candidates), "-o", str(out), "--model", model, "--results", str(results)]) == 0
    table = pd.read_csv(out)
    assert len(table) == len(val_ids) > 100
    for target in TARGETS:
        assert (table[f"{target}_ci_low"] <= table[f"{target}_mean"]).all()
        assert (table[f"{target}_pi_low"] <= table[f"{target}_ci_low"]).all()
        assert (table[f"{target}_ci_high"] <= table[f"{target}_pi_high"]).all()
        # every value equals the evaluated ensemble's for the same electrodes (same featuriser, same
        # networks, same calibration): the paper's CI and this target's own calibrated interval
        expected = ensemble[ensemble["target"] == target].set_index("battery_id").loc[table["battery_id"]]
        scale = expected["mean"].abs().max()
        for column in ("mean", "std", "ci_low", "ci_high", "pi_low", "pi_high"):
            np.testing.assert_allclose(table[f"{target}_{column}"], expected[column], rtol=1e-4, atol=1e-5 * scale,
                                       err_msg=f"{model} {target}_{column}")


def test_predict_in_bfloat16_is_close_to_float32(tiny_run, candidates, tmp_path):
    _, results, _ = tiny_run
    tables = {}
    for precision in ("float32", "bfloat16"):
        out = tmp_path / f"{precision}.csv"
        assert main(["predict", str(candidates), "-o", str(out), "--model", "model1", "--results", str(results),
                     "--precision", precision]) == 0
        tables[precision] = pd.read_csv(out)
    for target in TARGETS:
        exact = tables["float32"][f"{target}_mean"]
        shift = (tables["bfloat16"][f"{target}_mean"] - exact).abs()
        # bfloat16 keeps 8 significant bits (0.4 %); three layers may compound that to about 1 %
        assert 0 < shift.max() <= 0.02 * exact.abs().max()


def test_predict_says_where_each_value_came_from_and_flags_unseen_elements(tiny_run, tmp_path, capsys):
    _, results, _ = tiny_run
    rows = pd.read_parquet(results / "data" / "electrodes.parquet")
    rows = rows[rows["working_ion"] == "Li"].head(3)[candidate_columns("model1")].reset_index(drop=True)
    # no snapshot electrode holds plutonium, so no training formula of the tiny run does
    rows.loc[1, ["formula_charge", "formula_discharge"]] = ["Li0PuPO4", "Li1PuPO4"]
    table, text = predict_rows(capsys, rows, tmp_path, results, "model1_phys")
    assert table["unseen_elements"].tolist() == ["", "Pu", ""]
    assert "1 candidate(s) hold elements that no training formula held (Pu)" in text
    # a noble gas has no electronegativity, by which pymatgen orders a formula: its warnings are quiet
    helium = rows.assign(formula_charge="Li0FePO4He", formula_discharge="Li1FePO4He").head(1)
    table, text = predict_rows(capsys, helium, tmp_path, results, "model1_phys")
    assert table["unseen_elements"].tolist() == ["He"] and "Pauling" not in text
    # a candidate gains ions on one host (the CLI refuses anything else), so stoichiometry holds
    assert (table["capacity_grav_source"] == "physics").all() and (table["physics_note"] == "").all()
    assert (table["average_voltage_source"] == "network").all()  # model1_phys learns its voltage
    plain, _ = predict_rows(capsys, rows, tmp_path, results, "model1")
    assert "physics_note" not in plain and (plain["capacity_grav_source"] == "network").all()
    assert plain["unseen_elements"].tolist() == ["", "Pu", ""]


def test_predict_flags_dft_values_outside_the_training_range(tiny_run, tmp_path, capsys):
    _, results, _ = tiny_run
    rows = pd.read_parquet(results / "data" / "electrodes.parquet").head(3)[candidate_columns("model2")]
    rows = rows.reset_index(drop=True)
    rows.loc[1, "charge_energy_per_atom"] = -850.0  # another code's total energy, not MP's scale
    table, text = predict_rows(capsys, rows, tmp_path, results, "model2_phys")
    assert table["dft_outside_training"].tolist() == ["", "charge_energy_per_atom", ""]
    assert "1 candidate(s) have DFT values outside the training range (charge_energy_per_atom)" in text
    # the thermodynamic voltage of that row is implausible, so the networks take it over; the
    # capacity does not depend on the energies and stays stoichiometry's
    assert table["average_voltage_source"].tolist() == ["physics", "network", "physics"]
    assert (table["capacity_grav_source"] == "physics").all()
    assert table["energy_grav_source"].tolist() == ["physics", "network", "physics"]
    assert "DFT energies imply a voltage outside" in table["physics_note"][1]


def test_predict_flags_a_composition_outside_the_training_range(tiny_run, tmp_path, capsys):
    """A million ions per framework unit read, as element fractions, as an almost pure-ion formula:
    model1 scored it as a plausible electrode, with no flag."""
    _, results, _ = tiny_run
    trained = pd.read_parquet(results / "split" / "split.parquet").query("split == 'train'")["battery_id"]
    rows = pd.read_parquet(results / "data" / "electrodes.parquet")
    rows = rows[rows["battery_id"].isin(trained) & (rows["working_ion"] == "Li")].head(2)
    rows = rows[candidate_columns("model1")].reset_index(drop=True)
    rows.loc[1, "formula_discharge"] = f"Li1000000{rows.loc[1, 'formula_charge']}"
    table, text = predict_rows(capsys, rows, tmp_path, results, "model1")
    assert table["composition_outside_training"].tolist() == ["", "discharge:Li"]
    assert "1 candidate(s) hold an element at a share of a formula outside the training formulas' range " \
           "(discharge:Li)" in text


def test_values_that_overflow_once_scaled_are_bad_rows_naming_the_field(tiny_run, tmp_path, capsys):
    """3.4e38 lies inside float32's range, so it passed the checks; standardised it overflowed and
    the networks returned a constant (or NaN, by host), with no flag."""
    _, results, _ = tiny_run
    rows = pd.read_parquet(results / "data" / "electrodes.parquet").head(3)[candidate_columns("model2")]
    rows = rows.reset_index(drop=True)
    rows.loc[1, "charge_band_gap"] = 3.4e38  # overflows when standardised
    rows.loc[2, "charge_energy_per_atom"] = 3.4e38  # min-max scaled it stays finite, the networks overflow
    candidates, out = tmp_path / "candidates.csv", tmp_path / "out.csv"
    rows.to_csv(candidates, index=False)
    code, text = predict_in_process(capsys, candidates, out, results, model="model2")
    assert_one_line_refusal(code, text, out, f"battery_id={rows['battery_id'][1]!r} (line 3), field 'charge_band_gap'",
                            "too far outside the training data to compute")
    code, text = predict_in_process(capsys, candidates, out, results, "--skip-bad", model="model2")
    assert code == 0, text
    assert pd.read_csv(out)["battery_id"].tolist() == rows["battery_id"][[0]].tolist()
    rejects = pd.read_csv(tmp_path / "out.rejects.csv")
    assert rejects[["row", "line", "field"]].values.tolist() == [[2, 3, "charge_band_gap"], [3, 4, "charge_energy_per_atom"]]


def test_chunked_prediction_keeps_every_row_its_values_and_physics_note(tiny_run):
    from electrode_ml.predict import TrainedEnsemble

    _, results, _ = tiny_run
    rows = pd.read_parquet(results / "data" / "electrodes.parquet").head(5)[candidate_columns("model2")]
    rows = rows.reset_index(drop=True)
    rows.loc[3, ["formula_charge", "formula_discharge"]] = rows.loc[3, ["formula_discharge", "formula_charge"]].to_list()
    ensemble = TrainedEnsemble.load(results, "model2_phys")
    whole, chunked = ensemble.predict_members(rows), ensemble.predict_members(rows, chunk_rows=2)
    np.testing.assert_array_equal(chunked.members, whole.members)
    np.testing.assert_array_equal(chunked.held, whole.held)
    assert chunked.physics_notes.tolist() == whole.physics_notes.tolist()
    assert [bool(note) for note in whole.physics_notes] == [False, False, False, True, False]
    assert not whole.held[3].any() and whole.held[[0, 1, 2, 4]].all()


def test_overflow_check_names_the_fields_of_each_row(tiny_run):
    from electrode_ml.predict import TrainedEnsemble

    _, results, _ = tiny_run
    rows = pd.read_parquet(results / "data" / "electrodes.parquet").head(5)[candidate_columns("model2")]
    rows = rows.reset_index(drop=True)
    rows.loc[3, "charge_band_gap"] = 3.4e38
    rows.loc[4, ["charge_band_gap", "discharge_band_gap"]] = 3.4e38
    ensemble = TrainedEnsemble.load(results, "model2")
    features = ensemble.features(rows)
    assert features.dtype == np.float32 and features.shape == (5, len(ensemble.featurizer.get_feature_names_out()))
    assert ensemble.unusable_features(features) == ["", "", "", "charge_band_gap", "charge_band_gap discharge_band_gap"]
    features[0, 0] = np.nan
    assert ensemble.unusable_features(features)[0] != ""
    assert ensemble.features(rows.head(0)).shape == (0, features.shape[1])


def test_scoring_chunk_by_chunk_gives_the_whole_file_at_once(tiny_run, tmp_path, monkeypatch, caplog):
    from electrode_ml import candidates as scoring
    from electrode_ml.data import read_electrode_csv

    _, results, _ = tiny_run
    rows = pd.read_parquet(results / "data" / "electrodes.parquet").head(7)[candidate_columns("model2")]
    rows = rows.reset_index(drop=True)
    rows.loc[[3, 6], "charge_band_gap"] = 3.4e38  # in the second and the last chunk of two rows
    path = tmp_path / "candidates.csv"
    rows.to_csv(path, index=False)
    frame = read_electrode_csv(path)
    whole, whole_rejects = scoring.score(frame, str(path), "model2", results, skip_bad=True)
    monkeypatch.setattr(scoring, "CHUNK_ROWS", 2)
    with caplog.at_level("INFO", logger="electrode_ml.cli"):
        chunked, chunked_rejects = scoring.score(frame, str(path), "model2", results, skip_bad=True)
    assert [line for line in caplog.messages if "candidates checked" in line] == [
        f"{done} of 7 candidates checked and scored" for done in (2, 4, 6, 7)]  # a line per chunk of 2
    assert chunked["battery_id"].tolist() == rows["battery_id"].drop([3, 6]).tolist()
    pd.testing.assert_frame_equal(chunked, whole)
    pd.testing.assert_frame_equal(chunked_rejects, whole_rejects)
    assert chunked_rejects["row"].tolist() == [4, 7]
    caplog.clear()
    with pytest.raises(InputError, match=f"{rows['battery_id'][3]}.*charge_band_gap"), \
            caplog.at_level("INFO", logger="electrode_ml.cli"):
        scoring.score(frame, str(path), "model2", results, skip_bad=False)
    # once a row is refused, the rest are only checked
    assert [line for line in caplog.messages if "candidates checked" in line] == [
        "2 of 7 candidates checked and scored", *(f"{done} of 7 candidates checked" for done in (4, 6, 7))]
    rows.loc[:, "charge_band_gap"] = 3.4e38
    rows.to_csv(path, index=False)
    nothing, rejects = scoring.score(read_electrode_csv(path), str(path), "model2", results, skip_bad=True)
    assert nothing.empty and list(nothing.columns) == list(whole.columns) and len(rejects) == len(rows)


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


@pytest.mark.parametrize("command", ["predict", "screen"])
def test_only_bad_rows_gives_empty_output_and_rejects(tiny_run, candidates, tmp_path, command):
    _, results, _ = tiny_run
    rows = pd.read_csv(candidates, dtype=str).head(3)
    rows["working_ion"] = "Xe"
    rows.to_csv(candidates, index=False)
    out = tmp_path / "out.csv"
    assert main([command, str(candidates), "-o", str(out), "--model", "model1", "--results", str(results),
                 "--skip-bad", *(["--ion", "Na"] if command == "screen" else [])]) == 0
    written = pd.read_csv(out)
    assert written.empty and "average_voltage_pi_high" in written  # the full header, for scripts reading it
    assert ("passes_at_pi_low" in written) == (command == "screen")
    assert len(pd.read_csv(tmp_path / "out.rejects.csv")) == 3


@pytest.mark.parametrize("command", ["predict", "screen"])
def test_output_dash_writes_the_table_to_stdout_and_rejects_to_stderr(tiny_run, candidates, tmp_path, capsys, command):
    _, results, _ = tiny_run
    args = [command, str(candidates), "--model", "model1", "--results", str(results)]
    assert main([*args, "-o", str(tmp_path / "out.csv")]) == 0
    capsys.readouterr()
    assert main([*args, "-o", "-"]) == 0
    captured = capsys.readouterr()
    # the same table as the file, byte for byte, and nothing else on stdout; no file named '-'
    assert captured.out == (tmp_path / "out.csv").read_text()
    assert "wrote 40 prediction(s) to standard output" in captured.err and not Path("-").exists()
    rows = pd.read_csv(candidates, dtype=str)
    rows.loc[3, "working_ion"] = "Xe"
    rows.to_csv(candidates, index=False)
    assert main([*args, "-o", "-", "--skip-bad"]) == 0
    captured = capsys.readouterr()
    assert len(pd.read_csv(io.StringIO(captured.out))) == 39
    assert f"rejected line 5 (row 4), battery_id {rows.loc[3, 'battery_id']!r}, field 'working_ion'" in captured.err
    assert not list(tmp_path.glob("*.rejects.csv")) and not Path("-.rejects.csv").exists()
    # a bad row without --skip-bad: the one-line refusal, and stdout stays empty
    assert main([*args, "-o", "-"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "electrode-ml: error:" in captured.err


def test_input_dash_reads_standard_input(tiny_run, candidates, tmp_path):
    """`cat candidates.csv | electrode-ml screen - -o -`: the same table as from the file, and from
    the file gzipped; an unreadable input names standard input, and a pipe-to-pipe run leaves no
    file behind."""
    _, results, _ = tiny_run
    args = ["--model", "model1", "--results", str(results)]
    assert main(["screen", str(candidates), "-o", str(tmp_path / "from_file.csv"), *args]) == 0
    piped = subprocess.run([sys.executable, "-m", "electrode_ml.cli", "screen", "-", "-o", "-", *args],
                           input=candidates.read_bytes(), capture_output=True, timeout=300, cwd=tmp_path)
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == (tmp_path / "from_file.csv").read_bytes()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["candidates.csv", "from_file.csv"]
    packed = tmp_path / "candidates.csv.gz"  # compressed: read by its bytes, as a pipe of it would be
    packed.write_bytes(gzip.compress(candidates.read_bytes()))
    assert main(["screen", str(packed), "-o", str(tmp_path / "from_gzip.csv"), *args]) == 0
    assert (tmp_path / "from_gzip.csv").read_bytes() == (tmp_path / "from_file.csv").read_bytes()
    empty = subprocess.run([sys.executable, "-m", "electrode_ml.cli", "predict", "-", "-o", str(tmp_path / "o.csv"),
                            *args], input=b"", capture_output=True, timeout=300)
    assert empty.returncode == 2 and not (tmp_path / "o.csv").exists()
    assert empty.stderr.decode().strip().splitlines()[-1] == ("electrode-ml: error: standard input: empty file, "
                                                               "expected a header row and electrodes")


def test_input_dash_from_a_terminal_is_refused(tiny_run, tmp_path, capsys, monkeypatch):
    """Reading a terminal would wait for a CSV typed by hand: refused in one line instead."""
    _, results, _ = tiny_run

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Terminal())
    code, text = predict_in_process(capsys, Path("-"), tmp_path / "out.csv", results)
    assert_one_line_refusal(code, text, tmp_path / "out.csv", "standard input, which is a terminal")


def test_help_and_version_load_no_numerical_library():
    """`--help`, `--version` and a mistyped option answer without torch, pandas, scikit-learn or
    pymatgen (about 2 s of imports), and so does the Snakefile's model registry, read on every
    parse of the workflow (`snakemake -n`, each cluster job)."""
    heavy = ("torch", "pandas", "sklearn", "pymatgen", "numpy")
    probe = ("import sys, runpy\n"
             "sys.argv = ['electrode-ml', '--help']\n"
             "try:\n    runpy.run_module('electrode_ml.cli', run_name='__main__')\n"
             "except SystemExit:\n    pass\n"
             "import electrode_ml.code_version, electrode_ml.config, electrode_ml.models\n"
             f"print(sorted(name for name in {heavy!r} if name in sys.modules))")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "usage: electrode-ml" in run.stdout and run.stdout.strip().splitlines()[-1] == "[]"


def test_output_dash_into_a_closed_pipe_ends_quietly(tiny_run, candidates):
    """A reader that has gone (head, a pager closed): no traceback, exit status 0. The pipe is closed
    before the child writes, which it does only once every row is scored."""
    _, results, _ = tiny_run
    child = subprocess.Popen([sys.executable, "-m", "electrode_ml.cli", "predict", str(candidates), "-o", "-",
                              "--model", "model1", "--results", str(results)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    child.stdout.close()
    stderr = child.stderr.read()
    assert child.wait(timeout=300) == 0, stderr
    assert "Traceback" not in stderr and "closed before the whole table was read" in stderr


def test_rows_that_are_no_insertion_electrode_are_refused(tiny_run, candidates, tmp_path, capsys):
    """Swapped ends, the ion in neither formula, two hosts, no host: the networks would still give
    numbers (a negative capacity for swapped ends), so such rows are bad input like a bad number."""
    _, results, _ = tiny_run
    rows = pd.read_csv(candidates, dtype=str, keep_default_na=False).head(6)
    rows.loc[:, "working_ion"] = "Li"
    rows.loc[0, ["formula_charge", "formula_discharge"]] = ["Li1FePO4", "Li0FePO4"]  # swapped
    rows.loc[1, ["formula_charge", "formula_discharge"]] = ["FePO4", "FePO4"]  # no Li at either end
    rows.loc[2, ["formula_charge", "formula_discharge"]] = ["Li0FePO4", "Li1MnPO4"]  # two hosts
    rows.loc[3, ["formula_charge", "formula_discharge"]] = ["Li1", "Li2"]  # no host
    rows.loc[4, ["formula_charge", "formula_discharge"]] = ["Li0.5FePO4", "Li2Fe2P2O8"]  # 1 and 2 host units
    rows.loc[5, ["formula_charge", "formula_discharge"]] = ["Fe0.0001O1000000", "Li1000000Fe0.0001O1000000"]
    rows.to_csv(candidates, index=False)
    out = tmp_path / "out.csv"
    code, text = predict_in_process(capsys, candidates, out, results)
    assert_one_line_refusal(code, text, out, f"battery_id={rows.loc[0, 'battery_id']!r} (line 2)",
                            "'formula_discharge'", "holds no more Li per FePO4", "(and 4 more problem(s)")
    code, text = predict_in_process(capsys, candidates, out, results, "--skip-bad", model="model1_phys")
    assert code == 0, text
    rejects = pd.read_csv(tmp_path / "out.rejects.csv")
    assert rejects["row"].tolist() == [1, 2, 3, 4, 5] and rejects["line"].tolist() == [2, 3, 4, 5, 6]
    assert rejects["field"].tolist() == ["formula_discharge"] * 3 + ["formula_charge", "formula_discharge"]
    assert "host MnPO4 is not the charged formula's FePO4" in rejects["reason"][2]
    assert "holds no framework besides the working ion" in rejects["reason"][3]
    assert "holds 2 FePO4 unit(s), formula_charge 1" in rejects["reason"][4]  # scored, its capacity was 50 % high
    assert "5 row(s) rejected" in text
    scored = pd.read_csv(out, keep_default_na=False)
    # a million ions per framework unit (its formula once failed to round-trip through "1e+06"): an
    # insertion, with a stoichiometric capacity
    assert scored["battery_id"].tolist() == rows.loc[5:, "battery_id"].tolist()
    assert (scored["capacity_grav_source"] == "physics").all() and (scored["capacity_grav_mean"] > 0).all()


def test_implausible_values_name_the_targets_no_electrode_can_have():
    from electrode_ml.candidates import implausible_values

    predictions = pd.DataFrame({"average_voltage_mean": [3.0, 1.3e8, -2.0, 6.9],
                                "capacity_grav_mean": [150.0, 1168.0, -40.0, 0.0]})
    assert implausible_values(predictions) == ["", "average_voltage", "average_voltage capacity_grav", ""]
    # a physics fitted on voltages up to 8 V (data.voltage_window wider) finds 7.5 V plausible
    assert implausible_values(predictions.assign(average_voltage_mean=7.5), (-1.0, 8.0))[0] == ""


@pytest.mark.parametrize("suffix", ["", ".gz", ".bz2", ".xz"])
def test_compressed_output_is_the_one_shot_functions_bytes(tmp_path, suffix):
    """The table goes to the file a block of rows at a time, and comes out as the whole CSV through
    gzip.compress(mtime=0) (no file name, no time: one table, one file), bz2.compress or
    lzma.compress would: a flush reaching the compressor midway (GzipFile's) changed the bytes."""
    import bz2
    import lzma

    from electrode_ml.cli import write_outputs

    table = pd.DataFrame({"battery_id": [f"mp-{index}" for index in range(100_000)], "average_voltage_mean": 3.25})
    no_rejects = pd.DataFrame(columns=["row", "line", "battery_id", "field", "reason"])
    output = tmp_path / ("out.csv" + suffix)
    write_outputs(table, no_rejects, str(output))
    pack = {"": bytes, ".gz": lambda data: gzip.compress(data, mtime=0), ".bz2": bz2.compress,
            ".xz": lzma.compress}[suffix]
    assert output.read_bytes() == pack(table.to_csv(index=False).encode())


def test_output_and_its_rejects_are_written_both_or_neither(tmp_path):
    """A 251-character OUTPUT is legal, its rejects file's name is not: OUTPUT was written, the
    rejects failed, and the table read as every row scored."""
    from electrode_ml.cli import write_outputs

    output = tmp_path / ("a" * 247 + ".csv")
    predictions = pd.DataFrame({"battery_id": ["a"], "average_voltage_mean": [3.0]})
    rejects = pd.DataFrame({"row": [2], "line": [3], "battery_id": ["b"], "field": ["working_ion"], "reason": ["x"]})
    with pytest.raises(InputError, match="rejects.csv: cannot write"):
        write_outputs(predictions, rejects, str(output))
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_leaves_the_earlier_output_and_rejects_as_they_were(tmp_path, monkeypatch):
    """Both tables reach temporary files before either is renamed: a full disk on OUTPUT had
    already replaced the rejects file, then deleted it, leaving the earlier OUTPUT without its rejects."""
    import errno

    from electrode_ml import cli
    from electrode_ml.errors import InputError

    output = tmp_path / "out.csv"
    predictions = pd.DataFrame({"battery_id": ["a"], "average_voltage_mean": [3.0]})
    rejects = pd.DataFrame({"row": [2], "line": [3], "battery_id": ["b"], "field": ["working_ion"], "reason": ["x"]})
    cli.write_outputs(predictions, rejects, str(output))
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    assert set(before) == {"out.csv", "out.rejects.csv"}

    write_table = cli.write_table

    def disk_full_on_output(table, handle, target):
        write_table(table, handle, target)
        if target == output:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cli, "write_table", disk_full_on_output)
    for new_rejects in (rejects.assign(battery_id="c"), rejects.iloc[:0]):  # with rejects, and without (stale removal)
        with pytest.raises(InputError, match="out.csv: cannot write .No space left"):
            cli.write_outputs(predictions.assign(average_voltage_mean=4.0), new_rejects, str(output))
        assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before
    monkeypatch.undo()
    # the rename refused (a file of another user in a sticky folder): the earlier rejects stay too
    from electrode_ml import fileio

    replace = fileio.os.replace
    monkeypatch.setattr(fileio.os, "replace", lambda source, target: (
        (_ for _ in ()).throw(PermissionError(errno.EPERM, "Operation not permitted", source, None, target))
        if Path(target) == output else replace(source, target)))
    with pytest.raises(InputError, match="out.csv: cannot write .Operation not permitted"):
        cli.write_outputs(predictions, rejects.iloc[:0], str(output))
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before


def test_rejects_count_rows_and_a_clean_rerun_removes_them(tiny_run, candidates, tmp_path, capsys):
    """Two rows without an id are told apart by their row and line."""
    _, results, _ = tiny_run
    rows = pd.read_csv(candidates, dtype=str, keep_default_na=False).head(4)
    rows.loc[[1, 2], "battery_id"] = ""  # two rows without an id: the row number tells them apart
    rows.loc[1, "working_ion"] = "Xe"
    rows.to_csv(candidates, index=False)
    out = tmp_path / "out.csv"
    code, text = predict_in_process(capsys, candidates, out, results, "--skip-bad")
    assert code == 0 and "2 row(s) rejected" in text
    rejects = pd.read_csv(tmp_path / "out.rejects.csv", keep_default_na=False)
    assert set(rejects["row"]) == {2, 3} and set(rejects["line"]) == {3, 4} and (rejects["battery_id"] == "").all()
    # a compressed OUTPUT: its rejects are compressed alike, beside it
    code, _ = predict_in_process(capsys, candidates, tmp_path / "out.csv.gz", results, "--skip-bad")
    assert code == 0 and (tmp_path / "out.csv.gz").read_bytes()[:2] == b"\x1f\x8b"
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "out.csv.gz"), pd.read_csv(out))
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "out.rejects.csv.gz", keep_default_na=False), rejects)
    rows.drop(index=[1, 2]).to_csv(candidates, index=False)
    code, text = predict_in_process(capsys, candidates, out, results, "--skip-bad")
    assert code == 0 and not (tmp_path / "out.rejects.csv").exists() and "earlier run's rejects" in text


def test_an_output_over_the_input_on_a_folder_or_of_an_unread_kind_is_refused_before_scoring(tiny_run, candidates,
                                                                                            tmp_path, capsys):
    _, results, _ = tiny_run
    before = candidates.read_bytes()
    code, text = predict_in_process(capsys, candidates, candidates, results)
    assert code == 2 and "would overwrite the input" in text and candidates.read_bytes() == before
    folder = tmp_path / "folder"
    folder.mkdir()
    code, text = predict_in_process(capsys, candidates, folder, results)
    assert code == 2 and "a folder; OUTPUT must be a CSV file path" in text and not any(folder.iterdir())
    blocked = tmp_path / "a_file"
    blocked.write_text("")
    code, text = predict_in_process(capsys, candidates, blocked / "out.csv", results)
    errors = [line for line in text.splitlines() if line.startswith("electrode-ml: error:")]
    assert code == 2 and len(errors) == 1 and "cannot write" in errors[0] and "Traceback" not in text
    # a suffix pandas would compress by, in a format the input side does not read (or not at all)
    code, text = predict_in_process(capsys, candidates, tmp_path / "out.csv.zst", results)
    assert_one_line_refusal(code, text, tmp_path / "out.csv.zst", ".zst is not written; name OUTPUT .csv, or .csv.gz")
    for archive, named in (("out.tar.gz", ".tar.gz"), ("out.TAR.XZ", ".TAR.XZ"), ("out.tgz", ".tgz")):  # was a gzipped CSV
        code, text = predict_in_process(capsys, candidates, tmp_path / archive, results)
        assert_one_line_refusal(code, text, tmp_path / archive, f"{named} is not written")


@pytest.mark.parametrize("option", [["--ion", "na"], ["--ion", "Xx"], ["--energy", "nan"], ["--voltage=-1"],
                                    ["--capacity", "inf"], ["--model", "Model1"]])
def test_screen_refuses_unknown_ions_models_and_thresholds(tiny_run, candidates, tmp_path, capsys, option):
    _, results, _ = tiny_run
    out = tmp_path / "out.csv"
    with pytest.raises(SystemExit) as stopped:
        main(["screen", str(candidates), "-o", str(out), "--results", str(results), *option])
    assert stopped.value.code == 2 and not out.exists()
    assert f"argument {option[0].split('=')[0]}" in capsys.readouterr().err


def test_a_results_folder_without_physics_or_calibration_is_one_line(tiny_run, candidates, tmp_path, capsys):
    _, results, _ = tiny_run
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    (copy / "ensemble" / "model1" / "metrics.json").unlink()
    out = tmp_path / "out.csv"
    code, text = predict_in_process(capsys, candidates, out, copy)
    assert_one_line_refusal(code, text, out, "no evaluated ensemble of model1", "metrics.json")
    (copy / "physics" / "model1_phys" / "physics.joblib").unlink()
    code, text = predict_in_process(capsys, candidates, out, copy, model="model1_phys")
    assert_one_line_refusal(code, text, out, "no fitted physics of model1_phys", "physics.joblib")


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


def test_screen_names_the_passing_candidates_outside_the_training_data(tiny_run, tmp_path, capsys):
    _, results, _ = tiny_run
    rows = pd.read_parquet(results / "data" / "electrodes.parquet")
    rows = rows[rows["working_ion"] == "Li"].head(3)[candidate_columns("model1")].reset_index(drop=True)
    rows.loc[1, ["battery_id", "formula_charge", "formula_discharge"]] = ["plutonium-olivine", "Li0PuPO4", "Li1PuPO4"]
    candidates, out = tmp_path / "candidates.csv", tmp_path / "screened.csv"
    rows.to_csv(candidates, index=False)
    common = ["-o", str(out), "--model", "model1", "--results", str(results)]
    assert main(["screen", str(candidates), *common, "--voltage", "0", "--capacity", "0", "--energy", "0"]) == 0
    text = capsys.readouterr().err
    assert "3 of 3 candidate(s) pass the filter" in text
    assert "1 passing candidate(s) lie outside the training data, their values extrapolated: plutonium-olivine" in text
    # a filter nothing passes names no one
    assert main(["screen", str(candidates), *common, "--voltage", "99"]) == 0
    text = capsys.readouterr().err
    assert "0 of 3 candidate(s) pass" in text and "passing candidate(s) lie outside" not in text


def test_outside_training_on_a_handmade_frame():
    """Unseen elements count only where a network gave a value; DFT fields out of range and
    implausible values always do."""
    from electrode_ml.candidates import outside_training

    sources = {"average_voltage_source": ["physics", "network", "physics", "physics", "network"],
               "capacity_grav_source": ["physics"] * 5, "energy_grav_source": ["physics"] * 5}
    frame = pd.DataFrame({**sources, "unseen_elements": ["Pu", "Pu", "", "", ""],
                          "dft_outside_training": ["", "", "charge_energy_per_atom", "", ""],
                          "implausible_values": ["", "", "", "", "average_voltage"]})
    assert outside_training(frame).tolist() == [False, True, True, False, True]
    assert outside_training(frame.drop(columns="dft_outside_training")).tolist() == [False, True, False, False, True]
    # a share outside the training range counts only where a network gave a value, as an unseen element
    shares = frame.assign(unseen_elements="", composition_outside_training=["discharge:Li", "", "", "discharge:Li", ""])
    shares.loc[3, "average_voltage_source"] = "network"
    assert outside_training(shares).tolist() == [False, False, True, True, True]


def test_passes_on_a_handmade_frame():
    frame = pd.DataFrame({"average_voltage_mean": [2.5, 1.9, 3.0], "capacity_grav_mean": [120, 150, 99],
                          "energy_grav_mean": [300, 285, 297]})
    assert passes(frame, {"voltage": 2.0, "capacity": 100, "energy": 200}).tolist() == [True, False, False]


def test_readme_example_file_scores(tiny_run, tmp_path):
    _, results, _ = tiny_run
    example = Path(__file__).resolve().parents[1] / "docs" / "example_candidates.csv"
    out = tmp_path / "example.csv"
    assert main(["predict", str(example), "-o", str(out), "--model", "model1_phys", "--results", str(results)]) == 0
    table = pd.read_csv(out).set_index("battery_id")
    # olivine LiFePO4: the stoichiometric capacity, whatever the networks say
    assert table.loc["olivine-LiFePO4", "capacity_grav_mean"] == pytest.approx(169.9, abs=0.2)


# --- issue #7: the bad-input corpus for `electrode-ml predict` -------------------------------------------

CLI_BAD_VALUES = [
    ("formula_discharge", "LiQq2O2", "unknown element"),
    ("formula_charge", "Li(FePO4", "malformed"),
    ("formula_discharge", "Li0Fe0P0O0", "no atoms"),
    ("formula_charge", "LiFe-1PO4", "malformed"),
    ("working_ion", "Xe", "unknown working ion"),
    ("charge_space_group_number", "inf", "infinite"),
    ("discharge_space_group_number", "twelve", "not a number"),
    ("charge_space_group_number", "0", "space group"),
    ("discharge_space_group_number", "231", "space group"),
    ("charge_crystal_system", "cubic", "unknown crystal system"),
]


def predict_in_process(capsys, candidates: Path, out: Path, results: Path, *extra: str, model: str = "model1"):
    code = main(["predict", str(candidates), "-o", str(out), "--model", model, "--results", str(results), *extra])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def predict_rows(capsys, rows: pd.DataFrame, tmp_path: Path, results: Path, model: str) -> tuple[pd.DataFrame, str]:
    """Score candidate rows in process: the output table (empty cells as '') and what was logged."""
    candidates, out = tmp_path / "candidates.csv", tmp_path / "out.csv"
    rows.to_csv(candidates, index=False)
    code, text = predict_in_process(capsys, candidates, out, results, model=model)
    assert code == 0, text
    return pd.read_csv(out, keep_default_na=False), text


def assert_one_line_refusal(code: int, text: str, out: Path, *words: str) -> str:
    assert code == 2 and "Traceback" not in text
    errors = [line for line in text.splitlines() if line.startswith("electrode-ml: error:")]
    assert len(errors) == 1, text
    assert all(word in errors[0] for word in words), (words, errors[0])
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))  # nothing half-written
    return errors[0]


@pytest.mark.parametrize("field, value, words", CLI_BAD_VALUES)
def test_bad_value_is_refused_in_one_line_and_nothing_is_written(tiny_run, candidates, tmp_path, capsys,
                                                                  field, value, words):
    _, results, _ = tiny_run
    rows = pd.read_csv(candidates, dtype=str, keep_default_na=False)
    rows.loc[7, field] = value
    rows.to_csv(candidates, index=False)
    out = tmp_path / "out.csv"
    code, text = predict_in_process(capsys, candidates, out, results)
    assert_one_line_refusal(code, text, out, rows.loc[7, "battery_id"], field, words)


@pytest.mark.parametrize("field, value, words", CLI_BAD_VALUES)
def test_skip_bad_counts_every_kind_of_bad_value(tiny_run, candidates, tmp_path, capsys, field, value, words):
    _, results, _ = tiny_run
    rows = pd.read_csv(candidates, dtype=str, keep_default_na=False)
    rows.loc[7, field] = value
    rows.to_csv(candidates, index=False)
    out = tmp_path / "out.csv"
    code, _ = predict_in_process(capsys, candidates, out, results, "--skip-bad")
    assert code == 0
    scored = pd.read_csv(out)
    assert len(scored) == len(rows) - 1 and rows.loc[7, "battery_id"] not in set(scored["battery_id"])
    rejects = pd.read_csv(tmp_path / "out.rejects.csv")
    assert set(rejects["battery_id"]) == {rows.loc[7, "battery_id"]} and set(rejects["field"]) == {field}
    assert rejects["reason"].str.contains(words, regex=False).any()


def test_duplicated_ids_are_refused_and_skipped_with_a_reason(tiny_run, candidates, tmp_path, capsys):
    _, results, _ = tiny_run
    rows = pd.read_csv(candidates, dtype=str, keep_default_na=False)
    rows.loc[5, "battery_id"] = rows.loc[4, "battery_id"]
    rows.to_csv(candidates, index=False)
    out = tmp_path / "out.csv"
    code, text = predict_in_process(capsys, candidates, out, results)
    assert_one_line_refusal(code, text, out, rows.loc[4, "battery_id"], "duplicate id")
    code, _ = predict_in_process(capsys, candidates, out, results, "--skip-bad")
    assert code == 0
    scored = pd.read_csv(out)
    assert scored["battery_id"].is_unique and rows.loc[4, "battery_id"] not in set(scored["battery_id"])
    rejects = pd.read_csv(tmp_path / "out.rejects.csv")
    assert (rejects["reason"] == "duplicate id").sum() == 2  # which copy is right is unknown: both are out


def test_voltage_pairs_make_the_ion_counts_exact(tiny_run, snapshot_text, tmp_path, capsys):
    """MP writes the ion count rounded or cut to two decimals (Li1Mn3V5O16 for Li10Mn3V5O16); given the
    voltage pairs beside them (adj_pairs, as in the snapshot), candidates are scored with the exact counts
    the workflow trained on, so that the stoichiometric capacity is MP's."""
    from electrode_ml.candidates import validate_candidates

    _, results, _ = tiny_run
    exact = pd.read_parquet(results / "data" / "electrodes.parquet").set_index("battery_id")
    raw = snapshot_text.set_index("battery_id").loc[exact.index]
    ends = ["formula_charge", "formula_discharge"]
    changed = (raw[ends] != exact[ends]).any(axis=1)
    assert changed.sum() >= 6
    rows = pd.concat([raw[changed].head(6), raw[~changed].head(2)]).reset_index()
    columns = candidate_columns("model1")

    repaired, rejects = validate_candidates(rows[[*columns, "adj_pairs"]], columns, "candidates", skip_bad=True)
    assert rejects.empty
    assert repaired[ends].to_numpy().tolist() == exact.loc[rows["battery_id"], ends].to_numpy().tolist()
    as_written, _ = validate_candidates(rows[columns], columns, "candidates", skip_bad=True)
    assert as_written[ends].to_numpy().tolist() == rows.loc[as_written.index, ends].to_numpy().tolist()

    table, text = predict_rows(capsys, rows[[*columns, "adj_pairs"]], tmp_path, results, "model1_phys")
    assert "ion counts made exact from the voltage pairs (adj_pairs)" in text
    assert (table["capacity_grav_source"] == "physics").all()
    truth = rows.set_index("battery_id").loc[table["battery_id"], "capacity_grav"].astype(float)
    np.testing.assert_allclose(table["capacity_grav_mean"], truth, rtol=1e-6)


def test_voltage_pairs_that_cannot_make_the_counts_exact_are_bad_rows(snapshot_text):
    """Damaged pairs left MP's rounded counts in place without a word: a cut text scored a physics
    capacity of 39 mAh/g where MP has 360, inside an interval 1e-7 mAh/g wide."""
    from electrode_ml.candidates import validate_candidates

    columns = candidate_columns("model1")
    rows = snapshot_text[snapshot_text["num_steps"].astype(int) == 2].head(8).reset_index(drop=True)
    rows = rows[[*columns, "num_steps", "adj_pairs"]].copy()
    rows.loc[0, "adj_pairs"] = rows.loc[0, "adj_pairs"][:len(rows.loc[0, "adj_pairs"]) * 2 // 3]
    rows.loc[1, "adj_pairs"] = "formula_dis='".join(rows.loc[1, "adj_pairs"].rsplit("formula_discharge='", 1))
    rows.loc[2, "num_steps"] = "3"
    donor = rows["formula_discharge"].map(lambda formula: formula.split("Li", 1)[-1]) != rows.loc[3, "formula_discharge"]
    rows.loc[3, "adj_pairs"] = rows["adj_pairs"][donor & (rows.index > 3)].iloc[0]  # another electrode's pairs
    rows.loc[4, "adj_pairs"] = "garbage"
    rows.loc[5, ["adj_pairs", "num_steps"]] = ""  # no pairs: the formulas as written
    last = rows.loc[6, "adj_pairs"].rindex("formula_discharge='")
    rows.loc[6, "adj_pairs"] = rows.loc[6, "adj_pairs"][:last] + "formula_discharge='Li" + rows.loc[6, "adj_pairs"][
        rows.loc[6, "adj_pairs"].index("'", last + 20):]  # a step whose formula is the ion alone: no host
    ion_last = rows.loc[[3]].assign(battery_id="ion-last")  # the same host written FePO4Li, not Li1FePO4
    for end in ("formula_charge", "formula_discharge"):
        count, host = re.fullmatch(r"Li(\d*(?:\.\d*)?)(.+)", ion_last[end].iloc[0]).groups()
        ion_last[end] = f"{host}Li{count}"
    rows = pd.concat([rows, ion_last], ignore_index=True)
    good, rejects = validate_candidates(rows, columns, "candidates", skip_bad=True)
    assert good.index.tolist() == [5, 7]
    assert rejects["row"].tolist() == [1, 2, 3, 4, 5, 7, 9]
    assert rejects["field"].tolist() == ["adj_pairs", "adj_pairs", "num_steps", "adj_pairs", "adj_pairs", "adj_pairs",
                                         "adj_pairs"]
    assert rejects["reason"].iloc[-1] == rejects["reason"].iloc[3]  # the host check reads any writing
    reasons = rejects["reason"].tolist()
    assert reasons[0].startswith("cut short or damaged") and "formula_discharge" in reasons[1]
    assert reasons[2] == "3 steps, but adj_pairs holds 2 voltage pair(s), one per step"
    assert reasons[3].startswith("its voltage pairs describe the host ") and reasons[4].startswith("no voltage pair")
    assert reasons[5].startswith("its voltage pairs do not describe one host framework of Li")
    with pytest.raises(InputError, match=r"candidates: battery_id='.*' \(row 1\), field 'adj_pairs': cut short"):
        validate_candidates(rows, columns, "candidates", skip_bad=False)


def test_a_candidate_written_as_several_framework_units_scores_as_one(tiny_run, tmp_path, capsys):
    """The redox features count atoms per unit as written: model1_phys gave olivine 3.307, 3.336 and
    3.384 V written per 1, 2 and 4 units."""
    _, results, _ = tiny_run
    rows = pd.DataFrame({"battery_id": ["x1", "x2", "x4"], "formula_charge": ["Li0FePO4", "Li0Fe2P2O8", "Li0Fe4P4O16"],
                         "formula_discharge": ["Li1FePO4", "Li2Fe2P2O8", "Li4Fe4(PO4)4"], "working_ion": "Li",
                         "charge_crystal_system": "Orthorhombic", "discharge_crystal_system": "Orthorhombic"})
    table, text = predict_rows(capsys, rows, tmp_path, results, "model1_phys")
    values = table.drop(columns="battery_id")
    assert (values.iloc[1:] == values.iloc[0]).all(axis=None), values
    assert "2 candidate(s) written as several framework units rewritten per one" in text
    assert "(x2: Li0Fe2P2O8 -> Li2Fe2P2O8 as Li0Fe1P1O4 -> Li1Fe1P1O4)" in text


def test_zero_ion_count_is_legal_and_scored(tiny_run, candidates, tmp_path, capsys):
    _, results, _ = tiny_run
    rows = pd.read_csv(candidates, dtype=str, keep_default_na=False)
    rows.loc[2, ["formula_charge", "formula_discharge", "working_ion"]] = ["Li0FePO4", "LiFePO4", "Li"]
    rows.to_csv(candidates, index=False)
    out = tmp_path / "out.csv"
    code, _ = predict_in_process(capsys, candidates, out, results, model="model1_phys")
    assert code == 0
    table = pd.read_csv(out).set_index("battery_id")
    assert table.loc[rows.loc[2, "battery_id"], "capacity_grav_mean"] == pytest.approx(169.9, abs=0.2)


def test_formula_amount_overflowing_to_infinity_is_refused(tiny_run, candidates, tmp_path, capsys):
    """pymatgen reads a count of 400 digits as inf; such a row would featurise as an empty composition
    with NaN capacity."""
    _, results, _ = tiny_run
    rows = pd.read_csv(candidates, dtype=str, keep_default_na=False)
    rows.loc[7, "formula_discharge"] = "Li" + "9" * 400 + "FePO4"
    rows.to_csv(candidates, index=False)
    out = tmp_path / "out.csv"
    code, text = predict_in_process(capsys, candidates, out, results, model="model1_phys")
    assert_one_line_refusal(code, text, out, rows.loc[7, "battery_id"], "formula_discharge")


@pytest.mark.parametrize("content, words", [
    ("battery_id,formula_charge\nmp-1_Li,Li2FéO2\n".encode("latin-1"), "not UTF-8"),
    (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03binary", "gzip-compressed but cannot be decompressed"),
    (b'battery_id,formula_charge\n"mp-1_Li,LiO2\n', "not a readable CSV"),
])
def test_unreadable_files_are_one_line(tiny_run, tmp_path, capsys, content, words):
    _, results, _ = tiny_run
    path = tmp_path / "in.csv"
    path.write_bytes(content)
    out = tmp_path / "out.csv"
    code, text = predict_in_process(capsys, path, out, results)
    assert_one_line_refusal(code, text, out, words)


def test_missing_column_is_one_line(tiny_run, candidates, tmp_path, capsys):
    _, results, _ = tiny_run
    pd.read_csv(candidates, dtype=str).drop(columns=["working_ion"]).to_csv(candidates, index=False)
    out = tmp_path / "out.csv"
    code, text = predict_in_process(capsys, candidates, out, results)
    assert_one_line_refusal(code, text, out, "missing column(s) working_ion")


def test_only_the_columns_the_run_read_are_needed(tiny_run, candidates, tmp_path, capsys):
    """The tiny run, like the default, has no space groups: a candidate file without them scores the
    same; the crystal systems it read are still required."""
    config, results, _ = tiny_run
    assert config["features"]["space_groups"] is False
    full = tmp_path / "full.csv"
    assert main(["predict", str(candidates), "-o", str(full), "--model", "model1_phys", "--results", str(results)]) == 0
    groups = ["charge_space_group_number", "discharge_space_group_number"]
    unknown = tmp_path / "unknown_groups.csv"  # blank (unknown) where the run reads none: fine
    pd.read_csv(candidates, dtype=str).assign(charge_space_group_number="").to_csv(unknown, index=False)
    blanks = tmp_path / "blanks.csv"
    assert main(["predict", str(unknown), "-o", str(blanks), "--model", "model1_phys", "--results", str(results)]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(blanks), pd.read_csv(full))
    pd.read_csv(candidates, dtype=str).drop(columns=groups).to_csv(candidates, index=False)
    lean = tmp_path / "lean.csv"
    assert main(["predict", str(candidates), "-o", str(lean), "--model", "model1_phys", "--results", str(results)]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(lean), pd.read_csv(full))
    pd.read_csv(candidates, dtype=str).drop(columns=["discharge_crystal_system"]).to_csv(candidates, index=False)
    out = tmp_path / "out.csv"
    code, text = predict_in_process(capsys, candidates, out, results)
    assert_one_line_refusal(code, text, out, "missing column(s) discharge_crystal_system")


def test_refusals_from_the_command_line_are_one_line_without_traceback(tiny_run, candidates, tmp_path):
    """The same path as a user's shell: a subprocess, exit status 2, one line on stderr."""
    _, results, _ = tiny_run
    rows = pd.read_csv(candidates, dtype=str, keep_default_na=False)
    rows.loc[7, "charge_space_group_number"] = "0"
    rows.to_csv(candidates, index=False)
    out = tmp_path / "out.csv"
    run = run_cli("predict", str(candidates), "-o", str(out), "--model", "model1", "--results", str(results))
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert [line for line in run.stderr.splitlines() if line.strip()] == [
        f"electrode-ml: error: {candidates}: battery_id={rows.loc[7, 'battery_id']!r} (line 9), field "
        "'charge_space_group_number': space group 0 is not an integer in 1..230"]
    assert not out.exists()


def test_model1_phys_without_its_voltage_trees_is_one_line(tiny_run, candidates, tmp_path, capsys):
    """A results folder from before the trees (networks and physics, no trees) is refused, not half-used."""
    _, results, _ = tiny_run
    partial = tmp_path / "results"
    for folder in ("features/model1_redox", "train/model1_redox", "ensemble/model1_phys"):
        (partial / folder).parent.mkdir(parents=True, exist_ok=True)
        (partial / folder).symlink_to(results / folder)
    (partial / "physics" / "model1_phys").mkdir(parents=True)
    (partial / "physics" / "model1_phys" / "physics.joblib").symlink_to(results / "physics" / "model1_phys" / "physics.joblib")
    out = tmp_path / "out.csv"
    code, text = predict_in_process(capsys, candidates, out, partial, model="model1_phys")
    assert_one_line_refusal(code, text, out, "no voltage trees of model1_phys", "voltage_trees.joblib")

    # trees pickled by a release that kept one model in ``model`` instead of a list in ``models``
    earlier = joblib.load(results / "physics" / "model1_phys" / "voltage_trees.joblib")
    earlier.__dict__["model"] = earlier.__dict__.pop("models")[0]
    joblib.dump(earlier, partial / "physics" / "model1_phys" / "voltage_trees.joblib")
    code, text = predict_in_process(capsys, candidates, out, partial, model="model1_phys")
    assert_one_line_refusal(code, text, out, "earlier release", "voltage_trees.joblib")


def test_version_is_the_installed_package_s(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"electrode-ml {version('electrode-ml')}"


def test_help_lists_the_output_columns(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = capsys.readouterr().out
    assert all(name in text for name in ("_pi_low", "_source", "physics_note", "unseen_elements",
                                         "composition_outside_training", "dft_outside_training"))


def test_output_through_a_link_replaces_the_linked_file(tiny_run, candidates, tmp_path, capsys):
    _, results, _ = tiny_run
    direct = tmp_path / "direct.csv"
    assert predict_in_process(capsys, candidates, direct, results)[0] == 0
    target, link = tmp_path / "runs" / "latest.csv", tmp_path / "latest.csv"
    target.parent.mkdir()
    target.write_text("an earlier table\n")
    link.symlink_to(target)
    assert predict_in_process(capsys, candidates, link, results)[0] == 0
    assert link.is_symlink() and target.read_bytes() == direct.read_bytes()


def scored_with_a_reject(tiny_run, candidates: Path, tmp_path: Path, capsys) -> tuple[Path, pd.DataFrame, Path]:
    """The candidates with row 4 of an unknown ion, scored to a plain file with --skip-bad: the run's
    results, the rows, and the file (its rejects beside it) that another OUTPUT must match."""
    _, results, _ = tiny_run
    rows = pd.read_csv(candidates, dtype=str, keep_default_na=False)
    rows.loc[3, "working_ion"] = "Xe"
    rows.to_csv(candidates, index=False)
    direct = tmp_path / "direct.csv"
    assert predict_in_process(capsys, candidates, direct, results, "--skip-bad")[0] == 0
    return results, rows, direct


def test_output_into_a_named_pipe_is_written_through_with_rejects_on_stderr(tiny_run, candidates, tmp_path, capsys):
    """A pipe (or /dev/stdout, or a shell's >(...)) is no file to replace: the table goes into it
    once scored, and the rejected rows to stderr, as with -o -."""
    import os
    import threading

    results, rows, direct = scored_with_a_reject(tiny_run, candidates, tmp_path, capsys)
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    received = []
    reader = threading.Thread(target=lambda: received.append(pipe.read_bytes()))
    reader.start()
    code, text = predict_in_process(capsys, candidates, pipe, results, "--skip-bad")
    reader.join(timeout=60)
    assert code == 0 and received == [direct.read_bytes()]
    assert f"rejected line 5 (row 4), battery_id {rows.loc[3, 'battery_id']!r}, field 'working_ion'" in text
    assert pipe.is_fifo() and sorted(path.name for path in tmp_path.iterdir()) == [
        "candidates.csv", "direct.csv", "direct.rejects.csv", "pipe"]


def test_dev_stdout_redirected_to_a_file_is_written_through_the_shells_descriptor(tiny_run, candidates, tmp_path,
                                                                                  capsys):
    """-o /dev/stdout with stdout redirected to a file (`>> log.csv`): opened again by name, the file
    was replaced, losing what the shell wrote before and after, and the rejects went beside it."""
    results, _, direct = scored_with_a_reject(tiny_run, candidates, tmp_path, capsys)
    appended = tmp_path / "appended.csv"
    appended.write_bytes(b"written before\n")
    for target in ("/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"):
        with open(appended, "ab") as stdout:
            run = subprocess.run([sys.executable, "-m", "electrode_ml.cli", "predict", str(candidates), "-o", target,
                                  "--model", "model1", "--results", str(results), "--skip-bad"],
                                 stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=300)
            stdout.write(b"written after\n")
        assert run.returncode == 0, run.stderr[-2000:]
        assert "rejected line 5 (row 4)" in run.stderr
    table = direct.read_bytes()
    assert appended.read_bytes() == b"written before\n" + 3 * (table + b"written after\n")
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "appended.csv", "candidates.csv", "direct.csv", "direct.rejects.csv"]

    def redirected(target: str, into: Path, mode: str = "ab") -> subprocess.CompletedProcess:
        with open(into, mode) as stdout:
            return subprocess.run([sys.executable, "-m", "electrode_ml.cli", "predict", str(candidates), "-o", target,
                                   "--model", "model1", "--results", str(results), "--skip-bad"],
                                  stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=300)

    # compressed as the file behind the descriptor is named, as a named OUTPUT is
    packed = tmp_path / "packed.csv.gz"
    assert redirected("/dev/stdout", packed, "wb").returncode == 0
    assert gzip.decompress(packed.read_bytes()) == table
    packed.unlink()
    # into the input (`>> candidates.csv`): refused before any scoring, as -o candidates.csv is
    before = candidates.read_bytes()
    for target in ("/dev/stdout", "-"):
        run = redirected(target, candidates)
        assert run.returncode == 2 and run.stderr.strip().splitlines() == [
            f"electrode-ml: error: {target}: the shell redirected it into the input {candidates}; write elsewhere"]
    assert candidates.read_bytes() == before
    # a descriptor number no process can have is a path like any other: one line
    for huge in ("9" * 20, "9" * 5000):
        run = run_cli("predict", str(candidates), "-o", f"/dev/fd/{huge}", "--results", str(results))
        assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr
    # a file behind the descriptor named as what is not written, with the candidates from standard input
    with open(candidates, "rb") as stdin, open(tmp_path / "out.zip", "wb") as stdout:
        run = subprocess.run([sys.executable, "-m", "electrode_ml.cli", "predict", "-", "-o", "/dev/stdout",
                              "--model", "model1", "--results", str(results)],
                             stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=300)
    assert run.returncode == 2 and ".zip is not written" in run.stderr and not (tmp_path / "out.zip").read_bytes()
    closed = subprocess.run(f"{shlex.quote(sys.executable)} -m electrode_ml.cli predict {shlex.quote(str(candidates))} "
                            f"-o - --model model1 --results {shlex.quote(str(results))} >&-", shell=True,
                            capture_output=True, text=True, timeout=300)
    assert closed.returncode == 2 and closed.stderr.strip().splitlines() == [
        "electrode-ml: error: OUTPUT -: standard output is closed; name a CSV file"]


def test_input_from_a_named_pipe_or_a_file_named_dash(tiny_run, candidates, tmp_path, capsys, monkeypatch):
    import os
    import threading

    _, results, _ = tiny_run
    direct = tmp_path / "direct.csv"
    assert predict_in_process(capsys, candidates, direct, results)[0] == 0
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    writer = threading.Thread(target=lambda: pipe.write_bytes(candidates.read_bytes()))
    writer.start()
    assert predict_in_process(capsys, pipe, tmp_path / "from_pipe.csv", results)[0] == 0
    writer.join(timeout=60)
    assert (tmp_path / "from_pipe.csv").read_bytes() == direct.read_bytes()
    # ./- names a file; only - itself is standard input
    monkeypatch.chdir(tmp_path)
    shutil.copy(candidates, tmp_path / "-")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    assert main(["predict", "./-", "-o", "dash.csv", "--model", "model1", "--results", str(results)]) == 0
    assert (tmp_path / "dash.csv").read_bytes() == direct.read_bytes()


def test_compressed_outputs_are_named_in_any_case_and_hold_no_temporary_name(tiny_run, candidates, tmp_path, capsys):
    _, results, _ = tiny_run
    rows = pd.read_csv(candidates, dtype=str, keep_default_na=False)
    rows.loc[3, "working_ion"] = "Xe"
    rows.to_csv(candidates, index=False)
    first, second = tmp_path / "first.csv.GZ", tmp_path / "second.csv.gz"
    for out in (first, second):
        assert predict_in_process(capsys, candidates, out, results, "--skip-bad")[0] == 0
    packed = first.read_bytes()
    # gzip's header: no file name stored (flag bit 3), no time, so one table gives one file
    assert packed[:2] == b"\x1f\x8b" and not packed[3] & 0x08 and packed == second.read_bytes()
    assert (tmp_path / "first.rejects.csv.GZ").read_bytes()[:2] == b"\x1f\x8b"
    code, text = predict_in_process(capsys, candidates, tmp_path / "out.csv.ZIP", results)
    assert_one_line_refusal(code, text, tmp_path / "out.csv.ZIP", ".ZIP is not written")


def test_a_folder_in_the_rejects_file_s_place_is_refused_before_scoring(tiny_run, candidates, tmp_path, capsys):
    _, results, _ = tiny_run
    (tmp_path / "out.rejects.csv").mkdir()
    out = tmp_path / "out.csv"
    code, text = predict_in_process(capsys, candidates, out, results, "--skip-bad")
    assert_one_line_refusal(code, text, out, "out.rejects.csv: a folder where OUTPUT's rejects file goes")


@pytest.mark.parametrize("damage", ["empty metrics", "cut metrics", "cut checkpoint", "garbage featuriser"])
def test_a_damaged_results_folder_is_one_line(tiny_run, candidates, tmp_path, capsys, damage):
    _, results, _ = tiny_run
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    metrics, checkpoint = copy / "ensemble" / "model1" / "metrics.json", copy / "train" / "model1" / "seed_1" / "model.pt"
    if damage == "empty metrics":
        metrics.write_text("{}")
    elif damage == "cut metrics":
        metrics.write_text(metrics.read_text()[:50])
    elif damage == "cut checkpoint":
        checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    else:
        (copy / "features" / "model1" / "transformers.joblib").write_bytes(b"not a pickle")
    out = tmp_path / "out.csv"
    code, text = predict_in_process(capsys, candidates, out, copy)
    assert_one_line_refusal(code, text, out, f"{copy}: the trained model1 cannot be loaded (",
                            "rerun the workflow to rebuild it")


def test_the_networks_scored_are_the_seeds_the_ensemble_was_evaluated_on(tiny_run, candidates, tmp_path, capsys):
    """Every seed_* folder was loaded: with networks gone the calibrated intervals narrowed to the few
    left's spread, and a folder an earlier run with more seeds left joined the ensemble."""
    _, results, _ = tiny_run
    seeds = read_json(results / "ensemble" / "model1" / "metrics.json")["seeds"]
    assert seeds == sorted(int(path.name.split("_")[1]) for path in (results / "train" / "model1").glob("seed_*"))
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    reference, out = tmp_path / "reference.csv", tmp_path / "out.csv"
    assert predict_in_process(capsys, candidates, reference, copy)[0] == 0
    # a leftover: another run's network (here a copy of one of this run's, which would count twice)
    shutil.copytree(copy / "train" / "model1" / f"seed_{seeds[0]}", copy / "train" / "model1" / f"seed_{max(seeds) + 1}")
    code, text = predict_in_process(capsys, candidates, out, copy)
    assert code == 0, text
    assert out.read_bytes() == reference.read_bytes()
    out.unlink()
    shutil.rmtree(copy / "train" / "model1" / f"seed_{seeds[1]}")
    code, text = predict_in_process(capsys, candidates, out, copy)
    assert_one_line_refusal(code, text, out, f"1 of the {len(seeds)} networks the model1 ensemble was evaluated on "
                            f"are missing (seed_{seeds[1]})", "rerun the workflow")
    # a hand-edited list
    metrics_path = copy / "ensemble" / "model1" / "metrics.json"
    metrics = read_json(metrics_path)
    for wrong in ("0,1,2", [], [0, "1"], [0.5], [True]):
        metrics["seeds"] = wrong
        metrics_path.write_text(json.dumps(metrics))
        code, text = predict_in_process(capsys, candidates, out, copy)
        assert_one_line_refusal(code, text, out, f"{metrics_path}: 'seeds' should list the evaluated seeds as whole numbers")


def test_paths_the_system_refuses_and_an_interrupt_are_one_line(tiny_run, candidates, tmp_path, capsys, monkeypatch):
    from electrode_ml import candidates as scoring

    _, results, _ = tiny_run
    out = tmp_path / "out.csv"
    code, text = predict_in_process(capsys, tmp_path / ("a" * 300 + ".csv"), out, results)
    assert_one_line_refusal(code, text, out, "cannot read (File name too long)")
    code, text = predict_in_process(capsys, candidates, tmp_path / ("a" * 300 + ".csv"), results)
    assert code == 2 and "File name too long" in text and "Traceback" not in text

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(scoring, "score", interrupted)
    code, text = predict_in_process(capsys, candidates, out, results)
    assert code == 130 and "interrupted; no output written" in text and not out.exists()
    # a Ctrl-C in the set-up, while pandas and torch import: a 40-line traceback and no exit status 130
    from electrode_ml import runner

    monkeypatch.setattr(runner, "setup_logging", interrupted)
    code, text = predict_in_process(capsys, candidates, out, results)
    assert code == 130 and text.strip() == "electrode-ml: interrupted; no output written" and not out.exists()



def test_candidates_with_a_space_group_no_training_electrode_had_are_warned_about(caplog):
    """A run with features.space_groups: such a group is encoded as none at all (features.unseen_space_groups)."""
    from electrode_ml.candidates import warn_outside_training

    wide = pd.DataFrame({"battery_id": ["a", "b", "c"], "unseen_elements": ["", "", ""],
                         "unseen_space_groups": ["", "charge:56", "discharge:8"],
                         "implausible_values": ["", "", ""],
                         **{f"{target}_source": ["network", "network", "physics"] for target in TARGETS}})
    with caplog.at_level("WARNING", logger="electrode_ml.candidates"):
        warn_outside_training(wide)
    # c's values all come from physics, which reads no space group
    assert "1 candidate(s) have space groups that no training electrode had (charge:56)" in caplog.text


def test_an_output_named_as_a_folder_that_does_not_exist_is_refused(tmp_path):
    """`-o newdir/` wrote a file called newdir."""
    from electrode_ml.cli import check_output
    from electrode_ml.errors import InputError

    with pytest.raises(InputError, match="a folder; OUTPUT must be a CSV file path"):
        check_output(f"{tmp_path / 'newdir'}/", str(tmp_path / "in.csv"))
    assert not (tmp_path / "newdir").exists()


def test_an_output_name_too_long_for_its_rejects_file_is_still_accepted(tmp_path):
    """A 251-character OUTPUT is legal; `out.rejects.csv` beside it is not, and checking for one raised."""
    from electrode_ml.cli import check_output

    output = tmp_path / ("x" * 247 + ".csv")
    check_output(str(output), str(tmp_path / "in.csv"))  # no error: no rejects file can be in the way


def test_screen_of_one_ion_checks_and_rejects_only_that_ions_rows(tiny_run, candidates, tmp_path, capsys):
    """--ion filtered after scoring every row: a malformed Li row stopped a screen of the Na
    candidates, and --skip-bad listed rejects of ions never asked for."""
    _, results, _ = tiny_run
    rows = pd.read_csv(candidates, dtype=str)
    ions = rows["working_ion"].value_counts()
    wanted, other = ions.index[0], ions.index[1]
    broken = rows.index[rows["working_ion"] == other][0]
    rows.loc[broken, "formula_discharge"] = "not a formula"
    # no known ion: still checked; after a row of the other ion, which the rejects count too
    rows.loc[rows.index[(rows["working_ion"] == wanted) & (rows.index > broken)][0], "working_ion"] = "Xe"
    rows.to_csv(candidates, index=False)
    out = tmp_path / "out.csv"
    args = ["screen", str(candidates), "-o", str(out), "--model", "model1", "--results", str(results)]
    capsys.readouterr()
    assert main([*args, "--ion", wanted, "--skip-bad"]) == 0
    logged = capsys.readouterr().err
    written = pd.read_csv(out)
    assert len(written) == ions[wanted] - 1 and set(written["working_ion"]) == {wanted}
    rejects = pd.read_csv(tmp_path / "out.rejects.csv")
    assert list(rejects["field"]) == ["working_ion"]  # the Xe row; not the other ion's broken formula
    xenon = rows.index[rows["working_ion"] == "Xe"][0]
    assert list(rejects["row"]) == [xenon + 1] and list(rejects["line"]) == [xenon + 2]  # the file's, under a header
    assert f"{len(rows) - ions[wanted]} of {len(rows)} candidate(s) are of other working ions than {wanted}" in logged
    out.unlink()
    (tmp_path / "out.rejects.csv").unlink()
    rows.loc[rows["working_ion"] == "Xe", "working_ion"] = wanted
    rows.to_csv(candidates, index=False)
    assert main([*args, "--ion", wanted]) == 0  # the other ion's broken row is not this screen's
    assert len(pd.read_csv(out)) == ions[wanted]
    assert main([*args]) == 2  # screening every ion checks it
    absent = next(ion for ion in ("Rb", "Cs", "Y", "Al") if ion not in set(rows["working_ion"]))
    capsys.readouterr()
    assert main([*args, "--ion", absent]) == 0
    assert pd.read_csv(out).empty and f"no candidate of working ion {absent} to screen" in capsys.readouterr().err
