"""`electrode-ml predict` and `electrode-ml screen`: score new materials with a trained ensemble."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from importlib.metadata import version
from pathlib import Path

import pandas as pd
import torch

from electrode_ml.chemistry import insertion_problem
from electrode_ml.data import (FORMULA_FIELDS, SPACE_GROUP_FIELDS, BadRow, coerce_types, exact_end_formulas,
                               find_bad_rows, present, read_electrode_csv, refusal, require_columns)
from electrode_ml.ensemble import outside_training as rows_outside_training
from electrode_ml.errors import InputError
from electrode_ml.features import DFT_FIELDS, KNOWN_MODELS, uses_dft
from electrode_ml.fileio import write_csv
from electrode_ml.physics import PLAUSIBLE_VOLTAGE, PLAUSIBLE_VOLTAGE_TEXT
from electrode_ml.predict import TrainedEnsemble
from electrode_ml.runner import setup_logging
from electrode_ml.schema import TARGETS, UNITS, WORKING_IONS
from electrode_ml.screening import CRITERIA, DEFAULT_NA_THRESHOLDS, passes as screen_passes

log = logging.getLogger("electrode_ml.cli")

STRUCTURE_FIELDS = ("formula_charge", "formula_discharge", "working_ion",
                    "charge_crystal_system", "charge_space_group_number",
                    "discharge_crystal_system", "discharge_space_group_number")


OUTPUT_COLUMNS = ("Output per candidate: for each target (average_voltage, capacity_grav, energy_grav) _mean, "
                  "_std, the paper's CI of the mean (_ci_low, _ci_high), the calibrated 95 % interval (_pi_low, "
                  "_pi_high) and _source (physics or network); physics_note (physics models: why the physics "
                  "did not apply); unseen_elements (elements no training formula held: the networks cannot see "
                  "them); dft_outside_training (model2 variants: DFT fields outside the training range); "
                  "implausible_values (targets whose mean no electrode can have: voltage outside "
                  f"{PLAUSIBLE_VOLTAGE_TEXT}, capacity below 0).")


def candidate_columns(model: str) -> list[str]:
    """Every snapshot input column a candidate for this model may hold (DFT fields for model2
    variants); a run's featuriser reads a subset (``TrainedEnsemble.input_columns``)."""
    return ["battery_id", *STRUCTURE_FIELDS, *(DFT_FIELDS if uses_dft(model) else ())]


def validate_candidates(frame: pd.DataFrame, needed: list[str], where: str, skip_bad: bool,
                        known: tuple[str, ...] | list[str] = ()):
    """Typed candidates and a table of rejected rows with their reason.

    The ``needed`` columns must be there; those of ``known`` that are there too are checked as
    strictly though the model does not read them (a space group of 231 says the file is not what
    its writer thinks), except that they may be blank (unknown); MP's voltage pairs (``adj_pairs``)
    make the ion counts exact (:func:`exact_ion_counts`); any other column is ignored."""
    require_columns(frame, needed, where)
    frame = frame.reset_index(drop=True)
    unread = [name for name in present(frame, known) if name not in needed]
    typed, bad = coerce_types(frame[[*needed, *unread]])
    bad = [row for row in bad if not (row.field in unread and row.reason == "missing value")]
    bad += find_bad_rows(typed)
    unreadable = {row.row for row in bad if row.field in (*FORMULA_FIELDS, "working_ion")}
    if "adj_pairs" in frame.columns:
        typed = exact_ion_counts(typed, frame["adj_pairs"], unreadable)
    bad += not_insertions(typed, unreadable)
    if bad and not skip_bad:
        raise refusal(bad, where, hint="; --skip-bad scores the rest")
    rejects = pd.DataFrame([{"row": row.row + 1, "battery_id": row.battery_id, "field": row.field,
                             "reason": row.reason} for row in bad], columns=["row", "battery_id", "field", "reason"])
    good = typed.drop(index=sorted({row.row for row in bad}))
    for name in present(good, SPACE_GROUP_FIELDS):
        if name in needed:  # an unread one may hold blanks: it stays float
            good[name] = good[name].astype("int64")
    return good, rejects


