"""Tests for electrode_ml.tune: Ax Client loop, state/CSV files, resume, seeding, mismatches."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from electrode_ml.schema import TARGETS
from electrode_ml.tune import (CSV_COLUMNS, PARAM_NAMES, SearchSpace, TuningStateMismatch, choose_trial, objective_fingerprint,
                               run_tuning)

torch.set_num_threads(1)

SRC = Path(__file__).resolve().parents[1] / "src"
TESTS = Path(__file__).resolve().parent


def quadratic(params: dict) -> float:
    """Known minimum 0 at lr=1e-3, units=128, dropout=0.1."""
    return (
        (math.log10(params["lr"]) + 3.0) ** 2
        + sum(((params[f"units_{i}"] - 128) / 256) ** 2 for i in (1, 2, 3))
        + sum((params[f"dropout_{i}"] - 0.1) ** 2 for i in (1, 2, 3))
    )


class Counting:
    def __init__(self, fn=quadratic):
        self.fn, self.calls = fn, []

    def __call__(self, params: dict) -> float:
        self.calls.append(dict(params))
        return self.fn(params)


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        return list(reader)


def params_of(row: dict[str, str]) -> dict:
    return {k: (int(row[k]) if k.startswith("units") else float(row[k])) for k in PARAM_NAMES}


def tune(tmp: Path, objective, **kwargs) -> dict:
    args = dict(trials=6, seed=7, state_path=tmp / "state.json", trials_csv=tmp / "trials.csv")
    args.update(kwargs)
    return run_tuning(objective, **args)


def test_run_writes_state_csv_and_returns_lowest_observed(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="electrode_ml.tune")
    objective = Counting()
    best = tune(tmp_path, objective)

    assert len(objective.calls) == 6
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["experiment"]["name"] == "mlp"
    rows = read_rows(tmp_path / "trials.csv")
    assert [r["status"] for r in rows] == ["COMPLETED"] * 6
    assert [int(r["trial"]) for r in rows] == list(range(6))
    assert all(float(r["seconds"]) >= 0 for r in rows)
    # The CSV holds exactly what the objective saw and returned.
    assert [params_of(r) for r in rows] == objective.calls
    assert [float(r["score"]) for r in rows] == [quadratic(p) for p in objective.calls]
    # No temporary files left behind by the atomic writes.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "state.scores.json", "trials.csv"]

    assert set(best) == {*PARAM_NAMES, "score", "trial", "lowest_score"}
    lowest = min(rows, key=lambda r: float(r["score"]))
    assert best == {**params_of(lowest), "score": float(lowest["score"]), "trial": int(lowest["trial"]),
                    "lowest_score": float(lowest["score"])}
    space = SearchSpace()
    for k in PARAM_NAMES:
        expected_type = int if k.startswith("units") else float
        assert type(best[k]) is expected_type, k
        lo, hi = space.bounds()[k]
        assert lo <= best[k] <= hi, k
    assert type(best["score"]) is float

    messages = [r.getMessage() for r in caplog.records if r.name == "electrode_ml.tune"]
    # a new tuning says what it searches before its first trial
    assert messages[0].startswith("tuning mlp: 6 trials, seed ") and "units 32..512" in messages[0]
    progress = [m for m in messages if m.startswith("trial ")]
    assert len(progress) == 6
    assert progress[0].startswith("trial 1/6 (#0): lr=")
    # Ax's own INFO chatter does not reach the root logger.
    assert not [r for r in caplog.records if r.name.startswith(("ax", "botorch")) and r.levelno < logging.WARNING]

    # Running again on the finished state evaluates nothing and gives the same answer.
    again = Counting()
    assert tune(tmp_path, again) == best
    assert again.calls == []


def trial(index, score, units):
    return {"trial": index, "lr": 1e-3, "units_1": units, "units_2": units, "units_3": units,
            "dropout_1": 0.1, "dropout_2": 0.1, "dropout_3": 0.1, "score": score}


def width(row):
    return row["units_1"]


def test_choose_trial_takes_the_cheapest_within_the_tolerance():
    completed = [trial(0, 0.100, 512), trial(1, 0.102, 200), trial(2, 0.104, 100), trial(3, 0.110, 32)]
    assert choose_trial(completed)["trial"] == 0
    assert choose_trial(completed, tolerance=0.03, cost=width)["trial"] == 1
    chosen = choose_trial(completed, tolerance=0.05, cost=width)
    assert (chosen["trial"], chosen["units_1"], chosen["score"], chosen["lowest_score"]) == (2, 100, 0.104, 0.100)
    # without a cost the tolerance has nothing to weigh: the lowest score
    assert choose_trial(completed, tolerance=0.05)["trial"] == 0
    # a negative lowest score: within the tolerance of its magnitude
    assert choose_trial([trial(0, -1.00, 512), trial(1, -0.97, 64)], tolerance=0.05, cost=width)["trial"] == 1
    # equal cost: the lower score
    assert choose_trial([trial(0, 0.100, 64), trial(1, 0.101, 64)], tolerance=0.05, cost=width)["trial"] == 0
    assert choose_trial([trial(0, 0.101, 64), trial(1, 0.100, 64)], tolerance=0.05, cost=width)["trial"] == 1


def test_choose_trial_refuses_a_bad_tolerance_and_no_trials():
    for tolerance in (1.0, 1.5, -0.01):
        with pytest.raises(ValueError, match="tolerance"):
            choose_trial([trial(0, 0.1, 64)], tolerance=tolerance, cost=width)
    with pytest.raises(RuntimeError, match="no completed trial"):
        choose_trial([], tolerance=0.0)


def test_resume_after_the_process_dies_mid_trial(tmp_path):
    child = textwrap.dedent(
        f"""
        import os, sys
        from pathlib import Path
        import torch
        torch.set_num_threads(1)
        sys.path.insert(0, {str(TESTS)!r})
        from test_tune import quadratic
        from electrode_ml.tune import run_tuning

        calls = 0
        def dies_on_fourth(params):
            global calls
            calls += 1
            if calls == 4:
                os._exit(3)  # like a kill: no cleanup, no exception handling
            return quadratic(params)

        run_tuning(dies_on_fourth, trials=6, seed=7, state_path=Path({str(tmp_path / "state.json")!r}),
                   trials_csv=Path({str(tmp_path / "trials.csv")!r}))
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr[-3000:]

    before = read_rows(tmp_path / "trials.csv")
    assert [r["status"] for r in before] == ["COMPLETED"] * 3 + ["RUNNING"]

    objective = Counting()
    best = tune(tmp_path, objective)

    assert len(objective.calls) == 3  # only the missing trials ran
    rows = read_rows(tmp_path / "trials.csv")
    completed = [r for r in rows if r["status"] == "COMPLETED"]
    assert len(completed) == 6
    # The three trials finished before the crash are kept as they were, not re-run.
    assert rows[:3] == before[:3]
    assert [params_of(r) for r in completed[3:]] == objective.calls
    assert all(params_of(before[i]) not in objective.calls for i in range(3))
    # The trial in flight at the crash is abandoned, and a new point was generated instead.
    assert rows[3]["status"] == "ABANDONED" and params_of(rows[3]) == params_of(before[3])
    assert params_of(before[3]) not in objective.calls
    assert best["score"] == min(float(r["score"]) for r in completed)


