"""Bayesian optimisation of the MLP's hyperparameters with Ax (the paper tuned its network this way).

One public entry point, :func:`run_tuning`, drives an Ax 1.3 ``Client`` (not the deprecated
``AxClient``) one trial at a time:

* seven parameters: ``lr`` (log scale), ``units_1..3`` (int), ``dropout_1..3`` (float);
* the objective returns a validation loss, which is minimised;
* the first 5 trials are quasi-random (the centre of the search space, then a scrambled Sobol
  sequence), the rest come from BoTorch (Ax's "fast" modular BoTorch model); a shorter tuning is
  all quasi-random;
* after every trial the Ax state is written to ``state_path`` (JSON) and the table of trials to
  ``trials_csv``, both atomically, so a killed run resumes where it stopped;
* the same ``seed`` gives the same sequence of suggestions, so a tuning of N trials is the first N
  trials of any longer one: a saved tuning resumed with more trials, or with fewer (only the first
  N count), gives what a fresh one of N trials would.

The parameterisation returned is the completed trial with the lowest *observed* score or, with a
``tolerance``, the cheapest within it of that score; see :func:`run_tuning` and :func:`choose_trial`.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import hashlib
import io
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from electrode_ml.fileio import atomic_path, file_sha256, temporary_pattern, write_text
from electrode_ml.model import TrainSettings

log = logging.getLogger("electrode_ml.tune")

PARAM_NAMES: tuple[str, ...] = (
    "lr", "units_1", "units_2", "units_3", "dropout_1", "dropout_2", "dropout_3",
)
INT_PARAMS: frozenset[str] = frozenset({"units_1", "units_2", "units_3"})
CSV_COLUMNS: tuple[str, ...] = ("trial", *PARAM_NAMES, "score", "seconds", "status")

METRIC = "val_loss"
# Quasi-random trials before BoTorch takes over (the centre point counts as one of them).
MAX_INITIAL_TRIALS = 5
# Written into the Ax experiment's description so a resumed run can check it is the same tuning.
_STATE_TAG = "electrode_ml.tune"
_STATE_VERSION = 1


class TuningStateMismatch(ValueError):
    """The saved tuning state belongs to another tuning (name, space, seed or objective)."""

    def __init__(self, state_path: Path, problems: list[str]):
        self.reasons = f"tuning state {state_path} does not match this run ({'; '.join(problems)})"
        super().__init__(f"{self.reasons}; delete it to start afresh or point state_path elsewhere")


@dataclass(frozen=True)
class SearchSpace:
    """Bounds of the paper's hyperparameters (inclusive); the defaults are config.yaml's ``tune`` bounds."""

    lr: tuple[float, float] = (1e-4, 1e-2)  # log scale
    units: tuple[int, int] = (32, 512)  # for units_1, units_2, units_3
    dropout: tuple[float, float] = (0.0, 0.5)  # for dropout_1, dropout_2, dropout_3

    def __post_init__(self) -> None:
        # Accept lists (as read from YAML) and normalise the element types.
        lr = tuple(float(x) for x in self.lr)
        units = tuple(self.units)
        dropout = tuple(float(x) for x in self.dropout)
        for name, pair in (("lr", lr), ("units", units), ("dropout", dropout)):
            if len(pair) != 2 or not pair[0] < pair[1]:
                raise ValueError(f"search space {name}: need (low, high) with low < high, got {pair!r}")
        if lr[0] <= 0:
            raise ValueError(f"search space lr: log scale needs low > 0, got {lr!r}")
        if any(isinstance(u, bool) or int(u) != u for u in units) or units[0] < 1:
            raise ValueError(f"search space units: need positive integers, got {units!r}")
        if dropout[0] < 0 or dropout[1] > 0.99:  # as the config's schema: 0.998 and over drops every unit
            raise ValueError(f"search space dropout: need 0 <= low < high <= 0.99, got {dropout!r}")
        object.__setattr__(self, "lr", lr)
        object.__setattr__(self, "units", (int(units[0]), int(units[1])))
        object.__setattr__(self, "dropout", dropout)

    def bounds(self) -> dict[str, tuple[float, float]]:
        """Each of the seven parameters with its (low, high)."""
        out: dict[str, tuple[float, float]] = {"lr": self.lr}
        for i in (1, 2, 3):
            out[f"units_{i}"] = self.units
        for i in (1, 2, 3):
            out[f"dropout_{i}"] = self.dropout
        return out


def objective_fingerprint(arrays: Iterable[np.ndarray], settings: dict) -> str:
    """A short hash of what a trial scores: its data (values, shapes, dtypes) and settings.

    Passed as ``objective_key`` so that a rerun on other features or at another fidelity starts
    a new tuning instead of resuming trials whose scores mean something else.
    """
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def run_tuning(
    objective: Callable[[dict], float],
    *,
    trials: int,
    seed: int,
    state_path: Path,
    trials_csv: Path,
    space: SearchSpace = SearchSpace(),
    name: str = "mlp",
    objective_key: str | None = None,
    restart_mismatched: bool = False,
    tolerance: float = 0.0,
    cost: Callable[[dict], float] | None = None,
) -> dict:
    """Minimise ``objective`` over ``space`` with Ax until ``trials`` trials have completed.

    ``objective(params)`` gets a dict with the seven parameters (``int`` units, ``float`` rest)
    and returns the validation loss to minimise; it must be finite. If the objective returns
    NaN/inf, the trial is recorded as ABANDONED (Ax never suggests its point again); if it raises,
    as FAILED, which a rerun may retry, and as ABANDONED when the same point failed before. State
    and CSV are written either way and the error propagates.

    Resume: when ``state_path`` exists it is loaded and tuning continues until ``trials``
    trials are COMPLETED in total (completed trials are never re-run). A trial that was in
    flight when the previous process died (RUNNING or CANDIDATE in the saved state) is marked
    ABANDONED, which makes Ax treat its point as taken, so a new one is generated instead,
    unless its score was recorded (``scores_path``) for this tuning and point: the process then
    died while saving the state after the trial, which is completed from the record.
    The saved state must come from the same ``name``, ``space`` and ``seed``, and, when
    ``objective_key`` is given, from an objective with the same key (the caller's fingerprint
    of what a trial scores: its data and fidelity; the scores of another objective are not
    comparable). Otherwise ``TuningStateMismatch`` (a state that cannot be read: ``ValueError``),
    or, with ``restart_mismatched``, a warning, the old state set aside (:func:`_set_aside`) and a
    set-aside tuning of this objective resumed, or a new one started. A saved tuning with more completed
    trials than ``trials`` is not tuned further: its first ``trials`` completed trials count, and
    ``trials_csv`` lists them (the state keeps the rest for a later run that asks for more).

    Returns the chosen completed trial: the seven parameters plus its ``"score"``, its
    ``"trial"`` index and the ``"lowest_score"`` of all. With ``tolerance`` 0 that is the trial
    with the lowest observed score; otherwise :func:`choose_trial` picks the cheapest within
    ``tolerance`` of it. Observed scores (rather than Ax's model-predicted best) are used
    because they are the numbers in ``trials_csv``, they need no GP (a run of a few trials has
    none), and the caller retrains the chosen network from scratch with many seeds anyway,
    which is where the noise in a single score is averaged out.
    """
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ValueError(f"trials must be a positive integer, got {trials!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if not isinstance(space, SearchSpace):
        raise TypeError(f"space must be a SearchSpace, got {type(space).__name__}")
    state_path, trials_csv = Path(state_path), Path(trials_csv)
    # what a recorded score must match to complete a trial the state still holds RUNNING
    score_key = json.dumps([name, seed, objective_key, space.lr, space.units, space.dropout])
    # left by a process killed mid-save (this job is their only writer): fileio.atomic_path's
    # temporary names, and those of releases that wrote these files with their own code
    for path in (state_path, trials_csv, scores_path(state_path)):
        for pattern in (temporary_pattern(path), f".{glob.escape(path.name)}.*.tmp"):
            for stale in path.parent.glob(pattern):
                stale.unlink(missing_ok=True)

    with _quiet_ax_warnings():
        _import_ax_quietly()
        from ax.utils.common.random import with_rng_seed

        client = None
        if state_path.exists():
            try:
                client = _load_client(state_path, space=space, name=name, seed=seed, objective_key=objective_key)
            except ValueError as exc:  # another objective's (TuningStateMismatch), or unreadable
                if not restart_mismatched:
                    raise
                kept = _set_aside(state_path)
                log.warning("%s: set aside as %s; this tuning resumes from it or starts anew",
                            getattr(exc, "reasons", exc), kept)
        if client is None and restart_mismatched:
            client = _resume_set_aside(state_path, space=space, name=name, seed=seed, objective_key=objective_key)
        if client is not None:
            n_recovered = _complete_recorded(client, state_path, score_key)
            n_abandoned = _abandon_interrupted(client)
            log.info(
                "resuming %s from %s: %d of %d trials complete%s%s",
                name, state_path, _n_completed(client), trials,
                f" ({n_recovered} finished as the state was being saved, from {scores_path(state_path)})"
                if n_recovered else "",
                f", {n_abandoned} interrupted trial(s) abandoned" if n_abandoned else "",
            )
        else:
            client = _new_client(space=space, name=name, seed=seed, objective_key=objective_key)
            log.info("tuning %s: %d trials, seed %d, over lr %g..%g (log scale), units %d..%d, dropout %g..%g; "
                     "the state saved to %s after every trial", name, trials, seed, *space.lr, *space.units,
                     *space.dropout, state_path)
        _save(client, state_path, trials_csv, trials)

        experiment = _experiment(client)
        while (done := _n_completed(client)) < trials:
            # The Client seeds its own RNG context only when it was constructed with a seed,
            # which a loaded Client is not (the seed is not part of the JSON snapshot), so
            # seed here: every generation call starts from `seed`.
            with with_rng_seed(seed):
                ((index, suggested),) = client.get_next_trials(max_trials=1).items()
            params = _plain_params(suggested)
            # Save before evaluating, so a crash mid-trial leaves a RUNNING trial behind
            # that the next run abandons instead of regenerating the same point.
            _save(client, state_path, trials_csv, trials)

            start = time.perf_counter()
            try:
                score = objective(dict(params))
            except Exception as exc:
                seconds = time.perf_counter() - start
                experiment.trials[index].update_run_metadata({"seconds": seconds})
                reason = f"{type(exc).__name__}: {exc}"[:500]
                if _failed_before(experiment, index):  # twice: no transient error; never suggest it again
                    experiment.trials[index].mark_abandoned(reason=f"failed twice; {reason}")
                else:  # may be transient (memory, a device): a rerun may suggest the point again
                    client.mark_trial_failed(index, failed_reason=reason)
                _save(client, state_path, trials_csv, trials)
                log.error("trial %d/%d (#%d) failed after %.1f s: %s", done + 1, trials, index, seconds, exc)
                raise
            seconds = time.perf_counter() - start

            returned = score
            try:
                score = float(score)
            except (TypeError, ValueError):
                score = math.nan
            if not math.isfinite(score):
                experiment.trials[index].update_run_metadata({"seconds": seconds})
                # Abandoned, not failed: Ax suggests a failed point again, and once BoTorch proposes
                # (after the Sobol points, from the same seed and data) it proposed this one on every rerun.
                experiment.trials[index].mark_abandoned(reason=f"objective returned {returned!r}, not a finite score")
                _save(client, state_path, trials_csv, trials)
                raise ValueError(
                    f"tuning {name}: objective returned {returned!r} for trial {index} {params}; "
                    "it must return a finite validation loss"
                )

            # Recorded apart first: a kill inside the state's save (a 500 KB write) left the trial
            # RUNNING, and the resume abandoned it and trained another point.
            _record_score(state_path, score_key, index, params, score, seconds)
            # The exact score goes into the run metadata too: Ax stores observations in its
            # JSON through DataFrame.to_json, which rounds them to 10 decimal places.
            experiment.trials[index].update_run_metadata({"seconds": seconds, "score": score})
            client.complete_trial(index, raw_data={METRIC: score})
            _save(client, state_path, trials_csv, trials)
            log.info(
                "trial %d/%d (#%d): %s -> score %.6g in %.1f s",
                done + 1, trials, index, _format_params(params), score, seconds,
            )

        saved = _n_completed(client)
        if saved > trials:
            log.info("the saved tuning holds %d completed trials: the first %d count (tune.trials)", saved, trials)
        completed = [r for r in _counted_rows(client, trials) if r["status"] == "COMPLETED" and r["score"] is not None]
        best = choose_trial(completed, tolerance=tolerance, cost=cost)
        log.info(
            "chose #%d of %d completed trials: %s score %.6g (lowest %.6g)",
            best["trial"], len(completed), _format_params(best), best["score"], best["lowest_score"],
        )
    return best


def choose_trial(completed: list[dict], *, tolerance: float = 0.0, cost: Callable[[dict], float] | None = None) -> dict:
    """The cheapest trial whose score is within ``tolerance`` (relative) of the lowest.

    A trial's score is one network at one seed (with ``tune.epochs: null``, the default, trained
    by the full training recipe; else for at most ``tune.epochs`` epochs): scores a few per cent
    apart do not tell the networks apart (see ``tune.tolerance`` in config.yaml for the measured
    spread), but their cost, which training and prediction time scale with, does. Ties in cost, and
    ``tolerance`` 0 or no ``cost``, fall back to the lowest score.
    """
    if not completed:
        raise RuntimeError("no completed trial to choose the best from")
    if not 0 <= tolerance < 1:
        raise ValueError(f"tolerance must be in [0, 1), got {tolerance!r}")
    lowest = min(float(r["score"]) for r in completed)
    near = [r for r in completed if float(r["score"]) <= lowest + tolerance * abs(lowest)]
    if cost is None:
        near = [r for r in near if float(r["score"]) == lowest]
    chosen = min(near, key=lambda r: (cost(r) if cost else 0, float(r["score"]), r["trial"]))
    return {**{k: chosen[k] for k in PARAM_NAMES}, "score": float(chosen["score"]), "trial": chosen["trial"],
            "lowest_score": lowest}


# ----------------------------------------------------------------------------- Ax client set-up


def _new_client(*, space: SearchSpace, name: str, seed: int, objective_key: str | None = None) -> Any:
    from ax import Client, RangeParameterConfig

    parameters = [
        RangeParameterConfig(name="lr", bounds=space.lr, parameter_type="float", scaling="log"),
        *(
            RangeParameterConfig(name=f"units_{i}", bounds=space.units, parameter_type="int")
            for i in (1, 2, 3)
        ),
        *(
            RangeParameterConfig(name=f"dropout_{i}", bounds=space.dropout, parameter_type="float")
            for i in (1, 2, 3)
        ),
    ]
    client = Client(random_seed=seed)
    client.configure_experiment(
        parameters=parameters,
        name=name,
        description=json.dumps({"tag": _STATE_TAG, "version": _STATE_VERSION, "seed": seed,
                                 "objective": objective_key}),
    )
    client.configure_optimization(objective=f"-{METRIC}")
    # Centre point + Sobol for the first 5 trials, then BoTorch ("fast" = Ax's modular BoTorch
    # defaults); not min(5, trials): a tuning of 2 trials resumed with 3 then drew its third from
    # BoTorch, and a fresh one of 3 from Sobol. The Sobol seed is separate from the Client's random_seed: the
    # latter only seeds torch/numpy around each generation call, and an unseeded Sobol
    # generator scrambles differently every time.
    client.configure_generation_strategy(
        method="fast",
        initialization_budget=MAX_INITIAL_TRIALS,
        initialization_random_seed=seed,
        initialize_with_center=True,
    )
    return client


def set_aside_folder(state_path: Path) -> Path:
    """Where a tuning of another objective goes when a new one takes ``state_path``'s place."""
    return state_path.parent / "set_aside"


