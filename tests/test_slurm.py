"""The tiny workflow through profiles/slurm on a real single-node SLURM cluster with fake GPUs.

tests/cluster/local_slurm.sh brings up slurmctld + slurmd + munged on 127.0.0.1 (needs root; installs
the Debian packages when missing). Run with `make test-slurm` (`pytest -m slurm`). What is checked:

* every train (and tune) job ran as its own SLURM job: its plugin log under .snakemake/slurm_logs
  carries the SLURM job id, and the cluster's jobcomp records show that id;
* each of them was given exactly one GPU index and saw that index (CUDA_VISIBLE_DEVICES, plus
  SLURM_JOB_GPUS in the batch script and SLURM_STEP_GPUS in the srun step that runs the rule, as the
  cluster's TaskProlog records them), and no two jobs whose allocations overlapped in time held the
  same index (the cluster's Prolog/Epilog records and the jobcomp start/end times);
* a train job that fails inside SLURM is reported as failed, and the rerun completes;
* the ensemble predictions equal those of a local `--cores 2` run of the same config.

The failure is set up entirely here: a non-empty directory stands where the failing seed's model.pt
goes. Snakemake leaves non-empty directories alone, so the job trains, then the rule script cannot
move its model into place and exits 1 on the compute node. The test removes the directory and reruns.
The local run goes on beside the SLURM runs (it has its own working and results directories), which
keeps the test's wall time down while the SLURM jobs wait on the status polling.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from itertools import combinations
from pathlib import Path

import pandas as pd
import pytest
import yaml

from test_workflow import tiny_config

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "tests" / "cluster" / "local_slurm.sh"
SLURM_DIR = Path(os.environ.get("ELECTRODE_ML_SLURM_DIR", "/tmp/electrode-ml-slurm"))
N_GPUS = int(os.environ.get("ELECTRODE_ML_SLURM_GPUS", "2"))
SEEDS = (0, 1, 2)
FAILING_SEED = 2
MODEL = "model1"
TIMEOUT_S = 600

pytestmark = pytest.mark.slurm


def cluster(command: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(CLUSTER), command], env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="session")
def slurm_env():
    """Bring the local cluster up for the session; take it down at the end unless it was already up."""
    env = {**os.environ, "ELECTRODE_ML_SLURM_DIR": str(SLURM_DIR), "ELECTRODE_ML_SLURM_GPUS": str(N_GPUS)}
    was_up = cluster("status", env).returncode == 0
    up = cluster("up", env)
    assert up.returncode == 0, f"local SLURM cluster did not come up:\n{up.stdout}\n{up.stderr}"
    env["SLURM_CONF"] = str(SLURM_DIR / "etc" / "slurm.conf")
    yield env
    if not was_up:
        down = cluster("down", env)
        assert down.returncode == 0, down.stderr


def run_snakemake(config: dict, workdir: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    """Snakemake in its own working directory (its .snakemake stays under workdir)."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
         "--configfile", str(config_path), *args],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=TIMEOUT_S,
    )


def slurm_run(config: dict, workdir: Path, env: dict) -> subprocess.CompletedProcess:
    # Only the local cluster's quirks are set here; everything else comes from profiles/slurm.
    env = {**env, "SBATCH_PARTITION": "debug"}  # the profile reads the partition from sbatch's variable
    env.pop("SBATCH_ACCOUNT", None)
    return run_snakemake(
        config, workdir, env,
        "--workflow-profile", str(REPO / "profiles" / "slurm"),
        "--slurm-no-account",  # no accounts here (plugin 2.8.0 ignores it: it guesses, fails, goes on without)
        "--slurm-status-command", "squeue",  # no slurmdbd: sacct cannot answer
        "--slurm-init-seconds-before-status-checks", "5",
        "--slurm-keep-successful-logs",  # the test reads every job's log
        "--latency-wait", "5",
    )


def output(run: subprocess.CompletedProcess) -> str:
    return f"--- stdout\n{run.stdout[-4000:]}\n--- stderr\n{run.stderr[-8000:]}"


def slurm_jobs(workdir: Path, rule: str) -> dict[str, list[int]]:
    """{wildcards: [SLURM job ids]} from the plugin's per-job logs (.snakemake/slurm_logs/rule_X/W/ID.log)."""
    jobs: dict[str, list[int]] = {}
    for log in sorted((workdir / ".snakemake" / "slurm_logs" / f"rule_{rule}").glob("*/*.log")):
        jobs.setdefault(log.parent.name, []).append(int(log.stem))
    for ids in jobs.values():
        ids.sort()
    return jobs