@pytest.mark.parametrize("recorded_for", ["this tuning", "another tuning"])
def test_a_kill_while_the_state_is_saved_after_a_trial_keeps_that_trial(tmp_path, monkeypatch, recorded_for):
    """The finished trial stayed RUNNING in the state the kill left, and the resume abandoned it and
    trained another point: its score is now recorded apart before the save and completes it, when
    it was recorded for this very tuning and point."""
    from electrode_ml import tune as tuning

    uninterrupted = tmp_path / "uninterrupted"
    uninterrupted.mkdir()
    tune(uninterrupted, quadratic, trials=4)
    saves, save = [], tuning._save

    def killed_on_the_fifth(*args, **kwargs):  # the save after the second trial completes
        saves.append(1)
        if len(saves) == 5:
            raise SystemExit("killed")
        save(*args, **kwargs)

    monkeypatch.setattr(tuning, "_save", killed_on_the_fifth)
    with pytest.raises(SystemExit):
        tune(tmp_path, quadratic, trials=4)
    assert [r["status"] for r in read_rows(tmp_path / "trials.csv")] == ["COMPLETED", "RUNNING"]
    if recorded_for == "another tuning":
        path = tuning.scores_path(tmp_path / "state.json")
        recorded = json.loads(path.read_text())
        recorded["1"]["key"] = "another tuning"
        path.write_text(json.dumps(recorded))
    monkeypatch.setattr(tuning, "_save", save)
    objective = Counting()
    tune(tmp_path, objective, trials=4)
    resumed, expected = read_rows(tmp_path / "trials.csv"), read_rows(uninterrupted / "trials.csv")
    if recorded_for == "this tuning":
        assert len(objective.calls) == 2  # the second trial is not trained again
        assert [r["status"] for r in resumed] == ["COMPLETED"] * 4
        assert [(params_of(r), r["score"]) for r in resumed] == [(params_of(r), r["score"]) for r in expected]
    else:  # as before the record: abandoned, another point trained
        assert len(objective.calls) == 3 and [r["status"] for r in resumed][1] == "ABANDONED"