def _set_aside(state_path: Path) -> Path:
    """Move a saved tuning of another objective out of the way, named by its contents, so that a
    config changed and changed back resumes it instead of tuning its 30 trials again."""
    folder = set_aside_folder(state_path)
    folder.mkdir(exist_ok=True)
    digest = file_sha256(state_path)[:16]
    kept = folder / f"{state_path.stem}.{digest}{state_path.suffix}"
    os.replace(state_path, kept)
    return kept


def _resume_set_aside(state_path: Path, **expected) -> Any:
    """A set-aside tuning of this very objective, moved back into place, or None."""
    folder = set_aside_folder(state_path)
    for kept in sorted(folder.glob(f"{state_path.stem}.*{state_path.suffix}")) if folder.is_dir() else []:
        try:
            client = _load_client(kept, **expected)
        except ValueError:  # another objective (TuningStateMismatch), or unreadable
            continue
        os.replace(kept, state_path)
        log.info("resuming the tuning set aside as %s", kept)
        return client
    return None


def _load_client(state_path: Path, *, space: SearchSpace, name: str, seed: int,
                 objective_key: str | None = None) -> Any:
    from ax import Client

    try:
        client = Client.load_from_json_file(filepath=str(state_path))
    except Exception as exc:
        raise ValueError(f"cannot load the tuning state {state_path}: {type(exc).__name__}: {exc}") from exc
    experiment = _experiment(client)
    problems: list[str] = []

    if experiment.name != name:
        problems.append(f"experiment name is {experiment.name!r}, expected {name!r}")
    try:
        meta = json.loads(experiment.description or "")
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or meta.get("tag") != _STATE_TAG:
        problems.append("it was not written by electrode_ml.tune")
    else:
        if meta.get("seed") != seed:
            problems.append(f"seed is {meta.get('seed')!r}, expected {seed!r}")
        if objective_key is not None and meta.get("objective") != objective_key:
            problems.append(f"its trials scored another objective (key {meta.get('objective')!r}, "
                            f"this run {objective_key!r}): other data or fidelity")

    saved = _space_summary(experiment.search_space)
    wanted = _space_summary(_experiment(_new_client(space=space, name=name, seed=seed)).search_space)
    for pname in sorted(saved.keys() | wanted.keys(), key=_param_order):
        if saved.get(pname) != wanted.get(pname):
            problems.append(
                f"parameter {pname}: saved {_describe(saved.get(pname))}, expected {_describe(wanted.get(pname))}"
            )

    opt = experiment.optimization_config
    if opt is None or set(opt.objective.metric_names) != {METRIC} or not opt.objective.minimize:
        problems.append(f"objective is not 'minimise {METRIC}'")
    if getattr(client, "_maybe_generation_strategy", None) is None:
        problems.append("it has no generation strategy")

    if problems:
        raise TuningStateMismatch(state_path, problems)
    _restore_exact_scores(experiment)
    return client


