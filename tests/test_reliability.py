"""Reliability (issue #7): interrupted jobs, side-by-side runs, a failing download, memory of a big prediction.

Every workflow here runs in its own temporary working directory (``cwd=tmp``, ``-s REPO/Snakefile``) with a
complete ``--configfile``, so nothing is written to the repository's ``results/`` or ``.snakemake/``.
The repository's default profile (``profiles/default``: ``rerun-incomplete``) is still picked up, because
Snakemake also looks for ``profiles/default`` beside the Snakefile.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import yaml

from electrode_ml.candidates import candidate_columns
from electrode_ml.schema import TARGETS
from test_workflow import tiny_config

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.e2e

N_ROWS = 4300  # electrodes in the snapshot
BIG_ROWS = 200_000
RSS_BOUND_MB = 3000


# --------------------------------------------------------------------------------------------- helpers

def recipe(results: Path, snapshot: Path) -> dict:
    """The tiny recipe for model1 only; tune trials of 20 epochs last ~1 s, long enough to kill one mid-way."""
    config = tiny_config(results, snapshot, train={"n_seeds": 3, "epochs": 30}, tune={"trials": 3, "epochs": 20},
                         evaluation={"group_seeds": 0})
    config["models"] = ["model1"]
    return config


def write_config(config: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def command(config_path: Path, *args: str, cores: int = 2) -> list[str]:
    return [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), *args, "--cores", str(cores),
            "--configfile", str(config_path)]


def run(workdir: Path, config_path: Path, *args: str, cores: int = 2, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(command(config_path, *args, cores=cores), cwd=workdir, capture_output=True, text=True,
                          timeout=600, env=env)


def start(workdir: Path, config_path: Path, name: str, cores: int = 2) -> tuple[subprocess.Popen, Path]:
    """Snakemake in the background, in its own process group, its output in workdir/<name>.out."""
    out = workdir / f"{name}.out"
    with out.open("w") as handle:
        proc = subprocess.Popen(command(config_path, cores=cores), cwd=workdir, stdout=handle,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return proc, out


def stop(proc: subprocess.Popen) -> None:
    """Kill a background workflow we started (its whole process group) if it is still running."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=60)


def wait_for(condition, proc: subprocess.Popen, out: Path, what: str, timeout: float = 300, every: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc.poll() is not None:
            raise AssertionError(f"the workflow ended (rc {proc.returncode}) before {what}:\n{out.read_text()[-4000:]}")
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}:\n{out.read_text()[-4000:]}")


def finish(proc: subprocess.Popen, out: Path, timeout: float = 600) -> str:
    proc.wait(timeout=timeout)
    return out.read_text()


def assert_ok(result: subprocess.CompletedProcess | tuple[int, str], what: str) -> str:
    code, text = (result.returncode, result.stdout + result.stderr) if isinstance(
        result, subprocess.CompletedProcess) else result
    assert code == 0, f"{what} failed (rc {code}):\n{text[-5000:]}"
    return text


def read_text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def locked_by(workdir: Path, results: Path) -> bool:
    """Whether a Snakemake lock file in workdir names an output under results."""
    locks = workdir / ".snakemake" / "locks"
    try:
        return any(str(results) in lock.read_text() for lock in locks.glob("*.output.lock"))
    except OSError:
        return False


def is_train_job(process: psutil.Process) -> bool:
    """A train rule's script: Snakemake runs a copy of workflow/scripts/train.py as .snakemake/scripts/tmp*.train.py."""
    try:
        return any(part.endswith(".train.py") for part in process.cmdline())
    except psutil.Error:  # ended meanwhile
        return False


def stray_files(results: Path) -> list[str]:
    """Temporary files of atomic writes (.name.XXXX.tmp.ext) left behind."""
    return sorted(str(path) for path in results.rglob(".*") if ".tmp" in path.name)


def assert_same_model1_outputs(results: Path, reference: Path) -> None:
    for seed in range(3):
        pd.testing.assert_frame_equal(
            pd.read_parquet(results / "train" / "model1" / f"seed_{seed}" / "predictions.parquet"),
            pd.read_parquet(reference / "train" / "model1" / f"seed_{seed}" / "predictions.parquet"))
    pd.testing.assert_frame_equal(pd.read_parquet(results / "ensemble" / "model1" / "predictions.parquet"),
                                  pd.read_parquet(reference / "ensemble" / "model1" / "predictions.parquet"))
    assert (json.loads((results / "ensemble" / "model1" / "metrics.json").read_text())
            == json.loads((reference / "ensemble" / "model1" / "metrics.json").read_text()))