def test_a_rerun_removes_the_temporary_files_of_a_save_cut_off_by_a_kill(tmp_path):
    """A kill while the state or the table is being saved leaves its temporary sibling (fileio's name, or
    .name.<pid>.<hex>.tmp of the releases that wrote these files with their own code): the next run removes it."""
    from electrode_ml.fileio import atomic_path

    left = []
    for name in ("state.json", "trials.csv", "state.scores.json"):
        with atomic_path(tmp_path / name) as tmp:
            left.append(tmp)
        (tmp_path / name).unlink()
    left += [tmp_path / ".state.json.4242.0123456789ab.tmp", tmp_path / ".trials.csv.4242.0123456789ab.tmp"]
    for path in left:
        path.write_text("half")
    kept = tmp_path / ".notes.txt.abcd1234.tmp.txt"  # not this job's
    kept.write_text("")
    tune(tmp_path, quadratic, trials=1)
    assert sorted(path.name for path in tmp_path.iterdir()) == [kept.name, "state.json", "state.scores.json", "trials.csv"]


def test_same_seed_same_suggestions(tmp_path):
    runs = {}
    for folder, seed in (("a", 11), ("b", 11), ("c", 12)):
        objective = Counting()
        tune(tmp_path / folder, objective, seed=seed)
        runs[folder] = objective.calls
    # 6 trials: the centre point, 4 Sobol points and one BoTorch suggestion.
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"]
    assert runs["a"][0] == runs["c"][0]  # both start at the centre of the space
    assert runs["a"][1:] != runs["c"][1:]


def test_mismatching_saved_state_is_refused(tmp_path):
    tune(tmp_path, quadratic, trials=1)
    state = (tmp_path / "state.json").read_bytes()

    never = Counting()
    with pytest.raises(ValueError, match=r"parameter units_1: saved int \[32, 512\], expected int \[16, 512\]"):
        tune(tmp_path, never, space=SearchSpace(units=(16, 512)))
    with pytest.raises(ValueError, match=r"experiment name is 'mlp', expected 'other'"):
        tune(tmp_path, never, name="other")
    with pytest.raises(ValueError, match=r"seed is 7, expected 8"):
        tune(tmp_path, never, seed=8)
    assert never.calls == []
    assert (tmp_path / "state.json").read_bytes() == state  # left untouched

    (tmp_path / "state.json").write_text("{}")
    with pytest.raises(ValueError, match="cannot load the tuning state"):
        tune(tmp_path, never)


