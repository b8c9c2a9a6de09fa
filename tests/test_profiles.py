"""The two Snakemake profiles, checked without a cluster: what a dry run through profiles/slurm asks for."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SLURM_PROFILE = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())


def network_rules() -> set[str]:
    """The rules that run networks: those whose resources declare one GPU per job on CUDA (GPU_PER_JOB)."""
    rules = set()
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        for name, body in re.findall(r"^rule (\w+):\n(.*?)(?=^rule |\Z)", smk.read_text(), re.MULTILINE | re.DOTALL):
            if re.search(r"^\s+gpu=GPU_PER_JOB,", body, re.MULTILINE):
                rules.add(name)
    return rules


def slurm_dry_run(tmp_path: Path, **environ: str) -> dict[str, list[dict]]:
    """`snakemake -n --workflow-profile profiles/slurm` on a host without a GPU, as a login node is:
    {rule: [the resources of each of its jobs]}."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("SBATCH_") and key != "ELECTRODE_ML_GPU_PER_JOB"}
    env.update(CUDA_VISIBLE_DEVICES="", **environ)
    # --cores 8: a dry run's cores (1 by default) would cap the threads it shows
    run = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "8", "--workflow-profile", "profiles/slurm",
                          "--config", f"results={tmp_path / 'results'}"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    jobs: dict[str, list[dict]] = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", run.stdout):
        rule = re.match(r"(?:local)?rule (\w+):", block)
        if not rule:
            continue
        resources = re.search(r"^\s+resources: (.*)$", block, re.MULTILINE)
        threads = re.search(r"^\s+threads: (\d+)$", block, re.MULTILINE)
        fields = dict(item.split("=", 1) for item in resources.group(1).split(", ")) if resources else {}
        fields["threads"] = threads.group(1) if threads else "1"
        jobs.setdefault(rule.group(1), []).append(fields)
    return jobs


def test_the_slurm_profile_gives_every_network_rule_a_gpu(tmp_path):
    """feature_contribution and timing declare gpu=1 like train and tune, but profiles/slurm left them out:
    on a cluster they ran with no GPU, 2 GB and 30 minutes."""
    rules = network_rules()
    assert {"train", "tune", "group_evaluation", "feature_contribution", "timing"} <= rules
    assert {rule for rule, resources in SLURM_PROFILE["set-resources"].items() if resources.get("gpu")} == rules
    jobs = slurm_dry_run(tmp_path)
    assert rules <= set(jobs)
    # only they are submitted: peer_gbm and voltage_trees went to $SBATCH_PARTITION without a GPU,
    # which a GPU partition may refuse, and model1_phys's ensemble needs the trees
    block = re.search(r"^localrules:\n((?:    \w+,?\n)+)", (REPO / "Snakefile").read_text(), re.MULTILINE)
    local = set(re.findall(r"\w+", block.group(1)))
    assert set(jobs) - local == rules and not local & rules
    for rule, resources in jobs.items():
        for job in resources:
            assert job.get("gpu", "0") == ("1" if rule in rules else "0"), (rule, job)
            if rule in rules:
                assert int(job["runtime"]) > 30 and int(job["mem_mb"]) > 2000, (rule, job)


def test_the_gpu_check_knows_the_network_rules():
    from electrode_ml.config import NETWORK_RULES

    assert set(NETWORK_RULES) == network_rules()


