"""How tests/cluster/local_slurm.sh starts its daemons; no root and no SLURM needed.

CI once failed with "munged exited while waiting for munged" while munged was starting fine: the PID
still carried the launcher's name (the forked shell, setsid, setpriv) when the script looked.
A launcher that waits before its exec makes that window wide enough to hit every time.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "cluster" / "local_slurm.sh"


def run_sourced(commands: str, state_dir: Path) -> subprocess.CompletedProcess:
    (state_dir / "log").mkdir(parents=True, exist_ok=True)
    (state_dir / "pids").mkdir(exist_ok=True)
    script = f'source "{SCRIPT}"\n{commands}\n'
    return subprocess.run(
        ["bash", "-c", script], env={"PATH": "/usr/bin:/bin", "ELECTRODE_ML_SLURM_DIR": str(state_dir)},
        capture_output=True, text=True, timeout=60,
    )


def test_a_daemon_that_execs_late_is_alive_once_started(tmp_path):
    result = run_sourced(
        "start sleep sh -c 'sleep 0.5; exec sleep 30'\n"
        'pid=$(alive_pid sleep) || { echo "not alive"; exit 1; }\n'
        'kill "$pid"',
        tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_daemon_that_dies_at_once_is_reported_with_its_log(tmp_path):
    result = run_sourced("start sleep sh -c 'echo bad option >&2; exit 3'\necho still going", tmp_path)
    assert result.returncode == 1
    assert "local_slurm: sleep did not start" in result.stderr
    assert "still going" not in result.stdout


def test_sourcing_runs_no_command(tmp_path):
    result = run_sourced("type up down start >/dev/null", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "usage" not in result.stderr