def _restore_exact_scores(experiment: Any) -> None:
    """Put back the scores Ax's JSON rounded to 10 decimal places (the run metadata keeps them).

    BoTorch fits its model to the scores: on rounded ones a resumed tuning suggested other points
    from its sixth trial on than the same tuning run without a stop (lr 0.0015082 against 0.0015098).
    """
    from ax.core.data import Data

    observed = experiment.lookup_data().df
    if observed.empty:
        return
    exact = {index: trial.run_metadata.get("score") for index, trial in experiment.trials.items()}
    observed = observed.copy()
    observed["mean"] = [m if exact.get(int(i)) is None or name != METRIC else exact[int(i)]
                        for i, name, m in zip(observed["trial_index"], observed["metric_name"], observed["mean"])]
    experiment.attach_data(Data(df=observed))


def _space_summary(search_space: Any) -> dict[str, tuple]:
    out = {}
    for pname, p in search_space.parameters.items():
        lower, upper = getattr(p, "lower", None), getattr(p, "upper", None)
        out[pname] = (
            type(p).__name__,
            p.parameter_type.name.lower(),
            None if lower is None else float(lower),
            None if upper is None else float(upper),
            bool(getattr(p, "log_scale", False)),
        )
    return out


def _describe(summary: tuple | None) -> str:
    if summary is None:
        return "absent"
    _kind, ptype, lower, upper, log_scale = summary
    return f"{ptype} [{lower:g}, {upper:g}]{' log' if log_scale else ''}"