def exact_ion_counts(candidates: pd.DataFrame, pairs: pd.Series, unreadable: set[int]) -> pd.DataFrame:
    """``candidates`` with their ion counts made exact from MP's voltage pairs (``pairs``, the file's
    ``adj_pairs`` column, as the snapshot and a download have it), as the workflow makes its
    electrodes' (``data.exact_formulas``, :func:`electrode_ml.data.exact_end_formulas`); ``unreadable``
    rows (a bad formula or ion) are left as they are.

    MP writes the end members' ion count rounded or cut to two decimals (Li1.33CuO2 for Li4/3CuO2,
    Li1Mn3V5O16 for Li10Mn3V5O16), and a physics model's capacity follows the count it reads.
    """
    formulas = ["formula_charge", "formula_discharge"]
    readable = candidates.index.difference(sorted(unreadable))
    ends = candidates.loc[readable, [*formulas, "working_ion"]].assign(adj_pairs=pairs.loc[readable].fillna(""))
    exact, counts = exact_end_formulas(ends)
    if counts:
        log.info("ion counts made exact from the voltage pairs (adj_pairs): %s", counts)
    candidates = candidates.copy()
    candidates.loc[readable, formulas] = exact[formulas]
    return candidates


def not_insertions(candidates: pd.DataFrame, unreadable: set[int]) -> list[BadRow]:
    """Rows whose formulas parse but describe no insertion of their ion (:func:`insertion_problem`);
    ``unreadable`` rows already have a bad formula or ion."""
    bad = []
    readable = candidates.loc[candidates.index.difference(sorted(unreadable))]
    # itertuples, not a .loc per row: that took 1.5 s of 9.6 s for 20,000 candidates
    for electrode in readable.itertuples():
        problem = insertion_problem(electrode.formula_charge, electrode.formula_discharge, electrode.working_ion)
        if problem:
            bad.append(BadRow(str(electrode.battery_id), *problem, electrode.Index))
    return bad


def score(input_path: Path, model: str, results: Path, skip_bad: bool,
          precision: str = "float32") -> tuple[pd.DataFrame, pd.DataFrame]:
    frame = read_electrode_csv(input_path)
    ensemble = TrainedEnsemble.load(results, model, dtype=getattr(torch, precision))
    candidates, rejects = validate_candidates(frame, ensemble.input_columns, str(input_path), skip_bad,
                                              known=candidate_columns(model))
    if candidates.empty:
        log.warning("every row of %s was rejected: nothing to score", input_path)
    predictions = ensemble.predict(candidates)
    predictions.insert(1, "working_ion", candidates["working_ion"].to_numpy())
    predictions.insert(2, "model", model)
    predictions["implausible_values"] = implausible_values(predictions)
    warn_outside_training(predictions)
    return predictions, rejects


def implausible_values(predictions: pd.DataFrame) -> list[str]:
    """Per candidate, the mean values no electrode can have (voltage outside the paper's
    ``PLAUSIBLE_VOLTAGE``, a negative capacity), space-separated: what networks far outside their
    training data return."""
    low, high = PLAUSIBLE_VOLTAGE
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


def report_screen(screened: pd.DataFrame, shown: int = 10) -> None:
    """How many candidates pass, and which of those the training data cannot vouch for."""
    if screened.empty:
        log.warning("no candidate to screen")
        return
    passing = screened["passes"].astype(bool)
    log.info("%d of %d candidate(s) pass the filter", passing.sum(), len(screened))
    doubtful = screened["battery_id"][passing & outside_training(screened)].astype(str)
    if len(doubtful):
        more = f" and {len(doubtful) - shown} more" if len(doubtful) > shown else ""
        log.warning("%d passing candidate(s) lie outside the training data, their values extrapolated: %s%s "
                    "(columns unseen_elements, dft_outside_training, implausible_values)", len(doubtful),
                    ", ".join(doubtful[:shown]), more)


def rejects_path(output: Path) -> Path:
    return output.with_name(output.stem + ".rejects.csv")


def to_stdout(output: Path) -> bool:
    """``-o -``: the table goes to standard output, for a pipe."""
    return str(output) == "-"


def check_output(output: Path, input_path: Path) -> None:
    """Refuse, before any scoring, an output that would overwrite the input or cannot be a file."""
    if to_stdout(output):
        return
    for path, what in ((output, "OUTPUT"), (rejects_path(output), "OUTPUT's rejects file")):
        if path.resolve() == input_path.resolve():
            raise InputError(f"{output}: {what} would overwrite the input {input_path}; write elsewhere")
    if output.is_dir():
        raise InputError(f"{output}: a folder; OUTPUT must be a CSV file path")