def assert_well_formed(results: Path, stray_ok: tuple[str, ...] = ()) -> None:
    summary = pd.read_parquet(results / "ensemble" / "model1" / "predictions.parquet")
    assert len(summary) == N_ROWS * len(TARGETS) and (summary["n"] == 3).all()
    assert np.isfinite(summary[["mean", "ci_low", "ci_high", "pi_low", "pi_high"]].to_numpy()).all()
    assert (results / "figures" / "model1" / "parity.png").read_bytes()[:4] == b"\x89PNG"
    assert [path for path in stray_files(results) if not Path(path).name.startswith(stray_ok)] == []


# ------------------------------------------- b. two workflows side by side; a. a train job killed mid-way

def seed_outputs(results: Path, seed: int) -> list[bool]:
    return [(results / "train" / "model1" / f"seed_{seed}" / name).exists()
            for name in ("model.pt", "history.csv", "predictions.parquet")]


@pytest.fixture(scope="module")
def side_by_side(tmp_path_factory, snapshot_path):
    """Two workflows with different results folders at once, in one shared working directory.

    Run a goes through undisturbed: it is the uninterrupted reference. Run b has a train job SIGKILLed
    mid-way and is then rerun with the same command, while run a goes on. While both run, a third run aimed
    at a's results folder is started: Snakemake's lock must refuse it.
    """
    workdir = tmp_path_factory.mktemp("side_by_side")
    results = {name: workdir / f"results_{name}" for name in ("a", "b")}
    configs = {name: write_config(recipe(path, snapshot_path), workdir / f"{name}.yaml")
               for name, path in results.items()}
    first, first_out = start(workdir, configs["a"], "a", cores=1)
    procs = [first]
    facts: dict = {"workdir": workdir, "results": results}
    try:
        # Start the second once the first holds its lock: Snakemake numbers lock files by looking for a free
        # name, so two runs locking at the very same instant could pick the same file.
        wait_for(lambda: locked_by(workdir, results["a"]), first, first_out, "the first run's lock")
        second, second_out = start(workdir, configs["b"], "b", cores=1)
        procs.append(second)
        wait_for(lambda: locked_by(workdir, results["b"]), second, second_out, "the second run's lock")
        facts["intruder"] = run(workdir, configs["a"], cores=1)
        facts["first_alive_after_intruder"] = first.poll() is None

        logs = results["b"] / "logs" / "train" / "model1"

        def training_now():
            return [log for log in sorted(logs.glob("seed_*.log")) if "training seed" in read_text(log)
                    and not (results["b"] / "train" / "model1" / log.stem / "history.csv").exists()]

        wait_for(training_now, second, second_out, "a train job of run b mid-way")
        # the job's python process: a child of run b only (run a's jobs are left alone)
        jobs = [child for child in psutil.Process(second.pid).children(recursive=True) if is_train_job(child)]
        for job in jobs:  # SIGKILL: no handler, no finally block, no atomic rename runs
            job.send_signal(signal.SIGKILL)
        facts["killed_jobs"] = len(jobs)
        facts["killed_output"] = finish(second, second_out)
        facts["killed_code"] = second.returncode
        facts["after_kill"] = {seed: seed_outputs(results["b"], seed) for seed in range(3)}
        facts["strays_after_kill"] = stray_files(results["b"])
        facts["first_alive_after_kill"] = first.poll() is None
        facts["rerun"] = run(workdir, configs["b"], cores=1)  # the same command again
        facts["a"] = (first.wait(timeout=600), first_out.read_text())
    finally:
        for proc in procs:
            stop(proc)
    return facts


def test_two_workflows_side_by_side_complete_and_agree(side_by_side):
    assert side_by_side["first_alive_after_kill"]  # the runs did overlap
    outputs = {"a": assert_ok(side_by_side["a"], "side-by-side run a"),
               "b": assert_ok(side_by_side["rerun"], "side-by-side run b (rerun)")}
    for name in ("a", "b"):
        assert_well_formed(side_by_side["results"][name])
        assert "profiles/default" in outputs[name]  # the repository's profile was found beside the Snakefile
    assert_same_model1_outputs(side_by_side["results"]["b"], side_by_side["results"]["a"])
    for name, other in (("a", "b"), ("b", "a")):  # each run wrote only under its own folder
        log = (side_by_side["results"][name] / "logs" / "train" / "model1" / "seed_0.log").read_text()
        assert str(side_by_side["results"][other]) not in log


def test_a_second_run_on_the_same_results_is_refused_by_the_lock(side_by_side):
    intruder = side_by_side["intruder"]
    text = intruder.stdout + intruder.stderr
    assert intruder.returncode != 0 and "LockException" in text and "--unlock" in text
    assert side_by_side["first_alive_after_intruder"]  # the intruder ended while the first run went on
    assert side_by_side["a"][0] == 0


