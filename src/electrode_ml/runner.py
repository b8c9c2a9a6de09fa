"""The bridge between a Snakemake ``script:`` and a library step: logging, threads, one-line errors."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable

from electrode_ml.errors import InputError

QUIET_LOGGERS = ("ax", "botorch", "mp_api", "urllib3", "matplotlib", "pymatgen", "filelock")


def setup_logging(log_file: str | Path | None = None, level: int = logging.INFO) -> None:
    """Log to the rule's log file and to stderr; third-party chatter only from WARNING up."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w"))
    logging.basicConfig(level=level, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def run_step(smk: Any, step: Callable[..., Any]) -> None:
    """Call ``step(input, output, params, threads)`` for a Snakemake job; bad input ends in one line."""
    setup_logging(smk.log[0] if smk.log else None)
    log = logging.getLogger(f"electrode_ml.{smk.rule}")
    started = time.perf_counter()
    try:
        step(smk.input, smk.output, smk.params, smk.threads, wildcards=smk.wildcards)
    except InputError as error:
        log.error("%s", error)
        print(f"electrode-ml: error: {error}", file=sys.stderr)
        sys.exit(1)
    log.info("rule %s done in %.1f s", smk.rule, time.perf_counter() - started)