def write_outputs(predictions: pd.DataFrame, rejects: pd.DataFrame, output: Path) -> None:
    if to_stdout(output):
        write_stdout(predictions, rejects)
        return
    try:
        write_csv(predictions, output)
        stale = rejects_path(output)
        if not rejects.empty:
            write_csv(rejects, stale)
            log.warning("%d row(s) rejected; reasons in %s", rejects["row"].nunique(), stale)
        elif stale.exists():  # an earlier run's rejects would read as this run's
            stale.unlink()
            log.info("removed %s, an earlier run's rejects (this run rejected no row)", stale)
    except OSError as error:
        raise InputError(f"{output}: cannot write ({error.strerror or error})") from None
    log.info("wrote %d prediction(s) to %s", len(predictions), output)


def write_stdout(predictions: pd.DataFrame, rejects: pd.DataFrame) -> None:
    """The table to standard output in one write, once every row is scored, so that an error
    leaves the pipe empty rather than half a table; a rejected row is a warning line on stderr
    (with the rows and reasons a rejects file would hold)."""
    for reject in rejects.itertuples(index=False):
        log.warning("rejected row %d (battery_id %r), field %r: %s", reject.row, reject.battery_id,
                    reject.field, reject.reason)
    if not rejects.empty:
        log.warning("%d row(s) rejected", rejects["row"].nunique())
    try:
        sys.stdout.write(predictions.to_csv(index=False))
        sys.stdout.flush()
    except BrokenPipeError:
        # the reader (head, a pager) stopped early; Python would otherwise report the closed
        # pipe again when it flushes stdout at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        log.info("standard output was closed before the whole table was read")
        return
    log.info("wrote %d prediction(s) to standard output", len(predictions))


def threshold(text: str) -> float:
    """A screening threshold: a finite number, 0 or more (as the workflow's screen.* config)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of 0 or more, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="electrode-ml", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('electrode-ml')}")
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub):
        sub.add_argument("input", type=Path, help="CSV of candidate electrodes: battery_id, both formulas, working_ion, both "
                                                     "crystal systems; the space groups if the run used them, the DFT "
                                                     "fields for model2 variants; MP's adj_pairs, if given, make "
                                                     "the ion counts exact")
        sub.add_argument("-o", "--output", type=Path, required=True,
                         help="CSV to write (atomically); - writes it to standard output once every row is scored, "
                              "and --skip-bad's rejected rows to stderr")
        sub.add_argument("--model", default="model1_phys", choices=KNOWN_MODELS, metavar="MODEL",
                         help=f"{', '.join(KNOWN_MODELS)} (default model1_phys: needs no DFT)")
        sub.add_argument("--results", type=Path, default=Path("results"), help="the workflow's results folder")
        sub.add_argument("--precision", choices=["float32", "bfloat16"], default="float32",
                         help="network arithmetic; bfloat16 was about 3x faster on a CPU with AMX and moved ensemble "
                              "means by about 0.002-0.004 V / 0.3-0.4 mAh/g / 0.7-0.9 Wh/kg (make bench measures it)")
        sub.add_argument("--skip-bad", action="store_true",
                         help="write bad rows with their reason beside OUTPUT (out.csv -> out.rejects.csv; with -o -, "
                              "to stderr) and score the rest")

    common(commands.add_parser("predict", help="mean, paper CI and calibrated 95 %% interval per target",
                               epilog=OUTPUT_COLUMNS))
    screen = commands.add_parser("screen", help="predict, then apply the paper's filter (Table 5)",
                                 epilog=OUTPUT_COLUMNS + " screen adds passes and passes_at_pi_low, and names the "
                                        "passing candidates either flag marks.")
    common(screen)
    screen.add_argument("--ion", choices=WORKING_IONS, metavar="ION",
                        help=f"keep only candidates of this working ion ({', '.join(WORKING_IONS)}; default all)")
    for name, what in (("voltage", "average voltage"), ("capacity", "capacity"), ("energy", "specific energy")):
        default = DEFAULT_NA_THRESHOLDS[name]
        screen.add_argument(f"--{name}", type=threshold, default=default,
                            help=f"minimum {what}, {UNITS[CRITERIA[name]]} (default {default:g})")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        check_output(args.output, args.input)
        predictions, rejects = score(args.input, args.model, args.results, args.skip_bad, args.precision)
        if args.command == "screen":
            if args.ion:
                predictions = predictions[predictions["working_ion"] == args.ion]
            thresholds = {name: getattr(args, name) for name in CRITERIA}
            predictions = predictions.assign(passes=passes(predictions, thresholds),
                                             passes_at_pi_low=passes(predictions, thresholds, column="pi_low"))
            report_screen(predictions)
        write_outputs(predictions, rejects, args.output)
    except InputError as error:
        print(f"electrode-ml: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