def jobcomp(env: dict) -> dict[int, dict]:
    """Finished jobs from the cluster's jobcomp records (`sacct -c`; the cluster has no slurmdbd)."""
    run = subprocess.run(["sacct", "-c", "--parsable2", "--noheader", "-o", "JobID,JobName,State,Start,End,ExitCode"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    records = {}
    for line in run.stdout.splitlines():
        job_id, name, state, start, end, exit_code = line.split("|")
        if not job_id.isdigit() or "Unknown" in (start, end):  # e.g. a job cancelled before it started
            continue
        records[int(job_id)] = dict(name=name, state=state, exit_code=exit_code,
                                    start=datetime.fromisoformat(start), end=datetime.fromisoformat(end))
    return records


def gpu_allocations() -> dict[int, dict]:
    """{job id: {start, end, gpus}} from the cluster's Prolog/Epilog log (what SLURM allocated)."""
    allocations: dict[int, dict] = {}
    for line in (SLURM_DIR / "log" / "gpu_alloc.log").read_text().splitlines():
        event, stamp, job, gpus = line.split(" ", 3)
        record = allocations.setdefault(int(job.removeprefix("job=")), {})
        record[event] = float(stamp)
        record.setdefault("gpus", set()).add(gpus.removeprefix("gpus="))
    return allocations


def task_environments() -> dict[int, list[dict]]:
    """{job id: [environment of each task]} from the cluster's TaskProlog log (what each job saw)."""
    tasks: dict[int, list[dict]] = {}
    for line in (SLURM_DIR / "log" / "task_env.log").read_text().splitlines():
        fields = dict(item.split("=", 1) for item in line.split()[1:])
        tasks.setdefault(int(fields["job"]), []).append(fields)
    return tasks


@pytest.fixture(scope="module")
def runs(tmp_path_factory, snapshot_path, slurm_env):
    """The SLURM run (first attempt with one failing train job, then the rerun) and a local run."""
    base = tmp_path_factory.mktemp("slurm")

    def config_for(results: Path) -> dict:
        config = tiny_config(results, snapshot_path, tune={"trials": 2}, train={"n_seeds": len(SEEDS), "epochs": 10})
        config["models"] = [MODEL]
        # auto, as on a cluster whose torch is CPU-only: the jobs ask for the profile's GPU and train on the
        # CPU (train.device: cpu with a GPU per job is refused, common.smk)
        config["train"]["device"] = "auto"
        return config

    slurm_dir, local_dir = base / "slurm", base / "local"
    with ThreadPoolExecutor(1) as pool:
        local_future = pool.submit(run_snakemake, config_for(local_dir / "results"), local_dir, dict(os.environ),
                                   "--cores", "2")
        slurm = slurm_runs(config_for(slurm_dir / "results"), slurm_dir, slurm_env)
        local = local_future.result()
    return dict(**slurm, local=local, slurm_results=slurm_dir / "results", local_results=local_dir / "results",
                env=slurm_env)


def slurm_runs(slurm_config: dict, slurm_dir: Path, slurm_env: dict) -> dict:
    # The failing seed cannot put its model in place: a non-empty directory stands there.
    blocker = slurm_dir / "results" / "train" / MODEL / f"seed_{FAILING_SEED}" / "model.pt"
    blocker.mkdir(parents=True)
    (blocker / "blocker").write_text("tests/test_slurm.py: makes this train job fail once\n")
    first = slurm_run(slurm_config, slurm_dir, slurm_env)
    first_jobs = {rule: slurm_jobs(slurm_dir, rule) for rule in ("train", "tune")}
    first_done = {seed: (slurm_dir / "results" / "train" / MODEL / f"seed_{seed}" / "predictions.parquet").exists()
                  for seed in SEEDS}
    shutil.rmtree(blocker)
    rerun = slurm_run(slurm_config, slurm_dir, slurm_env)
    return dict(first=first, rerun=rerun, first_jobs=first_jobs, first_done=first_done, slurm_dir=slurm_dir)


def test_failing_job_is_reported_and_the_rerun_completes(runs):
    first, rerun = runs["first"], runs["rerun"]
    assert first.returncode != 0, output(first)
    failed_ids = runs["first_jobs"]["train"][f"{MODEL}_{FAILING_SEED}"]
    assert len(failed_ids) == 1, runs["first_jobs"]
    failed_id = failed_ids[0]
    # Snakemake learnt of the failure from SLURM, and SLURM recorded it.
    assert re.search(rf"SLURM-job '{failed_id}' failed, SLURM status is: 'FAILED'", first.stderr), output(first)
    record = jobcomp(runs["env"])[failed_id]
    assert record["state"] == "FAILED" and record["exit_code"] != "0:0", record
    # keep-going: the other seeds finished in the first attempt.
    assert runs["first_done"] == {seed: seed != FAILING_SEED for seed in SEEDS}, output(first)
    assert rerun.returncode == 0, output(rerun)
    # The rerun resubmitted only the failed seed.
    train_jobs = slurm_jobs(runs["slurm_dir"], "train")
    assert {wildcards: len(ids) for wildcards, ids in train_jobs.items()} == {
        f"{MODEL}_{seed}": 2 if seed == FAILING_SEED else 1 for seed in SEEDS}
    assert (runs["slurm_results"] / "ensemble" / MODEL / "predictions.parquet").exists()


def gpu_rules() -> set[str]:
    """The rules profiles/slurm gives a GPU (train, tune, ...)."""
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    return {rule for rule, resources in profile["set-resources"].items() if resources.get("gpu")}


def test_every_train_job_ran_on_slurm_with_its_own_gpu(runs):
    assert runs["rerun"].returncode == 0, output(runs["rerun"])
    slurm_dir, env = runs["slurm_dir"], runs["env"]
    records, allocations, tasks = jobcomp(env), gpu_allocations(), task_environments()
    with_gpu = gpu_rules()
    assert {"train", "tune"} <= with_gpu
    # Every SLURM job of this run (both attempts), from the plugin's per-job logs:
    # .snakemake/slurm_logs/rule_R/[WILDCARDS/]ID.log
    logs_dir = slurm_dir / ".snakemake" / "slurm_logs"
    jobs, logs = {}, {}
    for log in logs_dir.glob("rule_*/**/*.log"):
        parts = log.relative_to(logs_dir).parts
        jobs[int(log.stem)] = (parts[0].removeprefix("rule_"), "_".join(parts[1:-1]))
        logs[int(log.stem)] = log
    per_rule = {}
    for rule, wildcards in jobs.values():
        per_rule.setdefault(rule, []).append(wildcards)
    assert sorted(per_rule["train"]) == sorted([f"{MODEL}_{seed}" for seed in SEEDS] + [f"{MODEL}_{FAILING_SEED}"])
    assert per_rule["tune"] == [MODEL]

    indices = {str(index) for index in range(N_GPUS)}
    gpu_jobs = {}
    for job_id, (rule, wildcards) in jobs.items():
        where = f"{rule} {wildcards} (SLURM job {job_id})"
        assert job_id in records, f"{where}: no jobcomp record"
        # The job's output file is the plugin log: the TaskProlog's line in it names this job.
        assert f"local_slurm task: job={job_id} " in logs[job_id].read_text(), where
        assert "start" in allocations[job_id] and "end" in allocations[job_id], where
        allocated = allocations[job_id]["gpus"] - {""}
        if rule not in with_gpu:
            assert not allocated, f"{where}: a light rule was given GPU(s) {allocated}"
            continue
        assert len(allocated) == 1 and allocated <= indices, f"{where}: SLURM allocated {allocated}"
        (gpu,) = allocated
        gpu_jobs[job_id] = (rule, wildcards, gpu)
        seen = tasks[job_id]
        # The batch step and the srun step that runs the rule (snakemake's slurm-jobstep).
        assert {task["step"] for task in seen} >= {"batch", "0"}, f"{where}: {seen}"
        # The batch script sees the job's GPU; the rule's srun step (whose environment the jobstep
        # cleared of SLURM_JOB_*) sees the same one as its step GPU. CUDA_VISIBLE_DEVICES agrees in both.
        for task in seen:
            slurm_gpus = task["SLURM_JOB_GPUS"] if task["step"] == "batch" else task["SLURM_STEP_GPUS"]
            assert task["CUDA_VISIBLE_DEVICES"] == gpu and slurm_gpus == gpu, f"{where}: {task}"

    # No two jobs held the same GPU at the same time: allocation windows (Prolog to Epilog, ns) and the
    # jobcomp start/end times (s) of jobs that overlap must not share an index.
    overlapping = 0
    for a, b in combinations(gpu_jobs, 2):
        alloc_a, alloc_b, rec_a, rec_b = allocations[a], allocations[b], records[a], records[b]
        same_gpu = gpu_jobs[a][2] == gpu_jobs[b][2]
        if alloc_a["start"] < alloc_b["end"] and alloc_b["start"] < alloc_a["end"]:
            overlapping += 1
            assert not same_gpu, (gpu_jobs[a], gpu_jobs[b], alloc_a, alloc_b)
        if rec_a["start"] < rec_b["end"] and rec_b["start"] < rec_a["end"]:
            assert not same_gpu, (gpu_jobs[a], gpu_jobs[b], rec_a, rec_b)
    # Several GPU jobs did run at once (on different GPUs), so the check above was not vacuous.
    assert overlapping >= 1, allocations


def test_results_equal_a_local_run(runs):
    assert runs["rerun"].returncode == 0, output(runs["rerun"])
    assert runs["local"].returncode == 0, output(runs["local"])
    for seed in SEEDS:
        relative = Path("train") / MODEL / f"seed_{seed}" / "predictions.parquet"
        pd.testing.assert_frame_equal(pd.read_parquet(runs["slurm_results"] / relative),
                                      pd.read_parquet(runs["local_results"] / relative))
    relative = Path("ensemble") / MODEL / "predictions.parquet"
    pd.testing.assert_frame_equal(pd.read_parquet(runs["slurm_results"] / relative),
                                  pd.read_parquet(runs["local_results"] / relative))
