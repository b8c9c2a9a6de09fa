"""Loading the electrode table and refusing (or counting) rows that later stages could not trust."""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import logging
import lzma
import math
import re
import zlib
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from electrode_ml.chemistry import insertion_problem, parse_formula, per_framework_unit
from electrode_ml.errors import InputError
from electrode_ml.mp_documents import emmet_ion_count
from electrode_ml.schema import CRYSTAL_SYSTEMS, ELECTRODE_COLUMNS, WORKING_IONS

log = logging.getLogger(__name__)

FORMULA_FIELDS = ("formula_charge", "formula_discharge", "framework_formula")
END_FORMULAS = ["formula_charge", "formula_discharge"]
NUMERIC_FIELDS = tuple(name for name, dtype in ELECTRODE_COLUMNS.items() if dtype in ("float64", "int64"))
SPACE_GROUP_FIELDS = ("charge_space_group_number", "discharge_space_group_number")
# Counts read as float (a missing one is NaN) and are cast to integers once checked.
COUNT_FIELDS = ("num_steps",)
MISSING_TEXT = ("", "nan", "na", "n/a", "null", "none")
CRYSTAL_SYSTEM_FIELDS = ("charge_crystal_system", "discharge_crystal_system")
# A band gap and an energy above the hull are never negative (the snapshot's smallest are 0).
NON_NEGATIVE_FIELDS = ("charge_band_gap", "discharge_band_gap", "stability_charge", "stability_discharge")
# An electrode stores charge: a capacity is positive (the snapshot's smallest 5.2 mAh/g). A negative
# target would train the networks on nothing any electrode does.
POSITIVE_FIELDS = ("capacity_grav", "capacity_vol")
# Identifiers a row is traced back to MP by; a blank one is a broken export.
IDENTIFIER_FIELDS = ("battery_formula", "id_charge", "id_discharge")
FLOAT32_MAX = float(np.finfo(np.float32).max)
PAIR_FORMULA = re.compile(r"formula_(?:dis)?charge='([^']+)'")
PAIR_START = "formula_charge='"  # one per voltage pair
PAIR_END_START = "formula_discharge='"
# how an end member's ion count was off where the voltage pairs made it exact
REPAIRS = ("rounded", "truncated")


@dataclass(frozen=True)
class BadRow:
    battery_id: str
    field: str
    reason: str
    row: int  # 0-based row of the checked frame: rows without a usable id are found by it
    line: int | None = None  # the row's line in its file (a download has none): what an editor shows

    def __str__(self) -> str:
        place = f"line {self.line}" if self.line is not None else f"row {self.row + 1}"
        return f"battery_id={self.battery_id!r} ({place}), field {self.field!r}: {self.reason}"


def source_lines(frame: pd.DataFrame) -> np.ndarray | None:
    """The file line of each row of a frame :func:`parse_electrode_csv` read, or None (a download)."""
    return frame.index.to_numpy() if frame.index.name == "line" else None


def located(bad: list[BadRow], lines: np.ndarray | None) -> list[BadRow]:
    """``bad`` in the order of its rows (a refusal names the first in the file, whatever check found
    it), with each row's file line where the rows came from a file."""
    bad = sorted(bad, key=lambda row: row.row)
    if lines is None:
        return bad
    return [replace(row, line=int(lines[row.row])) for row in bad]


@dataclass
class DataReport:
    """What went in, what came out, and why rows were left behind."""

    source: str
    rows_in: int = 0
    rows_out: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    bad_rows: list[str] = field(default_factory=list)
    rows_per_ion: dict[str, int] = field(default_factory=dict)
    formulas_made_exact: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "source": self.source,
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "rows_per_ion": self.rows_per_ion,
            "dropped": self.dropped,
            "bad_rows": self.bad_rows,
            "formulas_made_exact": self.formulas_made_exact,
        }


def read_electrode_csv(path: str | Path) -> pd.DataFrame:
    """Read a CSV of electrodes as text; typing happens in :func:`coerce_types` so errors can name rows."""
    path = Path(path)
    try:
        if path.is_dir():
            raise InputError(f"{path}: a folder, not a CSV file")
        if not path.exists():
            raise InputError(f"{path}: file not found")
        data = path.read_bytes()  # a named pipe or /dev/stdin too, not only a regular file
    except OSError as error:  # no permission, a name too long
        raise InputError(f"{path}: cannot read ({error.strerror or error})") from None
    return parse_electrode_csv(data, str(path))


