"""`electrode-ml predict` and `electrode-ml screen`: score new materials with a trained ensemble.

This module is the command line and its I/O; the scoring (candidates.py) and with it torch,
scikit-learn and pymatgen load only once the arguments are read, so that `--help`, `--version`
and a mistyped option answer at once instead of after two seconds of imports."""

from __future__ import annotations

import argparse
import bz2
import io
import logging
import lzma
import math
import os
import re
import stat
import sys
import warnings
import zlib
from contextlib import ExitStack
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from electrode_ml.errors import InputError
from electrode_ml.models import KNOWN_MODELS
from electrode_ml.schema import CRITERIA, DEFAULT_NA_THRESHOLDS, PLAUSIBLE_VOLTAGE_TEXT, UNITS, WORKING_IONS

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("electrode_ml.cli")

OUTPUT_COLUMNS = ("Output per candidate: for each target (average_voltage, capacity_grav, energy_grav) _mean, "
                  "_std, the paper's CI of the mean (_ci_low, _ci_high), the calibrated 95 % interval (_pi_low, "
                  "_pi_high) and _source (physics or network); physics_note (physics models: why the physics "
                  "did not apply); unseen_elements (elements no training formula held: the networks cannot see "
                  "them); unseen_space_groups (runs with features.space_groups: the space groups no training "
                  "electrode had, as charge:N discharge:N); composition_outside_training (elements whose share of "
                  "a formula lies outside the training formulas' range, as discharge:Na); dft_outside_training "
                  "(model2 variants: DFT fields "
                  "outside the training range); "
                  "implausible_values (targets whose mean no electrode can have: voltage outside "
                  f"{PLAUSIBLE_VOLTAGE_TEXT}, capacity below 0).")


# OUTPUT suffixes (in any case) written compressed, as the input side reads them back. The
# compressors are those of the one-shot functions (gzip.compress(data, mtime=0) is zlib's with
# wbits 31: no file name, no time), fed a block at a time, so one table gives the same bytes as
# those functions would. Formats pandas would also infer from a name are refused.
COMPRESSORS = {".gz": lambda: zlib.compressobj(9, zlib.DEFLATED, 31), ".bz2": bz2.BZ2Compressor,
               ".xz": lzma.LZMACompressor}
REFUSED_SUFFIXES = (".zst", ".zip", ".tar", ".tgz", ".tbz2", ".txz")


def refused_suffix(output: Path) -> str | None:
    """OUTPUT's suffix where it names what is not written (another compressor, an archive; a
    compressed archive too: `.tar.gz` became a gzipped CSV), else None."""
    suffix = output.suffix.lower()
    if suffix in COMPRESSORS and Path(output.stem).suffix.lower() == ".tar":
        return output.suffixes[-2] + output.suffix
    return output.suffix if suffix in REFUSED_SUFFIXES else None


def rejects_path(output: Path) -> Path:
    """out.csv -> out.rejects.csv, out.csv.gz -> out.rejects.csv.gz: compressed as OUTPUT is."""
    packed = output.suffix if output.suffix.lower() in COMPRESSORS else ""
    plain = output.with_suffix("") if packed else output
    return output.with_name(plain.stem + ".rejects.csv" + packed)


def _holds(path: Path, test) -> bool:
    """``test(path)`` (Path.exists, Path.is_dir), False where the name is too long for any file to
    be there: OUTPUT may take up to 255 characters, its rejects file's name is 8 longer."""
    try:
        return test(path)
    except OSError:
        return False


def is_stream(path: str) -> bool:
    """``-`` as INPUT or OUTPUT: standard input or standard output, for a pipe (``./-`` is a file)."""
    return path == "-"


_DESCRIPTOR_PATH = re.compile(r"/(?:dev|proc/self)/fd/(\d{1,9})")  # longer: no descriptor, a path like any other


def open_descriptor(output: str) -> int | None:
    """The open descriptor OUTPUT names (``/dev/stdout``, ``/dev/fd/N``, ``/proc/self/fd/N``), or None.

    Written through the descriptor, as the shell opened it: opened again by name, a regular file
    behind it (``> out.csv``, ``>> log.csv``) was replaced, losing what the shell had appended, and
    its rejects went to a file beside it instead of stderr.
    """
    match = _DESCRIPTOR_PATH.fullmatch(output)
    descriptor = {"/dev/stdout": 1, "/dev/stderr": 2}.get(output, int(match.group(1)) if match else None)
    if descriptor is None:
        return None
    try:
        os.fstat(descriptor)
    except OSError:  # not open here: the name is written as a path, and the write says why
        return None
    return descriptor


