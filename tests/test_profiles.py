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
    env = {key: value for key, value in os.environ.items() if not key.startswith("SBATCH_")}
    env.update(CUDA_VISIBLE_DEVICES="", **environ)
    run = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--workflow-profile", "profiles/slurm",
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
    for rule, resources in jobs.items():
        for job in resources:
            assert job.get("gpu", "0") == ("1" if rule in rules else "0"), (rule, job)
            if rule in rules:
                assert int(job["runtime"]) > 30 and int(job["mem_mb"]) > 2000, (rule, job)