def test_train_job_killed_midway_reruns_to_identical_results(side_by_side):
    assert side_by_side["killed_jobs"] >= 1, "no train job process found"
    assert side_by_side["killed_code"] != 0 and "Error in rule train" in side_by_side["killed_output"]
    # nothing half-written: each seed has all three outputs or none, and no temporary file is left
    for seed, present in side_by_side["after_kill"].items():
        assert all(present) or not any(present), (seed, present)
    assert not all(all(present) for present in side_by_side["after_kill"].values())
    # keep-going (profiles/default): the seeds after the killed one trained on, in the same run
    assert sum(all(present) for present in side_by_side["after_kill"].values()) == 2
    assert side_by_side["strays_after_kill"] == []
    # the rerun (same command) finished the work, and the numbers are the uninterrupted run's
    assert_ok(side_by_side["rerun"], "rerun after a killed train job")
    assert_same_model1_outputs(side_by_side["results"]["b"], side_by_side["results"]["a"])


def test_whole_workflow_killed_during_tuning_resumes_from_saved_trials(tmp_path, snapshot_path, side_by_side):
    """SIGKILL to Snakemake and its jobs at once (power loss, OOM killer) while the tune job is on trial 2."""
    reference = side_by_side["results"]["a"]
    results = tmp_path / "results"
    config = write_config(recipe(results, snapshot_path), tmp_path / "run.yaml")
    tune_log = results / "logs" / "tune" / "model1.log"
    state = results / "tune" / "model1" / "ax_state.json"
    trials_csv = results / "tune" / "model1" / "trials.csv"

    proc, out = start(tmp_path, config, "interrupted")
    try:
        wait_for(lambda: "trial 1/3" in read_text(tune_log), proc, out, "the first tuning trial")
        time.sleep(0.3)  # into trial 2, which takes about a second
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        stop(proc)
    assert state.exists(), "the Ax state must survive the kill"
    before = pd.read_csv(trials_csv)
    completed_before = before[before["status"] == "COMPLETED"]
    assert 1 <= len(completed_before) < 3, before
    assert not (results / "tune" / "model1" / "best_params.json").exists()

    # Snakemake's lock outlives a SIGKILL: the plain rerun is refused with a pointer to --unlock ...
    refused = run(tmp_path, config)
    assert refused.returncode != 0 and "--unlock" in refused.stdout + refused.stderr
    assert state.exists()
    # ... after --unlock the rerun reruns the incomplete tune job (rerun-incomplete, profiles/default),
    # and the job resumes from the saved Ax state instead of starting over.
    assert_ok(run(tmp_path, config, "--unlock"), "--unlock")
    rerun = assert_ok(run(tmp_path, config), "rerun after a killed workflow")
    assert f"resuming model1 from {state}: {len(completed_before)} of 3 trials complete" in tune_log.read_text()

    after = pd.read_csv(trials_csv)
    completed = after[after["status"] == "COMPLETED"]
    assert len(completed) == 3
    # the trials finished before the kill were kept as they were (same numbers, same timing: not re-run)
    kept = after.set_index("trial").loc[completed_before["trial"]]
    pd.testing.assert_frame_equal(kept.reset_index(), completed_before.reset_index(drop=True), check_dtype=False)
    # and they are the uninterrupted run's first trials
    params = ["lr", "units_1", "units_2", "units_3", "dropout_1", "dropout_2", "dropout_3", "score"]
    uninterrupted = pd.read_csv(reference / "tune" / "model1" / "trials.csv")
    pd.testing.assert_frame_equal(completed_before[params].reset_index(drop=True),
                                  uninterrupted[params].head(len(completed_before)))
    # A kill while the Ax state is being saved leaves its temporary sibling (.ax_state.json.XXXXXXXX.tmp.json,
    # fileio.atomic_path's name): never read, and the rerun's tune job removes it before resuming.
    assert_well_formed(results)
    if (after["status"] == "ABANDONED").any():
        # The trial in flight was abandoned (by design: a point that killed the job is not retried), so the
        # search went on with a different point and the result may differ from the uninterrupted run.
        assert (after["status"] == "ABANDONED").sum() == 1
    else:
        # killed between two trials: nothing was lost, and the result is the uninterrupted run's
        pd.testing.assert_frame_equal(completed[params].reset_index(drop=True), uninterrupted[params])
        assert_same_model1_outputs(results, reference)
    assert "Forced execution" in rerun or "incomplete" in rerun.lower()


# ----------------------------------------------------------- the download fails: nothing left behind