def _param_order(pname: str) -> tuple[int, str]:
    return (PARAM_NAMES.index(pname) if pname in PARAM_NAMES else len(PARAM_NAMES), pname)


def _experiment(client: Any) -> Any:
    # The 1.3 Client exposes no public accessor for its Experiment; trial statuses, run
    # metadata and observed data are only reachable through it.
    return client._experiment


def _abandon_interrupted(client: Any) -> int:
    from ax.core.trial_status import TrialStatus

    experiment = _experiment(client)
    n = 0
    for trial in list(experiment.trials.values()):
        if trial.status in (TrialStatus.RUNNING, TrialStatus.CANDIDATE, TrialStatus.STAGED):
            trial.mark_abandoned(reason="interrupted: the tuning process ended before the trial completed")
            n += 1
    return n


def scores_path(state_path: Path) -> Path:
    """Where each finished trial's score is recorded before the state that holds it is saved."""
    return state_path.with_name(f"{state_path.stem}.scores{state_path.suffix}")


def _record_score(state_path: Path, key: str, index: int, params: dict, score: float, seconds: float) -> None:
    path = scores_path(state_path)
    recorded = _recorded_scores(path)
    recorded[str(index)] = {"key": key, "params": params, "score": score, "seconds": seconds}
    write_text(json.dumps(recorded), path, fsync=True)


