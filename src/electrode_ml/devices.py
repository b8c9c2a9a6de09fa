"""Which device a training job runs on, and how concurrent jobs on one host get one GPU each.

Snakemake's ``--resources gpu=K`` only counts GPUs; it does not say which one a job may use.
So a job claims a GPU itself: it takes an exclusive ``flock`` on a per-GPU lock file and keeps it
for its lifetime. At most K jobs run at once, so one of the K locks is always free, and the
kernel releases the lock when the process ends, even on SIGKILL. Under SLURM each job already
sees exactly its own GPU(s) through ``CUDA_VISIBLE_DEVICES``; index 0 is then that GPU.
"""

from __future__ import annotations

import fcntl
import logging
import os
import platform
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from electrode_ml.errors import InputError

log = logging.getLogger(__name__)

LOCK_DIR = Path(os.environ.get("ELECTRODE_ML_GPU_LOCK_DIR", tempfile.gettempdir())) / "electrode-ml-gpu-locks"


def resolve_device(preference: str = "auto") -> str:
    """auto = cuda when a GPU is visible; cuda without one is an error, never a silent CPU run.

    Checked in the job, not when Snakemake reads the config: a SLURM login node has no GPU, its jobs do.
    """
    if preference == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if preference == "cuda" and not torch.cuda.is_available():
        fix = ("install torch's CUDA build (README, \"Several GPUs on one workstation\")" if torch.version.cuda is None
               else "run it where a GPU is visible")
        raise InputError(f"config key train.device: cuda, but {why_no_cuda()}: {fix}, "
                         "or set train.device: auto or cpu to train on the CPU")
    return preference


def why_no_cuda() -> str:
    """Why torch sees no GPU: a CPU-only build of torch, or no device visible to this process."""
    if torch.version.cuda is None:
        return f"this torch {torch.__version__} is a CPU-only build"
    return (f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device on {platform.node()} "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")


@contextmanager
def claim_gpu(n_devices: int, lock_dir: Path = LOCK_DIR, wait_s: float = 24 * 3600,
              poll_s: float = 2.0) -> Iterator[int]:
    """Hold an exclusive lock on a free GPU index in ``range(n_devices)`` and yield it.

    When all are taken (more concurrent jobs than GPUs, e.g. no ``--resources gpu=K`` was given),
    wait for one to be released rather than sharing a GPU.
    """
    lock_dir.mkdir(parents=True, exist_ok=True)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "all").replace(",", "_")
    deadline = time.monotonic() + wait_s
    waited = False
    while True:
        claimed = _try_claim(n_devices, lock_dir, visible)
        if claimed is not None:
            index, handle = claimed
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"no free GPU among {n_devices} after {wait_s:.0f} s; "
                               "run with --resources gpu=N where N is the number of GPUs")
        if not waited:
            log.info("all %d GPU(s) are claimed by other jobs; waiting", n_devices)
            waited = True
        time.sleep(poll_s)
    try:
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield index
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def _try_claim(n_devices: int, lock_dir: Path, visible: str):
    for index in range(n_devices):
        handle = open(lock_dir / f"gpu{index}-of-{visible}.lock", "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        return index, handle
    return None


@contextmanager
def job_device(preference: str = "auto") -> Iterator[str]:
    """The torch device string for one job: a claimed ``cuda:i`` or ``cpu``."""
    device = resolve_device(preference)
    if device != "cuda":
        # Said in every job's log: with auto, a CPU-only torch on a GPU host trains on the CPU silently.
        log.info("networks run on %s (train.device: %s%s)", device, preference,
                 f": {why_no_cuda()}" if preference == "auto" else "")
        yield device
        return
    if os.environ.get("SLURM_JOB_ID"):
        # SLURM already gave this job its own GPU(s), usually all seen as index 0; a node-wide
        # lock on that index would serialise jobs that each have a GPU of their own.
        log.info("networks run on cuda:0, %s (SLURM job %s, CUDA_VISIBLE_DEVICES=%s)", torch.cuda.get_device_name(0),
                 os.environ["SLURM_JOB_ID"], os.environ.get("CUDA_VISIBLE_DEVICES", "unset"))
        yield "cuda:0"
        return
    with claim_gpu(torch.cuda.device_count()) as index:
        log.info("networks run on cuda:%d, %s (%d GPU(s) visible, CUDA_VISIBLE_DEVICES=%s)", index,
                 torch.cuda.get_device_name(index), torch.cuda.device_count(),
                 os.environ.get("CUDA_VISIBLE_DEVICES", "unset"))
        yield f"cuda:{index}"