def test_failed_download_leaves_nothing_under_results_and_never_the_key(tmp_path, snapshot_path):
    """The data rule through Snakemake, MP_API_KEY set, mp_api pointed at a stand-in that rejects the key.

    The stand-in echoes the key it was sent in its 401 body (as a careless gateway might), so a leak would
    show up in the logs. MP_API_ENDPOINT is read by mp_api's own settings: the step needs no change.
    """
    from test_mp_download import FAKE_KEY, OTHER_KEY, FakeMP

    results = tmp_path / "results"
    settings = tiny_config(results, snapshot_path, data={"source": "mp_api"})
    config = write_config(settings, tmp_path / "run.yaml")
    env = {**os.environ, "MP_API_KEY": FAKE_KEY}
    server = FakeMP([], [], key=OTHER_KEY).start()
    try:
        env["MP_API_ENDPOINT"] = server.url
        result = run(tmp_path, config, f"{results}/data/electrodes.parquet", cores=1, env=env)
    finally:
        server.stop()
    text = result.stdout + result.stderr
    assert result.returncode != 0
    assert server.hits("insertion_electrodes"), text[-3000:]
    assert server.hits("insertion_electrodes") and server.hits("insertion_electrodes")[0]["key"] == FAKE_KEY
    errors = [line for line in text.splitlines() if line.startswith("electrode-ml: error:")]
    assert len(errors) == 1, text[-3000:]
    assert "rejected the API key (HTTP 401)" in errors[0]
    assert "Traceback" not in text
    assert not (results / "data").exists() or not any((results / "data").iterdir())
    assert "rejected the API key" in (results / "logs" / "data.log").read_text()
    # the key is nowhere: not in the output, not in any file of the results or of Snakemake's metadata
    assert FAKE_KEY not in text and "LEAKCANARY" not in text
    for path in [*results.rglob("*"), *(tmp_path / ".snakemake").rglob("*")]:
        if path.is_file():
            assert b"LEAKCANARY" not in path.read_bytes(), path


# ------------------------------------------------------------------ c. memory of a big prediction

def polled_peak_rss_mb(proc: subprocess.Popen, interval: float = 0.02) -> float:
    """The child's own peak RSS (VmHWM) until it exits. Not wait4's ru_maxrss: Linux carries the
    parent's resident set at the fork into it, so inside a long test session (a pytest process of
    about 1 GB) it read 1061-1068 MB for a prediction that peaks at 683 MB."""
    peak_kb = 0
    while proc.poll() is None:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            break
        peak_kb = max([peak_kb] + [int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")])
        time.sleep(interval)
    proc.wait()
    return peak_kb / 1024


def test_predicting_200k_candidates_stays_within_memory(tiny_run, tmp_path, capsys):
    _, results, _ = tiny_run
    model = "model1_phys"  # the CLI's default
    # the run's electrodes: the formulas made exact (22 of MP's rounded ones gain no ion, refused by predict)
    rows = pd.read_parquet(results / "data" / "electrodes.parquet")[candidate_columns(model)]
    big = pd.concat([rows] * -(-BIG_ROWS // len(rows)), ignore_index=True).head(BIG_ROWS)
    big["battery_id"] = big["battery_id"] + "_copy" + (np.arange(BIG_ROWS) // len(rows)).astype(str)
    assert big["battery_id"].is_unique
    candidates, out, log = tmp_path / "big.csv", tmp_path / "big_predictions.csv", tmp_path / "predict.log"
    big.to_csv(candidates, index=False)

    started = time.monotonic()
    with log.open("w") as handle:
        proc = subprocess.Popen([sys.executable, "-m", "electrode_ml.cli", "predict", str(candidates), "-o", str(out),
                                 "--model", model, "--results", str(results)], stdout=handle, stderr=subprocess.STDOUT)
        peak_mb = polled_peak_rss_mb(proc)
    seconds = time.monotonic() - started
    with capsys.disabled():
        print(f"\nelectrode-ml predict, {BIG_ROWS} rows, {model}: peak RSS {peak_mb:.0f} MB, {seconds:.1f} s")
    assert proc.returncode == 0, log.read_text()[-3000:]
    table = pd.read_csv(out)
    assert len(table) == BIG_ROWS and table["battery_id"].is_unique
    assert np.isfinite(table[[f"{target}_mean" for target in TARGETS]].to_numpy()).all()
    assert 100 < peak_mb < RSS_BOUND_MB, f"peak RSS {peak_mb:.0f} MB"  # torch alone is over 100 MB: the poll saw the child


def test_logging_follows_stderr_when_the_host_swaps_it(monkeypatch):
    """A handler holding the stderr of the set-up printed 'Logging error ... I/O operation on closed
    file' for every record once a host (pytest's capture, a notebook) had closed and swapped it."""
    import io
    import logging

    from electrode_ml.runner import setup_logging

    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    setup_logging()
    logging.getLogger("electrode_ml.test").info("to the first")
    first.close()
    monkeypatch.setattr(sys, "stderr", second)
    logging.getLogger("electrode_ml.test").info("to the second")
    assert second.getvalue().endswith("INFO electrode_ml.test: to the second\n")
    assert "Logging error" not in second.getvalue()