def _recorded_scores(path: Path) -> dict:
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, or unreadable: nothing to recover
        return {}
    return recorded if isinstance(recorded, dict) else {}


def _complete_recorded(client: Any, state_path: Path, key: str) -> int:
    """Complete the RUNNING trials whose score was recorded for this very tuning and point."""
    from ax.core.trial_status import TrialStatus

    recorded = _recorded_scores(scores_path(state_path))
    n = 0
    for trial in list(_experiment(client).trials.values()):
        entry = recorded.get(str(trial.index))
        if (trial.status == TrialStatus.RUNNING and isinstance(entry, dict) and entry.get("key") == key
                and entry.get("params") == _plain_params(trial.arm.parameters)):
            trial.update_run_metadata({"seconds": entry["seconds"], "score": entry["score"]})
            client.complete_trial(trial.index, raw_data={METRIC: entry["score"]})
            n += 1
    return n


def _failed_before(experiment: Any, index: int) -> bool:
    """Whether an earlier trial at trial ``index``'s point failed."""
    from ax.core.trial_status import TrialStatus

    signatures = {arm.signature for arm in experiment.trials[index].arms}
    return any(trial.status == TrialStatus.FAILED and signatures & {arm.signature for arm in trial.arms}
               for trial in experiment.trials.values() if trial.index != index)