def test_state_of_another_objective_is_refused_or_replaced(tmp_path, caplog):
    """Trials scored on other data or at another fidelity are not comparable: never resumed."""
    tune(tmp_path, quadratic, trials=2, objective_key="features-a")
    state = (tmp_path / "state.json").read_bytes()

    never = Counting()
    with pytest.raises(TuningStateMismatch, match=r"another objective \(key 'features-a', this run 'features-b'\)"):
        tune(tmp_path, never, trials=2, objective_key="features-b")
    assert never.calls == [] and (tmp_path / "state.json").read_bytes() == state

    same = Counting()
    tune(tmp_path, same, trials=2, objective_key="features-a")
    assert same.calls == []  # same key: both trials are resumed, none re-run

    fresh = Counting()
    with caplog.at_level(logging.WARNING, logger="electrode_ml.tune"):
        tune(tmp_path, fresh, trials=2, objective_key="features-b", restart_mismatched=True)
    assert len(fresh.calls) == 2  # a new tuning: every trial scored again
    assert any("another objective" in r.message and "set aside as" in r.message for r in caplog.records)
    assert [r["status"] for r in read_rows(tmp_path / "trials.csv")] == ["COMPLETED", "COMPLETED"]
    again = Counting()
    tune(tmp_path, again, trials=2, objective_key="features-b")
    assert again.calls == []  # the new state is now this objective's


def test_an_unreadable_state_is_set_aside_by_the_workflow_not_a_traceback_on_every_rerun(tmp_path, caplog):
    """A cut or foreign ax_state.json stopped the tune job, and every rerun, until deleted by hand."""
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "state.json").write_text('{"garbage": 1')
    fresh = Counting()
    with caplog.at_level(logging.WARNING, logger="electrode_ml.tune"):
        tune(tmp_path, fresh, trials=2, restart_mismatched=True)
    assert len(fresh.calls) == 2
    assert any("cannot load the tuning state" in r.message and "set aside as" in r.message for r in caplog.records)
    assert [path.read_text() for path in (tmp_path / "set_aside").iterdir()] == ['{"garbage": 1']
    again = Counting()
    tune(tmp_path, again, trials=2, restart_mismatched=True)
    assert again.calls == []


def test_a_config_changed_and_changed_back_resumes_its_set_aside_tuning(tmp_path):
    """The saved trials of the objective a change left were replaced: changing the config back
    tuned all 30 trials again."""
    first = tune(tmp_path, quadratic, trials=2, objective_key="features-a")
    rows_a = read_rows(tmp_path / "trials.csv")
    tune(tmp_path, quadratic, trials=2, objective_key="features-b", restart_mismatched=True)
    back = Counting()
    assert tune(tmp_path, back, trials=2, objective_key="features-a", restart_mismatched=True) == first
    assert back.calls == [] and read_rows(tmp_path / "trials.csv") == rows_a
    # and the other way again: both objectives' tunings are kept, one in place and one set aside
    forth = Counting()
    tune(tmp_path, forth, trials=2, objective_key="features-b", restart_mismatched=True)
    assert forth.calls == [] and len(list((tmp_path / "set_aside").glob("state.*.json"))) == 1
    more = Counting()
    tune(tmp_path, more, trials=3, objective_key="features-a", restart_mismatched=True)
    assert len(more.calls) == 1  # resumed with its two trials, one more asked for


def test_objective_fingerprint_follows_data_and_settings():
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    y = np.ones((4, 3))
    key = objective_fingerprint((x, y), {"epochs": 100, "batch_size": 128})
    assert key == objective_fingerprint((x.copy(), y.copy()), {"batch_size": 128, "epochs": 100})
    changed_value = x.copy()
    changed_value[2, 1] += 1e-3
    assert objective_fingerprint((changed_value, y), {"epochs": 100, "batch_size": 128}) != key
    assert objective_fingerprint((x.reshape(3, 4), y), {"epochs": 100, "batch_size": 128}) != key
    assert objective_fingerprint((x, y), {"epochs": 50, "batch_size": 128}) != key
    assert objective_fingerprint((x, y), {"epochs": 100, "batch_size": None}) != key


