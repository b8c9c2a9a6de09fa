"""Candidate electrodes, checked and scored with a trained ensemble: what `electrode-ml predict` and
`screen` do between reading a CSV and writing one (cli.py holds the command line and the I/O)."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from electrode_ml.chemistry import one_framework_unit
from electrode_ml.data import (END_FORMULAS, SPACE_GROUP_FIELDS, BadRow, coerce_types, find_bad_rows, located,
                               not_insertions, pair_problem, present, refusal, repair_counts, require_columns,
                               source_lines, unreadable_rows, with_exact_ion_counts)
from electrode_ml.ensemble import outside_training as rows_outside_training
from electrode_ml.errors import InputError
from electrode_ml.features import training_ions
from electrode_ml.models import DFT_FIELDS, uses_dft
from electrode_ml.predict import CHUNK_ROWS, TrainedEnsemble
from electrode_ml.schema import CRITERIA, PLAUSIBLE_VOLTAGE, TARGETS, WORKING_IONS
from electrode_ml.screening import passes as screen_passes

log = logging.getLogger("electrode_ml.cli")  # the command's messages, whichever module logs them

# What reading a damaged checkpoint, fitted featuriser or metrics file raises (torch, joblib, json).
UNLOADABLE = (OSError, ValueError, KeyError, RuntimeError, EOFError, pickle.UnpicklingError)

STRUCTURE_FIELDS = ("formula_charge", "formula_discharge", "working_ion",
                    "charge_crystal_system", "charge_space_group_number",
                    "discharge_crystal_system", "discharge_space_group_number")


def candidate_columns(model: str) -> list[str]:
    """Every snapshot input column a candidate for this model may hold (DFT fields for model2
    variants); a run's featuriser reads a subset (``TrainedEnsemble.input_columns``)."""
    return ["battery_id", *STRUCTURE_FIELDS, *(DFT_FIELDS if uses_dft(model) else ())]


def validate_candidates(frame: pd.DataFrame, needed: list[str], where: str, skip_bad: bool,
                        known: tuple[str, ...] | list[str] = (), ions: tuple[str, ...] | None = None):
    """Typed candidates and a table of rejected rows with their reason.

    The ``needed`` columns must be there; those of ``known`` that are there too are checked as
    strictly though the model does not read them (a space group of 231 says the file is not what
    its writer thinks), except that they may be blank (unknown); MP's voltage pairs (``adj_pairs``)
    make the ion counts exact (:func:`candidates_with_exact_counts`); any other column is ignored. A working
    ion outside ``ions`` (the run's training ions, where given) is a bad row."""
    require_columns(frame, needed, where)
    lines = source_lines(frame)
    frame = frame.reset_index(drop=True)
    pairs = frame["adj_pairs"].fillna("").astype(str) if "adj_pairs" in frame.columns else None
    # num_steps is read only to check the voltage pairs against
    unread = [name for name in present(frame, [*known, *(["num_steps"] if pairs is not None else [])])
              if name not in needed]
    typed, bad = coerce_types(frame[[*needed, *unread]])
    bad = [row for row in bad if not (row.field in unread and row.reason == "missing value")]
    bad += find_bad_rows(typed)
    if ions is not None:
        untrained = typed["working_ion"].isin(WORKING_IONS) & ~typed["working_ion"].isin(ions)
        bad += [BadRow(str(typed["battery_id"][idx]), "working_ion",
                       f"the run trained on no {typed['working_ion'][idx]} electrode (its ions: {', '.join(ions)}; "
                       "config data.ions)", idx) for idx in typed.index[untrained]]
    unreadable = unreadable_rows(bad)
    if pairs is not None:
        typed, pair_problems = candidates_with_exact_counts(typed, pairs, unreadable)
        bad += pair_problems
        unreadable |= {row.row for row in pair_problems}
    bad = located(bad + not_insertions(typed, unreadable), lines)
    if bad and not skip_bad:
        raise refusal(bad, where, hint=SKIP_BAD_HINT)
    good = per_one_framework_unit(typed.drop(index=sorted({row.row for row in bad})))
    for name in present(good, SPACE_GROUP_FIELDS):
        if name in needed:  # an unread one may hold blanks: it stays float
            good[name] = good[name].astype("int64")
    return good, rejects_table(bad)