def test_a_gres_gpu_for_cpu_training_is_one_line_from_a_dry_run(tmp_path):
    """The README's gres form for clusters: Snakemake keeps the text as an expression of the job, and the
    check's asking for its value ended every call, a dry run or --unlock too, in a ValueError traceback."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["train"]["device"] = "cpu"
    config["results"] = str(tmp_path / "results")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    env = {key: value for key, value in os.environ.items() if not key.startswith("SBATCH_")}
    run = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--workflow-profile", "profiles/slurm",
                          "--configfile", str(tmp_path / "config.yaml"),
                          "--set-resources", "train:gpu=0", "train:gres=gpu:a100:1", "tune:gres="],
                         cwd=REPO, env={**env, "ELECTRODE_ML_GPU_PER_JOB": "0"}, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert run.stderr.strip().splitlines()[-1:] == [
        "electrode-ml: error: config key train.device: cpu, but set-resources asks a GPU for every train job; "
        "export ELECTRODE_ML_GPU_PER_JOB=0 for profiles/slurm (or take the GPU out of their gpu and gres)"]


def test_cuda_on_a_cluster_whose_jobs_ask_no_gpu_is_one_line_before_any_submission(tmp_path):
    """train.device: cuda with ELECTRODE_ML_GPU_PER_JOB=0 submitted every network job to a node without a GPU,
    where each failed. Snakemake names the executor only once it runs, so the check sits in onstart."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["train"]["device"] = "cuda"
    config["results"] = str(tmp_path / "results")
    config["data"]["snapshot"] = str((REPO / config["data"]["snapshot"]).resolve())
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    env = {key: value for key, value in os.environ.items() if not key.startswith("SBATCH_")}
    env.update(CUDA_VISIBLE_DEVICES="", ELECTRODE_ML_GPU_PER_JOB="0", PATH=f"{tmp_path}:{env['PATH']}")
    sbatch = tmp_path / "sbatch"  # records a submission, should one happen
    sbatch.write_text(f"#!/bin/sh\ntouch {tmp_path / 'submitted'}\nexit 1\n")
    sbatch.chmod(0o755)
    run = subprocess.run([sys.executable, "-m", "snakemake", "--workflow-profile", "profiles/slurm",
                          "--configfile", str(tmp_path / "config.yaml")], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stderr[-3000:]
    assert run.stderr.strip().splitlines()[-1] == (
        "electrode-ml: error: config key train.device: cuda, but set-resources asks no GPU for the "
        "feature_contribution, group_evaluation, timing, train, tune jobs, which would fail on nodes without one; "
        "unset ELECTRODE_ML_GPU_PER_JOB (or export it as 1) for profiles/slurm, give them a gpu or gres, "
        "or set train.device: auto or cpu")
    assert not (tmp_path / "submitted").exists() and not (tmp_path / "results").exists()


SETTINGS = ("executor", "jobs", "keep_going", "latency_wait", "rerun_incomplete", "show_failed_logs",
            "max_checksum_file_size", "rerun_triggers", "default_resources", "set_resources", "set_threads")


def effective_settings(*argv: str) -> dict:
    """The settings Snakemake's command line parser derives from ``argv`` and the profiles it loads."""
    code = f"""
import json, sys
from snakemake.cli import parse_args

def plain(value):  # resources are mappings of Resource objects; compare them by their text, key by key
    if hasattr(value, "items"):
        return {{str(key): plain(item) for key, item in value.items()}}
    if isinstance(value, (set, frozenset)):  # the rerun triggers: a set, whose text has no fixed order
        return sorted(str(item) for item in value)
    return value if isinstance(value, (bool, int, float, str, type(None))) else str(value)

_, args = parse_args(sys.argv[1:])
print(json.dumps({{key: plain(getattr(args, key)) for key in {SETTINGS!r}}}))
"""
    env = {key: value for key, value in os.environ.items() if not key.startswith("SBATCH_")}
    run = subprocess.run([sys.executable, "-c", code, *argv, "-n"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    return yaml.safe_load(run.stdout)


def test_a_cluster_without_gpus_asks_for_none_and_keeps_the_limits(tmp_path):
    """train.device: cpu still asked SLURM for a GPU per job; --set-resources train:gpu=0 would have replaced all
    of the profile's set-resources (memory and time limits too), so the profile reads ELECTRODE_ML_GPU_PER_JOB."""
    rules = network_rules()
    jobs = slurm_dry_run(tmp_path, ELECTRODE_ML_GPU_PER_JOB="0")
    for rule, resources in jobs.items():
        for job in resources:
            assert job.get("gpu", "0") == "0", (rule, job)
            if rule in rules:
                assert job["mem_mb"] == "4000" and int(job["runtime"]) > 30, (rule, job)


class PluginJob:
    """What the SLURM plugin reads of a job to choose its CPUs: threads, and resources by key or attribute."""

    def __init__(self, threads: int, resources: dict):
        self.threads = threads
        self.resources = type("Resources", (dict,), {"__getattr__": dict.__getitem__})(resources)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_network_job_asks_for_as_many_cpus_as_it_runs_threads(tmp_path, threads):
    """The profile asked cpus_per_task: 2 while each job ran torch on its rule's 1 thread; without cpus_per_task
    the plugin asks for the job's threads, which set-threads would raise together with the torch threads."""
    from snakemake_executor_plugin_slurm_jobstep import get_cpu_setting

    for rule in network_rules():
        resources = {key: value for key, value in SLURM_PROFILE["set-resources"][rule].items() if key != "gpu"}
        assert get_cpu_setting(PluginJob(threads, {**resources, "gpu": 1}), gpu=True) == f"--cpus-per-task={threads}"
    if threads == 1:
        jobs = slurm_dry_run(tmp_path, ELECTRODE_ML_GPU_PER_JOB="1")
        assert all("cpus_per_task" not in job for resources in jobs.values() for job in resources)
        assert {job["threads"] for rule in network_rules() for job in jobs[rule]} == {"1"}


def test_profile_and_workflow_profile_give_the_same_slurm_settings():
    """`--profile profiles/slurm` also loads profiles/default as the workflow profile, whose keys win: its
    keep-going: false and latency-wait: 5 replaced the SLURM profile's true and 60."""
    as_workflow_profile = effective_settings("--workflow-profile", "profiles/slurm")
    assert as_workflow_profile["executor"] == "slurm"
    assert as_workflow_profile["keep_going"] is True and as_workflow_profile["latency_wait"] == 60
    # the scripts' file times rerun nothing on a cluster either (the rules' `code` param stands in)
    assert as_workflow_profile["rerun_triggers"] == ["input", "mtime", "params", "software-env"]
    assert effective_settings("--profile", "profiles/slurm") == as_workflow_profile


def test_the_workstation_profile_sets_no_key_the_slurm_profile_sets_otherwise():
    default = yaml.safe_load((REPO / "profiles" / "default" / "config.yaml").read_text())
    differing = {key for key, value in default.items() if key in SLURM_PROFILE and SLURM_PROFILE[key] != value}
    assert differing == set()
    # keys only the workstation sets pass into a SLURM run too; cores there only caps a job's threads
    assert set(default) - set(SLURM_PROFILE) == {"cores"}


def test_a_workstation_run_goes_on_past_a_failed_job():
    """One failed train job (a seed killed by the OOM killer) stopped every other independent job of an
    unattended workstation run; the rerun then had all of them to do."""
    assert effective_settings("--workflow-profile", "profiles/default")["keep_going"] is True