def test_tune_step_retunes_when_its_features_change(tmp_path, caplog):
    """Snakemake reruns `tune` when its inputs change; the saved state must not answer for the old features."""
    from types import SimpleNamespace

    from electrode_ml.steps import tune_step

    rng = np.random.default_rng(0)

    def features(path, n, shift=0.0):
        table = pd.DataFrame(rng.normal(size=(n, 4)) + shift, columns=[f"pc_{i}" for i in range(4)])
        for target, scale in zip(TARGETS, (1.0, 100.0, 300.0)):
            table[target] = scale * (table["pc_0"] + 0.1 * rng.normal(size=n))
        table.insert(0, "battery_id", [f"b{i}" for i in range(n)])
        table[["battery_id", *TARGETS, *[f"pc_{i}" for i in range(4)]]].to_parquet(path)
        return str(path)

    out = tmp_path / "tune"
    out.mkdir()
    params = SimpleNamespace(
        model="model1", state=str(out / "ax_state.json"), code="0123456789abcdef",
        tune={"trials": 2, "seed": 3, "epochs": 3, "patience": None, "lr": [1e-4, 1e-2], "units": [8, 16],
              "dropout": [0.0, 0.5], "tolerance": 0.0},
        train={"device": "cpu", "epochs": 3, "batch_size": None, "patience": None, "lr_scale": 0.5,
               "huber_delta": {}, "precision": "float32"})
    output = SimpleNamespace(best=str(out / "best_params.json"), trials=str(out / "trials.csv"))

    def run(train, val):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="electrode_ml.tune"):
            tune_step(SimpleNamespace(train=train, val=val), output, params, 1)
        return [r.message for r in caplog.records], pd.read_csv(output.trials)

    old = (features(tmp_path / "train_a.parquet", 40), features(tmp_path / "val_a.parquet", 12))
    _, first = run(*old)
    messages, resumed = run(*old)  # nothing changed (a rerun after a kill): resumed, not re-scored
    assert any("2 of 2 trials complete" in m for m in messages)
    pd.testing.assert_frame_equal(resumed, first)

    new = (features(tmp_path / "train_b.parquet", 40, shift=2.0), features(tmp_path / "val_b.parquet", 12, shift=2.0))
    messages, retuned = run(*new)
    assert any("set aside as" in m for m in messages)
    assert not any("trials complete" in m for m in messages)
    assert len(retuned) == 2 and (retuned["score"] != first["score"]).all()

    params.code = "fedcba9876543210"  # the library the tuning runs changed (code_version.py): Snakemake reruns it
    messages, _ = run(*new)
    assert any("set aside as" in m for m in messages)