def per_one_framework_unit(candidates: pd.DataFrame) -> pd.DataFrame:
    """``candidates`` with the ends written as several framework units rewritten per one, as every
    training electrode is written (:func:`electrode_ml.chemistry.one_framework_unit`)."""
    rewritten = {}
    for row in candidates[[*END_FORMULAS, "working_ion"]].itertuples():
        ends = one_framework_unit(row.formula_charge, row.formula_discharge, row.working_ion)
        if ends:
            rewritten[row.Index] = ends
    if not rewritten:
        return candidates
    first = next(iter(rewritten))
    log.info("%d candidate(s) written as several framework units rewritten per one, as the training electrodes "
             "are (%s: %s -> %s as %s -> %s)", len(rewritten), candidates["battery_id"][first],
             *candidates.loc[first, END_FORMULAS], *rewritten[first])
    candidates = candidates.copy()
    candidates.loc[list(rewritten), END_FORMULAS] = pd.DataFrame(list(rewritten.values()), index=list(rewritten),
                                                                 columns=END_FORMULAS)
    return candidates


SKIP_BAD_HINT = "; --skip-bad scores the rest"


def rejects_table(bad: list[BadRow]) -> pd.DataFrame:
    """The rejects file's rows: 1-based row, file line, id, field and reason of each problem."""
    columns = ["row", "line", "battery_id", "field", "reason"]
    rejects = pd.DataFrame([(row.row + 1, row.line, row.battery_id, row.field, row.reason) for row in bad],
                           columns=columns)
    rejects["line"] = rejects["line"].astype("Int64")  # empty where the rows came from no file
    return rejects


def candidates_with_exact_counts(candidates: pd.DataFrame, pairs: pd.Series, unreadable: set[int]
                                 ) -> tuple[pd.DataFrame, list[BadRow]]:
    """``candidates`` with their ion counts made exact from MP's voltage pairs (``pairs``, the file's
    ``adj_pairs`` column as text, as the snapshot and a download have it), as the workflow makes its
    electrodes' (``data.exact_formulas``, :func:`electrode_ml.data.with_exact_ion_counts`), and the rows
    whose pairs cannot: damaged or cut short, not one per step of ``num_steps`` (where given), or of
    another host than the formulas. Rows without pairs and ``unreadable`` rows (a bad formula or ion)
    are left as they are.

    MP writes the end members' ion count rounded or cut to two decimals (Li1.33CuO2 for Li4/3CuO2,
    Li1Mn3V5O16 for Li10Mn3V5O16), and a physics model's capacity follows the count it reads; pairs
    that could not make it exact left it so without a word (a cut text: 39 mAh/g where MP has 360).
    """
    ids = candidates["battery_id"].astype(str)
    steps = candidates["num_steps"] if "num_steps" in candidates else pd.Series(np.nan, index=candidates.index)
    given = candidates.index[pairs.str.strip() != ""]
    bad = [BadRow(ids[idx], *problem, idx) for idx in given.difference(sorted(unreadable))
           if (problem := pair_problem(pairs[idx], steps[idx]))]
    skipped = unreadable | {row.row for row in bad} | set(candidates.index.difference(given))
    exact, repairs = with_exact_ion_counts(candidates.assign(adj_pairs=pairs), skipped)
    for idx, host, *kinds in repairs[["pairs_host", *END_FORMULAS]].itertuples():
        if not host:
            bad.append(BadRow(ids[idx], "adj_pairs", "its voltage pairs do not describe one host framework of "
                                                     f"{candidates['working_ion'][idx]} (steps of two hosts, or a "
                                                     "formula pymatgen cannot read)", idx))
        elif "other host" in kinds:
            bad.append(BadRow(ids[idx], "adj_pairs", f"its voltage pairs describe the host {host}, not the "
                                                     "formulas' (the pairs of another electrode?)", idx))
    counts = repair_counts(repairs)
    if counts:
        log.info("ion counts made exact from the voltage pairs (adj_pairs): %s", counts)
    return exact.drop(columns="adj_pairs"), bad