def descriptor_file(descriptor: int) -> Path | None:
    """The regular file behind an open descriptor (``> out.csv.gz``), or None (a pipe, a terminal):
    its name says how to compress, and it must not be the input."""
    try:
        if stat.S_ISREG(os.fstat(descriptor).st_mode):
            return Path(os.readlink(f"/proc/self/fd/{descriptor}"))
    except OSError:
        pass
    return None


def check_descriptor_output(output: str, descriptor: int, input_path: str) -> None:
    """A descriptor OUTPUT (``-``, ``/dev/stdout``) redirected into the input file would write into
    it (``>> candidates.csv``): as a named OUTPUT over the input is, it is refused; so is a file
    behind it whose name asks for what is not written (``> out.zip``)."""
    if is_stream(output) and sys.stdout is None:  # `>&-`: there is nowhere to write
        raise InputError("OUTPUT -: standard output is closed; name a CSV file")
    target = descriptor_file(descriptor) if not is_stream(output) else None
    if target is not None and (refused := refused_suffix(target)):
        raise InputError(f"{output}: writes into {target}, and {refused} is not written; redirect it to a .csv, "
                         "or a .csv.gz, .csv.bz2 or .csv.xz to compress it")
    if is_stream(input_path):
        return
    try:
        written, read = os.fstat(descriptor), os.stat(input_path)
    except OSError:  # the input's own error comes when it is read
        return
    if stat.S_ISREG(written.st_mode) and (written.st_dev, written.st_ino) == (read.st_dev, read.st_ino):
        raise InputError(f"{output}: the shell redirected it into the input {input_path}; write elsewhere")


def is_special_file(path: Path) -> bool:
    """An existing OUTPUT that is no regular file (a named pipe, a device such as ``/dev/null``):
    written straight through, as there is no file to replace atomically."""
    try:
        mode = path.stat().st_mode  # through symbolic links
    except OSError:  # none there (or a file in the path): the write says why, if it cannot be
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def read_candidates(input_path: str) -> tuple[pd.DataFrame, str]:
    """The candidates as text, and the name errors give their source: the path, or standard input."""
    from electrode_ml.data import parse_electrode_csv, read_electrode_csv

    if not is_stream(input_path):
        return read_electrode_csv(input_path), input_path
    if sys.stdin is None or sys.stdin.isatty():
        # reading would wait for a CSV typed at the terminal
        raise InputError("INPUT - reads standard input, which is a terminal here; pipe a CSV in "
                         "(cat candidates.csv | electrode-ml predict - ...) or name the file")
    return parse_electrode_csv(sys.stdin.buffer.read(), "standard input"), "standard input"


def check_output(output: str, input_path: str) -> None:
    """Refuse, before any scoring, an output that would overwrite the input or cannot be a file."""
    descriptor = 1 if is_stream(output) else open_descriptor(output)
    if descriptor is not None:
        check_descriptor_output(output, descriptor, input_path)
        return
    if not output.strip():
        raise InputError("OUTPUT is empty; name a CSV file, or - for standard output")
    path = Path(output)
    if path.is_dir() or output.endswith(("/", os.sep)):  # Path drops the slash: newdir/ became a file newdir
        raise InputError(f"{output}: a folder; OUTPUT must be a CSV file path")
    if refused := refused_suffix(path):
        raise InputError(f"{output}: {refused} is not written; name OUTPUT .csv, or .csv.gz, .csv.bz2 or .csv.xz "
                         "to compress it")
    if is_special_file(path):
        return  # its rejects go to stderr (write_outputs)
    for written, what in ((path, "OUTPUT"), (rejects_path(path), "OUTPUT's rejects file")):
        if not is_stream(input_path) and written.resolve() == Path(input_path).resolve():
            raise InputError(f"{output}: {what} would overwrite the input {input_path}; write elsewhere")
    if _holds(rejects_path(path), Path.is_dir):
        raise InputError(f"{rejects_path(path)}: a folder where OUTPUT's rejects file goes; move it or name OUTPUT "
                         "otherwise")


class _Compressing(io.RawIOBase):
    """A write-only stream compressing into ``handle``. Unlike GzipFile, its flush leaves the
    compressor alone: a flush there ends a deflate block, and the bytes were no longer gzip.compress's."""

    def __init__(self, handle: BinaryIO, compressor):
        self.handle, self.compressor = handle, compressor

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.handle.write(self.compressor.compress(data))
        return len(data)