def test_a_tuning_resumed_with_more_or_fewer_trials_equals_a_fresh_one(tmp_path, caplog):
    """`tune.trials` changed on a saved tuning: with min(5, trials) quasi-random trials a tuning of 2
    resumed with 3 drew its third from BoTorch while a fresh one of 3 drew it from Sobol, and one of 2
    resumed with 1 kept both trials; results depended on the run's history."""
    fresh = {n: Counting() for n in (1, 3, 7, 8)}
    chosen = {n: tune(tmp_path / f"fresh{n}", fresh[n], trials=n) for n in fresh}
    resumed = Counting()
    tune(tmp_path / "resumed", resumed, trials=2)
    assert tune(tmp_path / "resumed", resumed, trials=3) == chosen[3]
    assert resumed.calls == fresh[3].calls
    untimed = [{key: row[key] for key in CSV_COLUMNS if key != "seconds"} for row in
               (*read_rows(tmp_path / "resumed" / "trials.csv"), *read_rows(tmp_path / "fresh3" / "trials.csv"))]
    assert untimed[:3] == untimed[3:] and len(untimed) == 6
    assert tune(tmp_path / "resumed", resumed, trials=7) == chosen[7]  # across the switch to BoTorch
    assert resumed.calls == fresh[7].calls  # the scores BoTorch fits are the exact ones, not JSON's rounded
    assert tune(tmp_path / "resumed", resumed, trials=8) == chosen[8]  # BoTorch had suggested before the stop
    assert resumed.calls == fresh[8].calls
    with caplog.at_level(logging.INFO, logger="electrode_ml.tune"):
        assert tune(tmp_path / "resumed", resumed, trials=1) == chosen[1]
    assert len(resumed.calls) == 8  # nothing scored again
    assert [row["trial"] for row in read_rows(tmp_path / "resumed" / "trials.csv")] == ["0"]
    assert "the saved tuning holds 8 completed trials: the first 1 count" in caplog.text


def test_failing_objective_is_recorded_then_resumed(tmp_path):
    def breaks_on_second(params, calls=[]):
        calls.append(params)
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return quadratic(params)

    with pytest.raises(RuntimeError, match="out of memory"):
        tune(tmp_path, breaks_on_second, trials=3)
    assert [r["status"] for r in read_rows(tmp_path / "trials.csv")] == ["COMPLETED", "FAILED"]

    with pytest.raises(ValueError, match="finite"):
        tune(tmp_path, lambda p: float("nan"), trials=3)
    assert [r["status"] for r in read_rows(tmp_path / "trials.csv")] == ["COMPLETED", "FAILED", "ABANDONED"]

    objective = Counting()
    tune(tmp_path, objective, trials=3)
    assert len(objective.calls) == 2
    statuses = [r["status"] for r in read_rows(tmp_path / "trials.csv")]
    assert statuses.count("COMPLETED") == 3 and statuses.count("FAILED") == 1 and statuses.count("ABANDONED") == 1


@pytest.mark.parametrize("failure", ["raises", "nan"])
def test_a_point_that_always_fails_is_not_suggested_for_ever(tmp_path, failure):
    """Ax suggests a FAILED point again, and once BoTorch proposes (after the centre and 4 Sobol
    points) the same seed and data proposed it on every rerun: each rerun failed the job at it.
    A non-finite score is abandoned at once; an exception, which may be transient, on its second time."""
    calls, bad = [], {}

    def objective(params):
        calls.append(params)
        if len(calls) == 6:  # the first point BoTorch proposes
            bad.update(params)
        if params == bad:
            if failure == "raises":
                raise RuntimeError("out of memory")
            return float("nan")
        return quadratic(params)

    failures = 2 if failure == "raises" else 1
    for _ in range(failures):
        with pytest.raises((RuntimeError, ValueError)):
            tune(tmp_path, objective, trials=8)
    rows = read_rows(tmp_path / "trials.csv")
    assert [r["status"] for r in rows[5:]] == ["FAILED"] * (failures - 1) + ["ABANDONED"]
    assert all(params_of(row) == bad for row in rows[5:])  # a failure that may be transient gets a second try
    tune(tmp_path, objective, trials=8)
    rows = read_rows(tmp_path / "trials.csv")
    assert [r["status"] for r in rows].count("COMPLETED") == 8
    assert [params_of(row) for row in rows].count(bad) == failures and calls.count(bad) == failures


def test_search_space_validation():
    assert SearchSpace(lr=[1e-4, 1e-2], units=[32, 512], dropout=[0, 0.5]).units == (32, 512)
    with pytest.raises(ValueError, match="lr"):
        SearchSpace(lr=(0.0, 1e-2))
    with pytest.raises(ValueError, match="units"):
        SearchSpace(units=(512, 16))
    with pytest.raises(ValueError, match="trials"):
        run_tuning(quadratic, trials=0, seed=0, state_path=Path("x"), trials_csv=Path("y"))


