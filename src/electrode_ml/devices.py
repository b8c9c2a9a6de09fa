"""Which device a training job runs on, and how concurrent jobs on one host get one GPU each.

Snakemake's ``--resources gpu=K`` only counts GPUs; it does not say which one a job may use.
So a job claims a GPU itself: it takes an exclusive ``flock`` on a lock file named after the GPU's
UUID and keeps it for its lifetime. At most K jobs run at once, so one of the K locks is always free,
and the kernel releases the lock when the process ends, even on SIGKILL. The UUID, not the index,
names the lock: an index depends on ``CUDA_VISIBLE_DEVICES``, so two runs that see the GPUs
differently (one with ``CUDA_VISIBLE_DEVICES=0``, one without) would both take the first GPU, and jobs
of one SLURM allocation with several GPUs, all seeing the same indices, would all take the first.
SLURM jobs that each got a GPU of their own see different UUIDs and never wait on one another.
"""

from __future__ import annotations

import fcntl
import logging
import os
import platform
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from electrode_ml.errors import InputError

log = logging.getLogger(__name__)

# /tmp, not $TMPDIR: a TMPDIR of each user's or each job's own (pam_tmpdir, HPC modules) would give every
# run its own locks, and two runs on one host would both take the first GPU.
LOCK_DIR = Path(os.environ.get("ELECTRODE_ML_GPU_LOCK_DIR", "/tmp")) / "electrode-ml-gpu-locks"


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
def claim_gpu(gpu_ids: list[str], lock_dir: Path = LOCK_DIR, wait_s: float = 24 * 3600,
              poll_s: float = 2.0) -> Iterator[int]:
    """Hold an exclusive lock on a free GPU among the visible ones and yield its index.

    ``gpu_ids`` names each visible GPU, by index, uniquely on the host (its UUID, :func:`visible_gpu_ids`).
    When all are taken (more concurrent jobs than GPUs, e.g. no ``--resources gpu=K`` was given),
    wait for one to be released rather than sharing a GPU.
    """
    _shared_lock_dir(lock_dir)
    deadline = time.monotonic() + wait_s
    waited = False
    while True:
        claimed = _try_claim(gpu_ids, lock_dir)
        if claimed is not None:
            index, descriptor = claimed
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"no free GPU among {len(gpu_ids)} after {wait_s:.0f} s; "
                               "run with --resources gpu=N where N is the number of GPUs")
        if not waited:
            log.info("all %d GPU(s) are claimed by other jobs; waiting", len(gpu_ids))
            waited = True
        time.sleep(poll_s)
    try:
        yield index
    finally:
        os.close(descriptor)  # closing the last descriptor releases the lock


def visible_gpu_ids() -> list[str]:
    """The UUID of each GPU this process sees, by index (the index where torch gives none)."""
    ids = [str(torch.cuda.get_device_properties(index).uuid) or f"index{index}"
           for index in range(torch.cuda.device_count())]
    return [re.sub(r"[^\w.-]", "_", gpu_id) for gpu_id in ids]  # file-name safe


def _shared_lock_dir(lock_dir: Path) -> None:
    """The lock folder, open to every user of the host: GPUs are shared between users' runs too."""
    if not lock_dir.is_dir():
        lock_dir.mkdir(parents=True, exist_ok=True)
        try:
            os.chmod(lock_dir, 0o1777)  # like /tmp: anyone creates locks, no one deletes another's
        except PermissionError:  # another user created it in between
            pass


def _try_claim(gpu_ids: list[str], lock_dir: Path) -> tuple[int, int] | None:
    for index, gpu_id in enumerate(gpu_ids):
        descriptor = _open_lock(lock_dir / f"gpu-{gpu_id}.lock")
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            continue
        except OSError as error:  # EBADF: NFS emulates flock with fcntl locks, which need write access
            os.close(descriptor)
            raise InputError(f"{lock_dir}: cannot lock gpu-{gpu_id}.lock ({error.strerror}); a network file system "
                             "(NFS) locks only files open for writing: point ELECTRODE_ML_GPU_LOCK_DIR at a folder on "
                             "a local disk that every run on the host sees") from None
        return index, descriptor
    return None


def _open_lock(path: Path) -> int:
    """A descriptor of the lock file, created if missing, open for writing where it may be.

    Over NFS flock is emulated with fcntl locks, and an exclusive one needs a descriptor open for
    writing (flock(2)): a read-only one made every CUDA job fail there with EBADF. So lock files are
    created writable by every user (0666; nothing is ever written to them), and one that this user
    may only read (another user's, of an earlier release: 0644) is opened read-only, which serves on
    a local file system. The file is never opened with O_CREAT once it exists: Linux's
    protected_regular refuses that for another user's file in a world-writable sticky folder.
    """
    try:
        return os.open(path, os.O_RDWR)
    except PermissionError:
        return os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        pass
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:  # another job created it in between
        return _open_lock(path)
    os.fchmod(descriptor, 0o666)  # open to other users' jobs whatever this process's umask
    return descriptor


def describe_device(device: str) -> str:
    """The hardware a job's networks ran on, in words: the report names it from the timing job,
    since on a cluster the report itself runs on the login node, which has no GPU."""
    if torch.device(device).type == "cuda":
        return f"CUDA: {torch.cuda.get_device_name(torch.device(device))}"
    cores = len(os.sched_getaffinity(0))
    return f"CPU only ({cores} {'core' if cores == 1 else 'cores'})"


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
    gpu_ids = visible_gpu_ids()
    with claim_gpu(gpu_ids, LOCK_DIR) as index:
        log.info("networks run on cuda:%d, %s, %s (%d GPU(s) visible, CUDA_VISIBLE_DEVICES=%s%s)", index,
                 torch.cuda.get_device_name(index), gpu_ids[index], len(gpu_ids),
                 os.environ.get("CUDA_VISIBLE_DEVICES", "unset"),
                 f", SLURM job {os.environ['SLURM_JOB_ID']}" if os.environ.get("SLURM_JOB_ID") else "")
        yield f"cuda:{index}"