def parse_electrode_csv(data: bytes, where: str) -> pd.DataFrame:
    """:func:`read_electrode_csv` on a CSV's bytes, whatever they came from (a file, standard
    input), gzip, bzip2 or xz compressed or not; ``where`` names that source in the errors.

    The frame's index, named ``line``, is the line of the file each row starts on
    (:func:`csv_layout`), so that an error can point an editor at it."""
    data = decompressed(data, where)
    excel_hint = re.match(rb"(?:\xef\xbb\xbf)?sep=(.)\r?\n", data)
    if excel_hint:  # Excel writes it on request; read as the header it put every value one column off
        raise InputError(f"{where}: line 1 is Excel's separator hint ({excel_hint.group(0).strip().decode(errors='replace')}"
                         "), not the header; delete that line")
    header = data.split(b"\n", 1)[0]
    other = None if b"," in header else next((mark for mark in ";\t|" if mark.encode() in header), None)
    if other:  # else the commas inside adj_pairs made pandas' complaint about field counts the message
        raise InputError(f"{where}: the header separates its columns with {other!r}, not commas; write the file "
                         "as comma-separated values")
    try:
        frame = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{where}: not UTF-8 text ({_first_non_utf8(data)})") from None
    except pd.errors.EmptyDataError:
        raise InputError(f"{where}: empty file, expected a header row and electrodes") from None
    except pd.errors.ParserError as exc:
        raise InputError(f"{where}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    if frame.empty:
        raise InputError(f"{where}: no rows after the header")
    header, lines = csv_layout(data)
    if not isinstance(frame.index, pd.RangeIndex):  # pandas took the first column for an index
        raise InputError(f"{where}: every row has more fields than the header's {len(header)} (a comma at the "
                         "end of each row?): the values would land in the wrong columns") from None
    # pandas renames a second `average_voltage` to `average_voltage.1`, which then went unread
    repeated = sorted(name for name, count in Counter(header).items() if count > 1)
    if repeated:
        raise InputError(f"{where}: column(s) {', '.join(repeated)} appear more than once in the header")
    # else pandas and the csv module split some line differently: errors number the rows instead
    if lines is not None and len(lines) == len(frame):
        frame.index = pd.Index(lines, name="line")
    if not data.endswith(b"\n"):  # a copy cut inside its last value reads as a shorter value, silently
        log.warning("%s: the last line has no line end; if the file was cut short, its last row (%s) is "
                    "incomplete", where, f"battery_id {frame.iloc[-1].get('battery_id', '?')!r}"
                    + (f", line {frame.index[-1]}" if frame.index.name == "line" else ""))
    return frame


# magic bytes -> (name, decompress, its errors)
COMPRESSIONS = {
    b"\x1f\x8b": ("gzip", gzip.decompress, (OSError, EOFError, zlib.error)),
    b"BZh": ("bzip2", bz2.decompress, (OSError, ValueError, EOFError)),
    b"\xfd7zXZ\x00": ("xz", lzma.decompress, (lzma.LZMAError, EOFError)),
}


def decompressed(data: bytes, where: str) -> bytes:
    """``data`` decompressed when it starts as a gzip, bzip2 or xz stream does (``electrode-ml predict
    candidates.csv.gz``, or a pipe), else as it is: read by its bytes, not its name, as stdin has none."""
    for magic, (name, decompress, errors) in COMPRESSIONS.items():
        if data.startswith(magic):
            try:
                return decompress(data)
            except errors as exc:
                reason = str(exc) or "truncated"
                raise InputError(f"{where}: {name}-compressed but cannot be decompressed ({reason})") from None
    return data


def csv_layout(data: bytes) -> tuple[list[str], np.ndarray | None]:
    """A CSV's header, and the 1-based line on which each row after it starts, skipping blank and
    whitespace-only lines as pandas does (a quoted field may span lines); the lines are None where
    the csv module cannot read what pandas did (a field over its size limit)."""
    reader = csv.reader(io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", newline=""))
    header, starts, end = None, [], 0
    try:
        for record in reader:
            if record and not (len(record) == 1 and not record[0].strip(" \t")):
                if header is None:
                    header = record
                else:
                    starts.append(end + 1)
            end = reader.line_num
    except csv.Error:
        return header or [], None
    return header or [], np.asarray(starts, dtype=np.int64)


def _first_non_utf8(data: bytes) -> str:
    """Where the first byte that is no UTF-8 sits (pandas decodes in chunks: its offset is the chunk's)."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return f"byte {exc.start} of the file, line {line}"
    return "a byte pandas could not decode"


def require_columns(frame: pd.DataFrame, columns, where: str) -> None:
    missing = [name for name in columns if name not in frame.columns]
    if missing:
        raise InputError(f"{where}: missing column(s) {', '.join(missing)}")


def coerce_types(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[BadRow]]:
    """Cast each column to the schema dtype, collecting the rows whose text is not a number."""
    frame = frame.copy()
    ids = frame["battery_id"].astype(str)
    bad: list[BadRow] = []
    for name in present(frame, NUMERIC_FIELDS):
        text = frame[name].astype(str)
        missing = text.str.strip().str.lower().isin(MISSING_TEXT)
        values = pd.to_numeric(text.where(~missing), errors="coerce")
        for idx in frame.index[values.isna() & ~missing]:
            bad.append(BadRow(ids[idx], name, f"not a number: {text[idx]!r}", idx))
        for idx in frame.index[missing]:
            bad.append(BadRow(ids[idx], name, "missing value", idx))
        frame[name] = values.astype("float64")
    return frame, bad


def refusal(bad: list[BadRow], where: str, hint: str = "") -> InputError:
    """One line: the first problem, and how many more there are."""
    more = f" (and {len(bad) - 1} more problem(s){hint})" if len(bad) > 1 else ""
    return InputError(f"{where}: {bad[0]}{more}")


def present(frame: pd.DataFrame, names) -> list[str]:
    return [name for name in names if name in frame.columns]


def find_bad_rows(frame: pd.DataFrame) -> list[BadRow]:
    """Every row/field that breaks the contract in DESIGN.md (after numeric coercion).

    Only the columns present are checked, so candidate files without targets validate too.
    """
    ids = frame["battery_id"].astype(str)
    bad: list[BadRow] = []

    for name in present(frame, NUMERIC_FIELDS):
        values = frame[name].to_numpy(dtype=float)
        for idx in frame.index[np.isinf(values)]:
            bad.append(BadRow(ids[idx], name, "infinite value", idx))
        # the networks compute in float32, where such a value is inf and its prediction arbitrary
        for idx in frame.index[np.isfinite(values) & (np.abs(values) > FLOAT32_MAX)]:
            bad.append(BadRow(ids[idx], name, f"{values[idx]:g} is beyond the range of 32-bit floats "
                                              f"(+-{FLOAT32_MAX:.3g}), which the networks compute in", idx))
    for name in present(frame, NON_NEGATIVE_FIELDS):
        for idx in frame.index[frame[name] < 0]:
            bad.append(BadRow(ids[idx], name, f"negative value {frame[name][idx]:g} (0 or more by definition)", idx))
    for name in present(frame, POSITIVE_FIELDS):
        for idx in frame.index[frame[name] <= 0]:
            bad.append(BadRow(ids[idx], name, f"{frame[name][idx]:g} is not positive (an electrode stores charge)", idx))
    for name in present(frame, COUNT_FIELDS):
        values = frame[name]
        for idx in frame.index[values.notna() & ((values < 1) | (values != values.round()))]:
            bad.append(BadRow(ids[idx], name, f"{values[idx]:g} is not a whole number of 1 or more", idx))
    if {"num_steps", "adj_pairs"} <= set(frame.columns):
        bad += step_problems(frame, ids)
    for name in present(frame, SPACE_GROUP_FIELDS):
        values = frame[name]
        out_of_range = values.notna() & ((values < 1) | (values > 230) | (values != values.round()))
        for idx in frame.index[out_of_range]:
            bad.append(BadRow(ids[idx], name, f"space group {values[idx]:g} is not an integer in 1..230", idx))
    for name in present(frame, CRYSTAL_SYSTEM_FIELDS):
        unknown = ~frame[name].isin(CRYSTAL_SYSTEMS)
        for idx in frame.index[unknown]:
            bad.append(BadRow(ids[idx], name, f"unknown crystal system {frame[name][idx]!r} (one of "
                                              f"{', '.join(CRYSTAL_SYSTEMS)})", idx))
    for name in present(frame, ("working_ion",)):
        for idx in frame.index[~frame[name].isin(WORKING_IONS)]:
            bad.append(BadRow(ids[idx], name, f"unknown working ion {frame[name][idx]!r} (one of "
                                              f"{', '.join(WORKING_IONS)})", idx))
    for name in present(frame, FORMULA_FIELDS):
        for idx, formula in frame[name].items():
            try:
                parse_formula(formula)
            except InputError as exc:
                bad.append(BadRow(ids[idx], name, str(exc), idx))
    for name in present(frame, IDENTIFIER_FIELDS):
        for idx in frame.index[frame[name].astype(str).str.strip().str.lower().isin(MISSING_TEXT)]:
            bad.append(BadRow(ids[idx], name, "missing value", idx))
    for idx in frame.index[ids.str.strip().str.lower().isin(MISSING_TEXT)]:
        bad.append(BadRow(ids[idx], "battery_id", "empty id" if not ids[idx].strip() else
                          f"no id: {ids[idx].strip()!r} is how tables write a missing value", idx))
    # which copy of a duplicated id is right is unknown, so every copy is bad; `mp-1 ` is `mp-1`
    duplicated = ids.str.strip().duplicated(keep=False) & ids.str.strip().ne("")
    for idx in frame.index[duplicated]:
        bad.append(BadRow(ids[idx], "battery_id", "duplicate id", idx))
    return bad


def step_problems(frame: pd.DataFrame, ids: pd.Series) -> list[BadRow]:
    """Rows whose voltage pairs (``adj_pairs``, one per step) are unreadable or disagree with
    ``num_steps``: every row of the snapshot and of a download holds one pair per step."""
    problems = ((idx, pair_problem(str(pairs), steps))
                for idx, pairs, steps in zip(frame.index, frame["adj_pairs"], frame["num_steps"]))
    return [BadRow(ids[idx], *problem, idx) for idx, problem in problems if problem]


def pair_problem(pairs: str, steps: float | None = None) -> tuple[str, str] | None:
    """(the field at fault, why) when one row's voltage pairs (MP's ``adj_pairs`` text) are no
    whole list of pairs or, where ``steps`` is known, not one pair per step."""
    count = pairs.count(PAIR_START)
    if count == 0:
        return "adj_pairs", ("no voltage pair in it (MP's InsertionVoltagePairDoc(..., formula_charge='...', "
                             "formula_discharge='...', ...) text)")
    # a text cut short still held a pair or two: the ion counts would have come from those
    if pairs.count(PAIR_END_START) != count:
        return "adj_pairs", (f"cut short or damaged: {count} formula_charge but {pairs.count(PAIR_END_START)} "
                             "formula_discharge (MP's text names both in every voltage pair)")
    if not pairs.rstrip().endswith(")]"):
        return "adj_pairs", "cut short or damaged: it does not end in ')]' (MP's text is a whole list of voltage pairs)"
    if steps is not None and not pd.isna(steps) and steps != count:
        return "num_steps", f"{steps:g} steps, but adj_pairs holds {count} voltage pair(s), one per step"
    return None


def not_insertions(electrodes: pd.DataFrame, unreadable: set[int]) -> list[BadRow]:
    """Rows whose formulas parse but describe no insertion of their ion (:func:`insertion_problem`);
    ``unreadable`` rows already have a bad formula or ion."""
    bad = []
    readable = electrodes.loc[electrodes.index.difference(sorted(unreadable))]
    # itertuples, not a .loc per row: that took 1.5 s of 9.6 s for 20,000 candidates
    for electrode in readable.itertuples():
        problem = insertion_problem(electrode.formula_charge, electrode.formula_discharge, electrode.working_ion)
        if problem:
            bad.append(BadRow(str(electrode.battery_id), *problem, electrode.Index))
    return bad


def unreadable_rows(bad: list[BadRow]) -> set[int]:
    """The rows whose formulas, ion or voltage pairs cannot be read: the chemistry checks skip them."""
    return {row.row for row in bad if row.field in (*FORMULA_FIELDS, "working_ion", "adj_pairs")}


def validate_electrodes(
    frame: pd.DataFrame,
    *,
    ions: list[str],
    voltage_window: tuple[float, float],
    on_bad_row: str = "error",
    source: str = "snapshot",
    where: str = "input",
    exact_formulas: bool = False,
) -> tuple[pd.DataFrame, DataReport]:
    """Type, check and filter an electrode table; return the clean table and a report of what was dropped.

    Bad rows stop everything with one line naming the first of them in the file
    (``on_bad_row='error'``) or are dropped and counted (``'drop'``). Rows of ions outside ``ions``
    and voltages outside the open ``voltage_window`` are not errors: they are the configured
    selection, and are counted separately.

    ``exact_formulas`` takes the end members' ion counts from the voltage pairs
    (:func:`repaired_end_formulas`) and then refuses rows whose formulas describe no insertion of
    their ion (swapped ends, the ion in neither formula, two hosts): none of the snapshot's does
    once its counts are exact, while 22 of MP's rounded formulas do, so as written they are not checked.
    """
    require_columns(frame, ELECTRODE_COLUMNS, where)
    report = DataReport(source=source, rows_in=len(frame))
    lines = source_lines(frame)
    frame = frame[list(ELECTRODE_COLUMNS)].reset_index(drop=True)
    frame, bad = coerce_types(frame)
    bad += find_bad_rows(frame)
    repairs = None
    if exact_formulas:
        unreadable = unreadable_rows(bad)
        frame, repairs = with_exact_ion_counts(frame, unreadable)
        bad += not_insertions(frame, unreadable)
    bad = located(bad, lines)

    if bad:
        if on_bad_row == "error":
            raise refusal(bad, where)
        bad_rows = sorted({row.row for row in bad})
        rows_per_field = Counter(field for field, _ in {(f"bad {row.field}", row.row) for row in bad})
        report.dropped.update({"bad rows": len(bad_rows), **dict(sorted(rows_per_field.items()))})
        report.bad_rows = [str(row) for row in bad]
        log.warning("dropping %d bad row(s); first: %s", len(bad_rows), bad[0])
        frame = frame.drop(index=bad_rows)

    selected_ion = frame["working_ion"].isin(ions)
    report.dropped["working ion not selected"] = int((~selected_ion).sum())
    frame = frame[selected_ion]
    low, high = voltage_window
    inside = frame["average_voltage"].gt(low) & frame["average_voltage"].lt(high)
    report.dropped["average_voltage outside window"] = int((~inside).sum())
    frame = frame[inside]

    if repairs is not None:
        report.formulas_made_exact = repair_counts(repairs.loc[frame.index])
    frame = frame.astype(ELECTRODE_COLUMNS).reset_index(drop=True)
    report.rows_out = len(frame)
    report.rows_per_ion = {ion: int(n) for ion, n in frame["working_ion"].value_counts().items()}
    if frame.empty:
        raise InputError(f"{where}: no electrodes left after validation and filtering ({report.dropped})")
    return frame, report


def exact_ion_counts(adj_pairs: str, working_ion: str) -> tuple[float, float, str] | None:
    """(ion per framework unit of the most charged and the most discharged end member, framework).

    The voltage pairs carry MP's exact reduced formulas; None when the text names no formula or
    the steps do not share one framework (then the row's own formulas are kept).
    """
    counts, frameworks = [], set()
    for formula in PAIR_FORMULA.findall(adj_pairs):
        try:
            count, framework = per_framework_unit(formula, working_ion)
        except InputError:
            return None
        counts.append(count)
        frameworks.add(framework.reduced_formula)
    if not counts or len(frameworks) != 1:
        return None
    return min(counts), max(counts), frameworks.pop()


def exact_end_formulas(electrodes: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """The end-member formulas with the working-ion count taken from the voltage pairs.

    MP's electrode formulas (``formula_charge``, ``formula_discharge``, written by emmet) round the
    ion count to two decimals and strip trailing zeros after it, so ``Li10Ti3Mn5O16`` reads
    ``Li1Ti3Mn5O16``. On the snapshot 43 counts are truncated and 241 rounded; stoichiometric
    capacity then misses the stored capacity by over 1 mAh/g for 95 rows, and by under 1e-6 mAh/g
    for every row once the counts are exact. Only the ion count is replaced, and only where the
    pairs describe the same framework, the formula is written per one reduced framework unit, and
    the count as written is what emmet writes for the exact one (:func:`emmet_ion_count`): a count
    that disagrees otherwise (swapped ends, another range, another unit) is not MP's rounding and
    stays for the checks to judge. The framework text stays as written.
    """
    exact, repairs = repaired_end_formulas(electrodes)
    return exact, repair_counts(repairs)


def repaired_end_formulas(electrodes: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`exact_end_formulas`, and per row and end member how its count was off ('rounded',
    'truncated'; 'other host' where the pairs describe another framework; '' otherwise, kept as
    written), so that counts can be taken over the rows kept, and the pairs' one framework
    (``pairs_host``; '' where they describe none)."""
    electrodes = electrodes.copy()
    exact = [exact_ion_counts(pairs, ion) for pairs, ion in zip(electrodes["adj_pairs"], electrodes["working_ion"])]
    repairs = pd.DataFrame({"pairs_host": [pairs[2] if pairs else "" for pairs in exact]}, index=electrodes.index)
    for end, name in enumerate(END_FORMULAS):
        repaired = [_exact_end_formula(formula, ion, pairs, end)
                    for formula, ion, pairs in zip(electrodes[name], electrodes["working_ion"], exact)]
        electrodes[name] = [formula for formula, _ in repaired]
        repairs[name] = [kind for _, kind in repaired]
    return electrodes, repairs


def repair_counts(repairs: pd.DataFrame) -> dict[str, int]:
    """How many end-member counts :func:`repaired_end_formulas` made exact, by end and kind."""
    counts = Counter(f"{name}: ion count {kind}" for name in END_FORMULAS for kind in repairs[name]
                     if kind in REPAIRS)
    return dict(sorted(counts.items()))


def with_exact_ion_counts(electrodes: pd.DataFrame, unreadable: set[int]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``electrodes`` with the ion counts of the rows not ``unreadable`` (a bad formula, ion or
    voltage pairs) made exact, and those rows' repairs (:func:`repaired_end_formulas`)."""
    readable = electrodes.index.difference(sorted(unreadable))
    exact, repairs = repaired_end_formulas(electrodes.loc[readable])
    electrodes = electrodes.copy()
    electrodes.loc[readable, END_FORMULAS] = exact[END_FORMULAS]
    return electrodes, repairs


def _exact_end_formula(formula: str, ion: str, pairs: tuple[float, float, str] | None, end: int) -> tuple[str, str]:
    """One end member's formula with the pairs' exact ion count (``end`` 0 charged, 1 discharged) where
    MP's writing explains the difference, and how the count was off: 'rounded', 'truncated', or, where
    the formula is kept as written, 'other host' (the pairs describe another framework) or ''."""
    if pairs is None:
        return formula, ""
    try:
        per_unit, framework = per_framework_unit(formula, ion)
    except InputError:  # no framework besides the ion: left for the checks to refuse
        return formula, ""
    if framework.reduced_formula != pairs[2]:  # however the formula is written (FePO4Li too)
        return formula, "other host"
    written = re.fullmatch(rf"{ion}(\d+(?:\.\d*)?)(.+)", formula)
    if written is None:  # not MP's writing: no rounding of MP's to undo
        return formula, ""
    given, true = float(written[1]), pairs[end]
    if (written[1] != emmet_ion_count(true)
            or not math.isclose(per_unit, given) or abs(given - true) <= 1e-9 * max(1.0, true)):
        return formula, ""
    kind = "rounded" if abs(given - true) <= 0.005 + 1e-9 else "truncated"
    return f"{ion}{true:.10g}{written[2]}", kind


def prepare_electrodes(raw: pd.DataFrame, settings: dict, *, source: str = "snapshot",
                       where: str = "input") -> tuple[pd.DataFrame, DataReport]:
    """The workflow's electrodes from raw rows, as the ``data`` section of the config asks:
    validated and filtered, with exact ion counts when ``exact_formulas`` is set."""
    electrodes, report = validate_electrodes(
        raw, ions=settings["ions"], voltage_window=tuple(settings["voltage_window"]),
        on_bad_row=settings["on_bad_row"], source=source, where=where, exact_formulas=settings["exact_formulas"],
    )
    log.info("kept %d electrodes; dropped %s", len(electrodes), report.dropped)
    if settings["exact_formulas"]:
        log.info("ion counts made exact from the voltage pairs: %s", report.formulas_made_exact)
    return electrodes, report