def test_a_trial_trains_the_training_recipe_or_the_short_one():
    from electrode_ml.tune import trial_settings, tuning_note

    train = {"device": "cpu", "epochs": 500, "batch_size": 128, "patience": 100, "lr_scale": 0.5,
             "huber_delta": {"model1_redox": 0.3}, "precision": "float32"}
    tune = {"trials": 30, "seed": 7, "epochs": None, "patience": 50}
    recipe = trial_settings(tune, train, "cpu", "model1_redox")
    assert (recipe.epochs, recipe.batch_size, recipe.patience, recipe.lr_scale, recipe.huber_delta, recipe.seed) == \
        (500, 128, 100, 0.5, 0.3, 7)
    assert recipe.log_every == 0
    assert tuning_note(tune, train) == "30 trials of the training recipe (at most 500 epochs)"

    short = trial_settings({**tune, "epochs": 100}, train, "cpu", "model1_redox")
    assert (short.epochs, short.batch_size, short.patience, short.lr_scale, short.huber_delta, short.seed) == \
        (100, 128, 50, 1.0, None, 7)
    assert tuning_note({**tune, "epochs": 100}, train) == "30 trials of at most 100 epochs"


def test_trials_in_bfloat16_on_onednn_or_on_a_gpu_do_not_resume_a_float32_torch_cpu_tuning(monkeypatch):
    """A trial's fidelity keys the saved tuning: a precision other than float32, or products other
    than torch's (a tuning resumed on another kind of CPU), is part of it; float32 on torch's
    products leaves it as it was before either setting existed, so those tunings still resume."""
    from electrode_ml import cpu_matmul
    from electrode_ml.tune import trial_fidelity, trial_settings

    monkeypatch.setattr(cpu_matmul, "float32_library", lambda: "torch")

    train = {"device": "cpu", "epochs": 500, "batch_size": 128, "patience": 100, "lr_scale": 0.5,
             "huber_delta": {}, "precision": "float32"}
    tune = {"trials": 30, "seed": 7, "epochs": None, "patience": 50}
    float32 = trial_fidelity(trial_settings(tune, train, "cpu", "model2"))
    assert float32 == {"epochs": 500, "batch_size": 128, "patience": 100, "lr_scale": 0.5, "huber_delta": None}
    mixed = trial_settings(tune, {**train, "precision": "bfloat16"}, "cpu", "model2")
    assert mixed.precision == "bfloat16"
    assert trial_fidelity(mixed) == {**float32, "precision": "bfloat16"}
    monkeypatch.setattr(cpu_matmul, "float32_library", lambda: "onednn")
    assert trial_fidelity(trial_settings(tune, train, "cpu", "model2")) == {**float32, "matmul": "onednn"}
    assert trial_fidelity(mixed) == {**float32, "precision": "bfloat16"}
    # on a GPU the products are torch's as on an Intel CPU: the device itself keys the tuning
    assert trial_fidelity(trial_settings(tune, train, "cuda:1", "model2")) == {**float32, "device": "cuda"}
    assert trial_settings({**tune, "epochs": 100}, {**train, "precision": "bfloat16"}, "cpu", "model2").precision \
        == "bfloat16"


def test_a_dropout_range_that_would_drop_every_unit_is_refused():
    """Rates of 0.998 and over came to 256 of the kernel's 256 levels: ZeroDivisionError in a trial."""
    with pytest.raises(ValueError, match=r"^search space dropout: need 0 <= low < high <= 0\.99, got \(0\.0, 0\.999\)$"):
        SearchSpace(dropout=(0.0, 0.999))
    from electrode_ml.training_kernels import ReLUDropout

    layer = ReLUDropout(SearchSpace(dropout=(0.0, 0.99)).dropout[1]).train()
    kept = layer(torch.ones(256 * 64))
    assert 0 < (kept > 0).float().mean() < 0.03 and torch.isfinite(kept).all()