def _n_completed(client: Any) -> int:
    from ax.core.trial_status import TrialStatus

    return sum(t.status == TrialStatus.COMPLETED for t in _experiment(client).trials.values())


# ----------------------------------------------------------------------------- results


def _plain_params(parameters: dict) -> dict[str, int | float]:
    return {k: (int(parameters[k]) if k in INT_PARAMS else float(parameters[k])) for k in PARAM_NAMES}


def _rows(client: Any) -> list[dict[str, Any]]:
    experiment = _experiment(client)
    df = experiment.lookup_data().df
    scores: dict[int, float] = {}
    if len(df):
        df = df[df["metric_name"] == METRIC]
        scores = {int(i): float(m) for i, m in zip(df["trial_index"], df["mean"])}
    rows = []
    for index in sorted(experiment.trials):
        trial = experiment.trials[index]
        arm = trial.arm
        if arm is None:
            continue
        row: dict[str, Any] = {"trial": index, **_plain_params(arm.parameters)}
        row["score"] = trial.run_metadata.get("score", scores.get(index)) if index in scores else None
        row["seconds"] = trial.run_metadata.get("seconds")
        row["status"] = trial.status.name
        rows.append(row)
    return rows


def _counted_rows(client: Any, trials: int) -> list[dict[str, Any]]:
    """The trials up to the ``trials``-th completed one: those a fresh tuning of ``trials`` would have."""
    rows, completed = [], 0
    for row in _rows(client):
        if completed == trials:
            break
        rows.append(row)
        completed += row["status"] == "COMPLETED" and row["score"] is not None
    return rows


def _save(client: Any, state_path: Path, trials_csv: Path, trials: int) -> None:
    """Write the Ax state and the table of trials, each atomically and flushed to the disk (fsync):
    the state is what a tuning resumes from after a crash, at any trial."""
    with atomic_path(state_path, fsync=True) as tmp:
        client.save_to_json_file(filepath=str(tmp))

    # The csv module rather than pandas: a float is written as its repr, None as an empty field.
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in _counted_rows(client, trials):
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    write_text(buf.getvalue(), trials_csv, fsync=True)


def _format_params(params: dict) -> str:
    units = ", ".join(str(params[f"units_{i}"]) for i in (1, 2, 3))
    dropout = ", ".join(f"{params[f'dropout_{i}']:.3f}" for i in (1, 2, 3))
    return f"lr={params['lr']:.3g} units=({units}) dropout=({dropout})"