def write_table(table: pd.DataFrame, handle: BinaryIO, output: Path) -> None:
    """The CSV to a binary ``handle``, compressed as OUTPUT's suffix says, a block of rows at a time:
    200,000 candidates' table as one string and then its bytes took `predict`'s peak from 797 to
    870 MB. ``handle`` stays open."""
    new_compressor = COMPRESSORS.get(output.suffix.lower())
    compressor = new_compressor() if new_compressor else None
    text = io.TextIOWrapper(_Compressing(handle, compressor) if compressor else handle, encoding="utf-8", newline="")
    table.to_csv(text, index=False)
    text.flush()
    text.detach()
    if compressor:
        handle.write(compressor.flush())


def encoded(table: pd.DataFrame, output: Path) -> bytes:
    """The CSV's bytes, compressed as OUTPUT's suffix says, for a stream written in one piece."""
    buffer = io.BytesIO()
    write_table(table, buffer, output)
    return buffer.getvalue()


def write_outputs(predictions: pd.DataFrame, rejects: pd.DataFrame, output: str) -> None:
    """OUTPUT, and beside it the rejects file or, where OUTPUT is a stream, the rejects on stderr."""
    from electrode_ml.fileio import atomic_path

    if is_stream(output):
        write_stream(encoded(predictions, Path("-")), len(predictions), rejects, sys.stdout.buffer, "standard output")
        return
    path = Path(output)
    if (descriptor := open_descriptor(output)) is not None:
        with os.fdopen(descriptor, "wb", closefd=False) as stream:
            write_stream(encoded(predictions, descriptor_file(descriptor) or path), len(predictions), rejects, stream,
                         output)
        return
    if is_special_file(path):
        with open(path, "wb") as stream:
            write_stream(encoded(predictions, path), len(predictions), rejects, stream, output)
        return
    path = path.resolve() if path.is_symlink() else path  # a link to a file: the file is replaced
    stale = rejects_path(path)
    pending = [*([(rejects, stale)] if not rejects.empty else []), (predictions, path)]
    removed = False
    try:
        # Both tables are written to temporary files before either is renamed into place, so a write
        # that fails (a full disk, a name too long) leaves an earlier run's pair as it was; the
        # rejects are renamed first, since OUTPUT without them would read as every row scored.
        with ExitStack() as renames:
            for table, target in reversed(pending):  # the stack renames the last one entered first
                try:
                    with renames.enter_context(atomic_path(target)).open("wb") as handle:
                        write_table(table, handle, target)
                except OSError as error:
                    raise InputError(f"{target}: cannot write ({error.strerror or error})") from None
        if rejects.empty and _holds(stale, Path.exists):  # an earlier run's rejects would read as this run's
            stale.unlink()
            removed = True
    except OSError as error:  # a rename refused: the error names the temporary file, then the target
        raise InputError(f"{error.filename2 or error.filename or output}: cannot write ({error.strerror or error})") from None
    if not rejects.empty:
        log.warning("%d row(s) rejected; reasons in %s", rejects["row"].nunique(), stale)
    elif removed:
        log.info("removed %s, an earlier run's rejects (this run rejected no row)", stale)
    log.info("wrote %d prediction(s) to %s", len(predictions), output)


def write_stream(table: bytes, rows: int, rejects: pd.DataFrame, stream, name: str) -> None:
    """The table to a stream in one write, once every row is scored, so that an error leaves the
    pipe empty rather than half a table; a rejected row is a warning line on stderr (with the rows
    and reasons a rejects file would hold)."""
    import pandas as pd

    for reject in rejects.itertuples(index=False):
        place = f"row {reject.row}" if pd.isna(reject.line) else f"line {reject.line} (row {reject.row})"
        log.warning("rejected %s, battery_id %r, field %r: %s", place, reject.battery_id, reject.field, reject.reason)
    if not rejects.empty:
        log.warning("%d row(s) rejected", rejects["row"].nunique())
    try:
        stream.write(table)
        stream.flush()
    except BrokenPipeError:
        # the reader (head, a pager) stopped early; Python would otherwise report the closed
        # pipe again when it flushes stdout at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
        log.info("%s was closed before the whole table was read", name)
        return
    log.info("wrote %d prediction(s) to %s", rows, name)


