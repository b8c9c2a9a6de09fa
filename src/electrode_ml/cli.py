"""`electrode-ml predict` and `electrode-ml screen`: score new materials with a trained ensemble.

This module is the command line and its I/O; the scoring (candidates.py) and with it torch,
scikit-learn and pymatgen load only once the arguments are read, so that `--help`, `--version`
and a mistyped option answer at once instead of after two seconds of imports."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

from electrode_ml.errors import InputError
from electrode_ml.models import KNOWN_MODELS
from electrode_ml.runner import setup_logging
from electrode_ml.schema import CRITERIA, DEFAULT_NA_THRESHOLDS, PLAUSIBLE_VOLTAGE_TEXT, UNITS, WORKING_IONS

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("electrode_ml.cli")

OUTPUT_COLUMNS = ("Output per candidate: for each target (average_voltage, capacity_grav, energy_grav) _mean, "
                  "_std, the paper's CI of the mean (_ci_low, _ci_high), the calibrated 95 % interval (_pi_low, "
                  "_pi_high) and _source (physics or network); physics_note (physics models: why the physics "
                  "did not apply); unseen_elements (elements no training formula held: the networks cannot see "
                  "them); dft_outside_training (model2 variants: DFT fields outside the training range); "
                  "implausible_values (targets whose mean no electrode can have: voltage outside "
                  f"{PLAUSIBLE_VOLTAGE_TEXT}, capacity below 0).")


# OUTPUT suffixes pandas compresses by (write_csv keeps them on its temporary file) that the
# input side reads back; pandas would also take .zst (with a package not installed) and .zip
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz")
REFUSED_SUFFIXES = (".zst", ".zip", ".tar")


def rejects_path(output: Path) -> Path:
    """out.csv -> out.rejects.csv, out.csv.gz -> out.rejects.csv.gz: compressed as OUTPUT is."""
    packed = output.suffix if output.suffix in COMPRESSED_SUFFIXES else ""
    plain = output.with_suffix("") if packed else output
    return output.with_name(plain.stem + ".rejects.csv" + packed)


def is_stream(path: Path) -> bool:
    """``-`` as INPUT or OUTPUT: standard input or standard output, for a pipe."""
    return str(path) == "-"


def read_candidates(input_path: Path) -> tuple[pd.DataFrame, str]:
    """The candidates as text, and the name errors give their source: the path, or standard input."""
    from electrode_ml.data import parse_electrode_csv, read_electrode_csv

    if not is_stream(input_path):
        return read_electrode_csv(input_path), str(input_path)
    if sys.stdin is None or sys.stdin.isatty():
        # reading would wait for a CSV typed at the terminal
        raise InputError("INPUT - reads standard input, which is a terminal here; pipe a CSV in "
                         "(cat candidates.csv | electrode-ml predict - ...) or name the file")
    return parse_electrode_csv(sys.stdin.buffer.read(), "standard input"), "standard input"


def check_output(output: Path, input_path: Path) -> None:
    """Refuse, before any scoring, an output that would overwrite the input or cannot be a file."""
    if is_stream(output):
        return
    for path, what in ((output, "OUTPUT"), (rejects_path(output), "OUTPUT's rejects file")):
        if not is_stream(input_path) and path.resolve() == input_path.resolve():
            raise InputError(f"{output}: {what} would overwrite the input {input_path}; write elsewhere")
    if output.is_dir():
        raise InputError(f"{output}: a folder; OUTPUT must be a CSV file path")
    if output.suffix in REFUSED_SUFFIXES:
        raise InputError(f"{output}: {output.suffix} is not written; name OUTPUT .csv, or .csv.gz, .csv.bz2 or .csv.xz "
                         "to compress it")


def write_outputs(predictions: pd.DataFrame, rejects: pd.DataFrame, output: Path) -> None:
    from electrode_ml.fileio import write_csv

    if is_stream(output):
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
    import pandas as pd

    for reject in rejects.itertuples(index=False):
        place = f"row {reject.row}" if pd.isna(reject.line) else f"line {reject.line} (row {reject.row})"
        log.warning("rejected %s, battery_id %r, field %r: %s", place, reject.battery_id, reject.field, reject.reason)
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
        sub.add_argument("input", type=Path, help="CSV of candidate electrodes, gzip/bzip2/xz-compressed or not (- "
                                                     "reads standard input): battery_id, both "
                                                     "formulas, working_ion, both crystal systems; the space groups if "
                                                     "the run used them, the DFT fields for model2 variants; MP's "
                                                     "adj_pairs, if given, make the ion counts exact")
        sub.add_argument("-o", "--output", type=Path, required=True,
                         help="CSV to write (atomically; compressed when named .gz, .bz2 or .xz); - writes "
                              "it to standard output once every row is scored, and --skip-bad's rejected rows "
                              "to stderr")
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
        from electrode_ml import candidates  # the scoring stack: see the module docstring

        frame, where = read_candidates(args.input)
        predictions, rejects = candidates.score(frame, where, args.model, args.results, args.skip_bad,
                                                args.precision)
        if args.command == "screen":
            if args.ion:
                predictions = predictions[predictions["working_ion"] == args.ion]
            thresholds = {name: getattr(args, name) for name in CRITERIA}
            predictions = predictions.assign(
                passes=candidates.passes(predictions, thresholds),
                passes_at_pi_low=candidates.passes(predictions, thresholds, column="pi_low"))
            candidates.report_screen(predictions)
        write_outputs(predictions, rejects, args.output)
    except InputError as error:
        print(f"electrode-ml: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