def score(frame: pd.DataFrame, where: str, model: str, results: Path, skip_bad: bool,
          precision: str = "float32") -> tuple[pd.DataFrame, pd.DataFrame]:
    """The predictions for the good rows of ``frame`` (read from ``where``, a path or standard
    input, as text: :func:`electrode_ml.data.read_electrode_csv`) and the rejected rows."""
    try:
        ensemble = TrainedEnsemble.load(results, model, dtype=getattr(torch, precision))
    except InputError:  # already says what is missing or mismatched: no rebuild advice on top
        raise
    except UNLOADABLE as error:  # a file of the run damaged or cut short
        reason = str(error).splitlines()[0] if str(error) else "no detail"
        raise InputError(f"{results}: the trained {model} cannot be loaded ({type(error).__name__}: {reason}); "
                         "rerun the workflow to rebuild it") from None
    candidates, rejects = validate_candidates(frame, ensemble.input_columns, where, skip_bad,
                                              known=candidate_columns(model), ions=training_ions(ensemble.featurizer))
    lines, parts, overflowing = source_lines(frame), [], []
    # chunk by chunk, so that one chunk's features are held at a time: every candidate's at once,
    # with the overflow check's comparisons, took 200,000 candidates' peak from 797 to 1025 MB
    for start in range(0, len(candidates), CHUNK_ROWS):
        chunk = candidates.iloc[start:start + CHUNK_ROWS]
        features = ensemble.features(chunk)
        unusable = overflowing_rows(ensemble, chunk, features, lines)
        overflowing += unusable
        refused = bool(overflowing) and not skip_bad  # below, once every chunk is checked
        if not refused:
            if unusable:
                usable = ~chunk.index.isin([row.row for row in unusable])
                chunk, features = chunk[usable], features[usable]
            if len(chunk):
                parts.append(scored(ensemble, chunk, features))
        if len(candidates) > CHUNK_ROWS:  # a long list: a line per chunk, so that a wait shows its end
            log.info("%d of %d candidates checked%s", min(start + CHUNK_ROWS, len(candidates)), len(candidates),
                     "" if refused else " and scored")
    if overflowing:
        if not skip_bad:
            raise refusal(overflowing, where, hint=SKIP_BAD_HINT)
        rejects = pd.concat([rejects, rejects_table(overflowing)]).sort_values("row", kind="stable", ignore_index=True)
    predictions = pd.concat(parts, ignore_index=True) if parts else scored(ensemble, candidates.head(0))
    if predictions.empty:
        log.warning("every row of %s was rejected: nothing to score", where)
    predictions.insert(2, "model", model)
    predictions["implausible_values"] = implausible_values(
        predictions, ensemble.physics.plausible_voltage if ensemble.physics is not None else PLAUSIBLE_VOLTAGE)
    warn_outside_training(predictions)
    return predictions, rejects


def scored(ensemble: TrainedEnsemble, candidates: pd.DataFrame, features: np.ndarray | None = None) -> pd.DataFrame:
    """:meth:`TrainedEnsemble.predict` with each candidate's working ion beside its id."""
    predictions = ensemble.predict(candidates, features)
    predictions.insert(1, "working_ion", candidates["working_ion"].to_numpy())
    return predictions


def overflowing_rows(ensemble: TrainedEnsemble, candidates: pd.DataFrame, features: np.ndarray,
                     lines: np.ndarray | None) -> list[BadRow]:
    """The candidates whose features are not finite in float32 (:meth:`TrainedEnsemble.unusable_features`),
    as bad rows naming the fields."""
    return located([BadRow(str(candidates["battery_id"][idx]), fields,
                           "too far outside the training data to compute (beyond 1e20 training spreads once "
                           "scaled: the networks overflow float32)", idx)
                    for idx, fields in zip(candidates.index, ensemble.unusable_features(features)) if fields], lines)


def implausible_values(predictions: pd.DataFrame,
                       plausible_voltage: tuple[float, float] = PLAUSIBLE_VOLTAGE) -> list[str]:
    """Per candidate, the mean values no electrode can have (voltage outside the paper's
    ``PLAUSIBLE_VOLTAGE``, or the physics' own widened range, a negative capacity), space-separated:
    what networks far outside their training data return."""
    low, high = plausible_voltage
    voltage, capacity = predictions["average_voltage_mean"], predictions["capacity_grav_mean"]
    flags = pd.DataFrame({"average_voltage": ~voltage.between(low, high), "capacity_grav": capacity < 0})
    return [" ".join(flags.columns[row]) for row in flags.to_numpy()]


def from_network(predictions: pd.DataFrame) -> pd.Series:
    """Candidates with a network value: physics values do not depend on the elements seen in training."""
    return (predictions[[f"{target}_source" for target in TARGETS]] == "network").any(axis=1)


