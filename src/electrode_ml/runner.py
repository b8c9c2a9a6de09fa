"""The bridge between a Snakemake ``script:`` and a library step: logging, threads, one-line errors."""

from __future__ import annotations

import ctypes
import importlib
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from threadpoolctl import threadpool_limits

from electrode_ml import __version__
from electrode_ml.errors import InputError
from electrode_ml.fileio import temporary_pattern

# torch: its exit hook logs FakeTensor cache statistics at INFO after an interrupted import
QUIET_LOGGERS = ("ax", "botorch", "mp_api", "urllib3", "matplotlib", "pymatgen", "filelock", "torch")


class CurrentStderrHandler(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is when a record comes: a host that swaps
    stderr after the set-up (pytest's capture, a notebook) left one holding a closed stream, and
    every later record printed "Logging error ... I/O operation on closed file"."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _ignored) -> None:
        pass


def setup_logging(log_file: str | Path | None = None, level: int = logging.INFO, append: bool = False) -> None:
    """Log to the rule's log file and to stderr; third-party chatter only from WARNING up."""
    terminal = CurrentStderrHandler()
    terminal.addFilter(lambda record: not getattr(record, "log_file_only", False))
    handlers: list[logging.Handler] = [terminal]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="a" if append else "w"))
    logging.basicConfig(level=level, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # a warning printed by Python itself would reach stderr only, not the rule's log
    logging.captureWarnings(True)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


class Terminated(BaseException):
    """SIGTERM (``kill``, ``scancel``, a cluster's time limit) as an exception, or its Snakemake found
    gone: the job's log says why it stopped, and the temporary files' cleanup runs."""


def _terminate(signum, frame) -> None:
    raise Terminated


PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def end_with_parent() -> int | None:
    """Have Linux send this job SIGTERM when the process that started it dies; that process's pid,
    None where it cannot (another OS, no C library to ask).

    ``kill -9`` on Snakemake (or the OOM killer choosing it) left its jobs running: after the
    documented ``--unlock`` and rerun, a second copy of each ran beside the first, and the two wrote
    the same outputs (measured: a killed tuning's job went on adding trials to the state the new one
    had resumed from). With the signal the orphan stops as a ``scancel`` would stop it. It covers a
    job whose parent is Snakemake itself (bash 5.1 and later run the script in the shell's place);
    where a shell stays between them (an older bash, a wrapper), the shell is the parent, it
    outlives Snakemake, and :func:`watch_snakemake` takes over.
    The caller checks the pid against ``os.getppid()`` once it can stop cleanly: a parent gone
    before the request sends nothing.
    """
    if not sys.platform.startswith("linux"):
        return None
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return parent


SNAKEMAKE = "ELECTRODE_ML_SNAKEMAKE"  # whom the jobs watch: workflow/rules/common.smk sets it


def _process_state(pid: int) -> tuple[str, int, str] | None:
    """(state, parent pid, start time) of a process from ``/proc``; None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the command name in brackets may hold spaces
    return fields[0], int(fields[1]), fields[19]


def _boot_and_namespace() -> str | None:
    """This boot of this host and this process's pid and time namespaces: where a pid means the same
    process and ``/proc`` gives its start time on the same clock (a time namespace offsets it)."""
    try:
        where = [Path("/proc/sys/kernel/random/boot_id").read_text().strip(), os.stat("/proc/self/ns/pid").st_ino]
        if Path("/proc/self/ns/time").exists():  # Linux 5.6 and later
            where.append(os.stat("/proc/self/ns/time").st_ino)
        return ":".join(map(str, where))
    except OSError:
        return None


def _alive(pid: int, started: str) -> bool:
    """Whether the process that started at ``started`` still runs as ``pid``. One ``/proc`` cannot
    show (another user's, with ``hidepid``) counts as alive unless the kernel says it is gone: a
    job must not stop for what it cannot see."""
    state = _process_state(pid)
    if state is None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # another user's: it is there
            pass
        return True
    return state[0] != "Z" and state[2] == started


def snakemake_identity() -> str:
    """This process as the jobs it starts find it (the value of ``SNAKEMAKE``): its pid and start
    time, which a reused pid does not share, and where they hold; empty where ``/proc`` cannot say."""
    state, where = _process_state(os.getpid()), _boot_and_namespace()
    return f"{os.getpid()} {state[2]} {where}" if state and where else ""


def _is_ancestor(pid: int) -> bool:
    current = os.getppid()
    for _ in range(64):
        if current == pid:
            return True
        state = _process_state(current)
        if state is None or current <= 1:
            return False
        current = state[1]
    return False


def _snakemake_in_environment() -> tuple[int, str] | None:
    """(pid, start time) of the Snakemake ``SNAKEMAKE`` names, where that pid means it here (the
    same boot, pid and time namespaces); None where there is none to compare."""
    try:
        pid, started, where = os.environ.get(SNAKEMAKE, "").split()
        return (int(pid), started) if where == _boot_and_namespace() else None
    except ValueError:
        return None


def snakemake_to_watch(signalled: bool) -> int | None:
    """The pid of the Snakemake that started this job, where the job must watch it (a process stands
    between them, or the parent-death signal could not be asked for: ``signalled`` False); None
    where there is nothing to watch. Raises :class:`Terminated` where that Snakemake has already
    ended.

    :func:`end_with_parent` covers a job whose parent is Snakemake. An older bash (RHEL 8's 4.4) or a
    wrapper stays as the parent, and it outlives a Snakemake killed with ``kill -9``. A Snakemake
    killed before the job asked for the parent-death signal (the job's first second: Python starting,
    Snakemake's script preamble) left no parent to signal either. The Snakefile says who it is in the
    environment; a job on another host or in another pid or time namespace (a container) has nothing
    to compare it with, and one run by hand from another process is not watched. A zombie counts as
    gone, as does a pid reused by a process started later.
    """
    named = _snakemake_in_environment()
    if named is None:
        return None
    pid, started = named
    # the ancestry first: a Snakemake that dies after it is found alive is then still watched
    above = _is_ancestor(pid)
    if not _alive(pid, started):
        raise Terminated(f"its Snakemake (pid {pid}) had ended before it started")
    if not above or (signalled and pid == os.getppid()):
        return None
    return pid


def watch_snakemake(pid: int, interval: float = 1.0) -> None:
    """SIGTERM this job once Snakemake's ``pid`` (from :func:`snakemake_to_watch`) has ended."""
    _, started = _snakemake_in_environment()

    def watch() -> None:
        while _alive(pid, started):
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="snakemake-watch", daemon=True).start()


def stop_if_orphaned(smk: Any, signalled_parent: int | None) -> int | None:
    """The Snakemake to watch (:func:`snakemake_to_watch`); where it or the job's parent has already
    ended, the job stops here, before it opens its log for writing or removes any file: a rerun
    started after ``--unlock`` may be running the same job. The reason is added to the log."""
    try:
        if signalled_parent is not None and os.getppid() != signalled_parent:  # died before the request
            raise Terminated(f"its parent (pid {signalled_parent}) ended as it started")
        return snakemake_to_watch(signalled=signalled_parent is not None)
    except Terminated as reason:
        setup_logging(smk.log[0] if smk.log else None, append=True)
        logging.getLogger(f"electrode_ml.{smk.rule}").error("rule %s stopped before its step: %s", smk.rule, reason)
        sys.exit(143)


def run_step(smk: Any, step: str | Callable[..., Any]) -> None:
    """Call ``step(input, output, params, threads)`` for a Snakemake job; bad input ends in one line.

    ``step`` is a function or the name of one in :mod:`electrode_ml.steps`, imported here once the
    log is open: imported by the rule's script, a broken environment failed before it and left an
    empty log. Any other error is a bug or a broken file: its traceback goes to the job's log as
    well as to stderr, since the log is where Snakemake (and, on a cluster, the user) looks.
    """
    # first: a parent that dies before the request sends no signal (until here SIGTERM's default action stops the job)
    parent = end_with_parent()
    watched = stop_if_orphaned(smk, parent)
    setup_logging(smk.log[0] if smk.log else None)
    log = logging.getLogger(f"electrode_ml.{smk.rule}")
    # which library ran: a second checkout sharing one environment would otherwise go unnoticed
    log.info("rule %s, electrode-ml %s from %s", smk.rule, __version__, Path(__file__).resolve().parent)
    remove_temporaries(smk.output, log)
    started = time.perf_counter()
    signal.signal(signal.SIGTERM, _terminate)
    try:
        if watched is not None:
            watch_snakemake(watched)
            log.info("watching Snakemake (pid %d): a process stands between them, or the parent-death "
                     "signal could not be asked for", watched)
        if isinstance(step, str):
            step = getattr(importlib.import_module("electrode_ml.steps"), step)
        # the job's threads for scikit-learn's OpenMP and numpy's BLAS too: Snakemake sets OMP_NUM_THREADS
        # for shell rules only, and the voltage trees took every core beside the other jobs' networks
        with threadpool_limits(limits=max(int(smk.threads), 1)):
            step(smk.input, smk.output, smk.params, smk.threads, wildcards=smk.wildcards)
    except InputError as error:
        # one line on the terminal: the log file gets the timestamped record, stderr the message
        log.error("%s", error, extra={"log_file_only": True})
        print(f"electrode-ml: error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:  # Ctrl-C: no traceback from wherever the step was, and the log says so
        log.error("rule %s interrupted after %.1f s", smk.rule, time.perf_counter() - started)
        sys.exit(130)
    except Terminated:
        log.error("rule %s terminated (SIGTERM) after %.1f s", smk.rule, time.perf_counter() - started)
        sys.exit(143)
    except Exception:
        # the handlers write to stderr as well, so Python's own print of it would be a second copy
        log.exception("rule %s failed after %.1f s", smk.rule, time.perf_counter() - started)
        sys.exit(1)
    log.info("rule %s done in %.1f s", smk.rule, time.perf_counter() - started)


def remove_temporaries(outputs, log: logging.Logger) -> None:
    """Delete what a killed earlier attempt left of the job's outputs: a SIGKILL (or a cluster's time
    limit) skips :func:`fileio.atomic_path`'s cleanup, and Snakemake removes the outputs, not these."""
    for output in outputs:
        path = Path(output)
        for leftover in path.parent.glob(temporary_pattern(path)) if path.parent.is_dir() else ():
            leftover.unlink(missing_ok=True)
            log.info("removed %s, left by an earlier attempt that was killed", leftover)