def threshold(text: str) -> float:
    """A screening threshold: a finite number, 0 or more (as the workflow's screen.* config)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of 0 or more, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """A count of epochs, threads or networks: a whole number, 1 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="electrode-ml", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('electrode-ml')}")
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub):
        sub.add_argument("input", help="CSV of candidate electrodes, gzip/bzip2/xz-compressed or not (- "
                                        "reads standard input): battery_id, both "
                                        "formulas, working_ion, both crystal systems; the space groups if "
                                        "the run used them, the DFT fields for model2 variants; MP's "
                                        "adj_pairs, if given, make the ion counts exact")
        sub.add_argument("-o", "--output", required=True,
                         help="CSV to write (atomically; compressed when named .gz, .bz2 or .xz); - writes "
                              "it to standard output once every row is scored, and --skip-bad's rejected rows "
                              "to stderr, as does a named pipe or device")
        sub.add_argument("--model", default="model1_phys", choices=KNOWN_MODELS, metavar="MODEL",
                         help=f"{', '.join(KNOWN_MODELS)} (default model1_phys: needs no DFT)")
        sub.add_argument("--results", type=Path, default=Path("results"), help="the workflow's results folder")
        sub.add_argument("--precision", choices=["float32", "bfloat16"], default="float32",
                         help="network arithmetic; bfloat16 was 1.5-4x faster on a CPU with AVX512-BF16 or AMX and moved "
                              "ensemble means by about 0.002-0.004 V / 0.3-0.4 mAh/g / 0.7-0.9 Wh/kg (make bench measures it)")
        sub.add_argument("--skip-bad", action="store_true",
                         help="write bad rows with their reason beside OUTPUT (out.csv -> out.rejects.csv; with -o -, "
                              "to stderr) and score the rest")

    common(commands.add_parser("predict", help="mean, paper CI and calibrated 95 %% interval per target",
                               epilog=OUTPUT_COLUMNS))
    screen = commands.add_parser("screen", help="predict, then apply the paper's thresholds (Table 5; with "
                                                 "--ion Na, its whole filter)",
                                 epilog=OUTPUT_COLUMNS + " screen adds passes and passes_at_pi_low, and names the "
                                        "passing candidates any of the five flags marks.")
    common(screen)
    screen.add_argument("--ion", choices=WORKING_IONS, metavar="ION",
                        help=f"keep only candidates of this working ion ({', '.join(WORKING_IONS)}; default all; "
                             f"the paper screened Na)")
    for name, what in (("voltage", "average voltage"), ("capacity", "capacity"), ("energy", "specific energy")):
        default = DEFAULT_NA_THRESHOLDS[name]
        screen.add_argument(f"--{name}", type=threshold, default=default,
                            help=f"minimum {what}, {UNITS[CRITERIA[name]]} (default {default:g})")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:  # from here a Ctrl-C is one line: the imports below take a second or so
        from electrode_ml.runner import setup_logging  # here: runner's imports reach pandas, which --help need not load

        setup_logging()
        # pymatgen orders a formula's elements by electronegativity and warns, three lines a time, that
        # a noble gas has none; the candidate is flagged for its unseen element anyway
        warnings.filterwarnings("ignore", message="No Pauling electronegativity", category=UserWarning)
        check_output(args.output, args.input)
        from electrode_ml import candidates  # the scoring stack: see the module docstring

        frame, where = read_candidates(args.input)
        screened_ion = args.ion if args.command == "screen" else None
        if screened_ion:
            frame, positions = candidates.of_ion(frame, screened_ion)
        predictions, rejects = candidates.score(frame, where, args.model, args.results, args.skip_bad,
                                                args.precision)
        if screened_ion:
            rejects = candidates.numbered_in_file(rejects, positions)
        if args.command == "screen":
            thresholds = {name: getattr(args, name) for name in CRITERIA}
            predictions = predictions.assign(
                passes=candidates.passes(predictions, thresholds),
                passes_at_pi_low=candidates.passes(predictions, thresholds, column="pi_low"))
            candidates.report_screen(predictions, ion=screened_ion)
        write_outputs(predictions, rejects, args.output)
    except InputError as error:
        print(f"electrode-ml: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a path the system refuses (too long, no permission): one line, too
        where = f"{error.filename}: " if error.filename else ""
        print(f"electrode-ml: error: {where}{error.strerror or error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("electrode-ml: interrupted; no output written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