def outside_training(predictions: pd.DataFrame) -> pd.Series:
    """Candidates whose values the training data cannot vouch for (:func:`electrode_ml.ensemble.outside_training`),
    and those with implausible values."""
    return rows_outside_training(predictions, from_network(predictions)) | (predictions["implausible_values"] != "")


def warn_outside_training(predictions: pd.DataFrame) -> None:
    """Warn about candidates outside the training data: their intervals do not know it."""
    warn_flagged(predictions["unseen_elements"][from_network(predictions)],
                 "hold elements that no training formula held (%s): the networks cannot see them, so their "
                 "network values and intervals are extrapolations")
    if "unseen_space_groups" in predictions:
        warn_flagged(predictions["unseen_space_groups"][from_network(predictions)],
                     "have space groups that no training electrode had (%s): the networks cannot tell them "
                     "from none, so their network values and intervals are extrapolations")
    if "composition_outside_training" in predictions:
        warn_flagged(predictions["composition_outside_training"][from_network(predictions)],
                     "hold an element at a share of a formula outside the training formulas' range (%s): "
                     "their network values and intervals are extrapolations")
    if "dft_outside_training" in predictions:
        warn_flagged(predictions["dft_outside_training"],
                     "have DFT values outside the training range (%s): the model extrapolates there; the DFT "
                     "fields must be MP's, with MP's energy corrections")
    warn_flagged(predictions["implausible_values"],
                 "got values no electrode can have (%s): the networks are far outside their training data; "
                 "check the formulas")


def warn_flagged(flags: pd.Series, message: str) -> None:
    """One warning line for the candidates whose flag column names something, naming all it names."""
    flagged = flags[flags != ""]
    if len(flagged):
        named = " ".join(sorted(set(" ".join(flagged).split())))
        log.warning("%d candidate(s) " + message + " (column %s)", len(flagged), named, flags.name)


def passes(predictions: pd.DataFrame, thresholds: dict[str, float], column: str = "mean") -> pd.Series:
    """The paper's screen (:func:`electrode_ml.screening.passes`) on one statistic of the predictions."""
    return screen_passes(predictions, thresholds, {name: f"{target}_{column}" for name, target in CRITERIA.items()})


def of_ion(frame: pd.DataFrame, ion: str) -> tuple[pd.DataFrame, np.ndarray]:
    """The rows of ``frame`` that may be of working ion ``ion``, before any check, and their
    positions in ``frame`` (for :func:`numbered_in_file`).

    Rows of another known ion are left out unchecked: one malformed Li row stopped a screen of the
    Na candidates, and --skip-bad listed Li rejects. A value that is no known ion stays, for the
    checks to name it."""
    if "working_ion" not in frame:
        return frame, np.arange(len(frame))
    other = frame["working_ion"].isin([known for known in WORKING_IONS if known != ion]).to_numpy()
    if other.any():
        log.info("%d of %d candidate(s) are of other working ions than %s (--ion): left out", other.sum(), len(frame), ion)
    return frame[~other], np.flatnonzero(~other)


def numbered_in_file(rejects: pd.DataFrame, positions: np.ndarray) -> pd.DataFrame:
    """Rejects with ``row`` the n-th electrode of the whole file, not of the rows :func:`of_ion` kept
    (``positions``): the rejects file numbered the third electrode 2 after an ion filter."""
    return rejects.assign(row=positions[rejects["row"].to_numpy(dtype=int) - 1] + 1)


def report_screen(screened: pd.DataFrame, shown: int = 10, ion: str | None = None) -> None:
    """How many candidates pass, and which of those the training data cannot vouch for."""
    if screened.empty:
        log.warning("no candidate%s to screen", f" of working ion {ion}" if ion else "")
        return
    passing = screened["passes"].astype(bool)
    log.info("%d of %d candidate(s) pass the filter", passing.sum(), len(screened))
    doubtful = screened["battery_id"][passing & outside_training(screened)].astype(str)
    if len(doubtful):
        more = f" and {len(doubtful) - shown} more" if len(doubtful) > shown else ""
        log.warning("%d passing candidate(s) lie outside the training data, their values extrapolated: %s%s "
                    "(columns unseen_elements, unseen_space_groups, composition_outside_training, dft_outside_training, "
                    "implausible_values)", len(doubtful),
                    ", ".join(doubtful[:shown]), more)