# ----------------------------------------------------------------------------- noise control


def _import_ax_quietly() -> None:
    """Import Ax with its INFO chatter off and its loggers at WARNING.

    Ax sends its records to its own stderr handler on the non-propagating "ax" logger and sets
    every module logger to INFO (one line is logged while ``ax`` is being imported), so the
    import runs under ``logging.disable(INFO)`` and Ax's ``set_ax_logger_levels`` then lowers
    the handler and all Ax loggers to WARNING. BoTorch's own logger defaults to CRITICAL; it is
    only raised to WARNING if someone set it lower.
    """
    previous = logging.root.manager.disable
    logging.disable(max(previous, logging.INFO))
    try:
        import ax  # noqa: F401
        from ax.utils.common.logger import set_ax_logger_levels
    finally:
        logging.disable(previous)
    set_ax_logger_levels(logging.WARNING)
    botorch_logger = logging.getLogger("botorch")
    if botorch_logger.level < logging.WARNING:
        botorch_logger.setLevel(logging.WARNING)


_NOISY_MODULES = r"(ax|botorch|gpytorch|linear_operator|pyro)(\.|$)"


@contextlib.contextmanager
def _quiet_ax_warnings() -> Iterator[None]:
    """Silence warnings that are pure noise for a user of run_tuning: deprecations raised inside
    Ax/BoTorch (Ax 1.3.1 trips pandas 3's Pandas4Warning dozens of times per trial and its own
    ``add_tracking_metric`` deprecation) and BoTorch/GPyTorch numerical notices that the
    library handles itself."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=_NOISY_MODULES)
        warnings.filterwarnings("ignore", category=PendingDeprecationWarning, module=_NOISY_MODULES)
        warnings.filterwarnings("ignore", category=FutureWarning, module=_NOISY_MODULES)
        # Raised from inside torch when GPyTorch/linear_operator are imported.
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=DeprecationWarning)
        with contextlib.suppress(ImportError):
            from botorch.exceptions.warnings import BadInitialCandidatesWarning, InputDataWarning

            warnings.filterwarnings("ignore", category=InputDataWarning)
            warnings.filterwarnings("ignore", category=BadInitialCandidatesWarning)
        with contextlib.suppress(ImportError):
            from gpytorch.utils.warnings import NumericalWarning

            warnings.filterwarnings("ignore", category=NumericalWarning)
        yield


def trial_settings(tune: dict, train: dict, device: str, model: str) -> TrainSettings:
    """How one tuning trial trains its network (seed ``tune.seed``).

    ``tune.epochs`` null: the training recipe itself (epochs, batch size, patience, learning-rate
    scale, loss), so a trial's score is that of the network the ``train`` jobs then train 50 times.
    A number: a lower-fidelity trial of at most that many epochs at the rate as suggested, on MSE.
    """
    settings = replace(TrainSettings.from_config(train, tune["seed"], device, model), log_every=0)
    if tune["epochs"] is None:
        return settings
    return replace(settings, epochs=tune["epochs"], patience=tune["patience"], lr_scale=1.0, huber_delta=None)


def trial_fidelity(settings: TrainSettings) -> dict:
    """What a trial's score depends on besides the data: a saved tuning resumes only if it matches."""
    fidelity = {field: getattr(settings, field) for field in ("epochs", "batch_size", "patience", "lr_scale",
                                                               "huber_delta")}
    if settings.precision != TrainSettings.precision:
        # only off the default: tunings saved before the setting existed still resume
        fidelity["precision"] = settings.precision
    if settings.matmul_library() != "torch":
        # a tuning stopped on one kind of CPU and resumed on another would mix two libraries' rounding
        fidelity["matmul"] = settings.matmul_library()
    if torch.device(settings.device).type != "cpu":
        # nor may one stopped on a GPU node resume on a CPU node, or the other way round
        fidelity["device"] = torch.device(settings.device).type
    return fidelity


def tuning_note(tune: dict, train: dict) -> str:
    """What the tuning's time in the timing table paid for."""
    if tune["epochs"] is None:
        return f"{tune['trials']} trials of the training recipe (at most {train['epochs']} epochs)"
    return f"{tune['trials']} trials of at most {tune['epochs']} epochs"
