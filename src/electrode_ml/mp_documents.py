"""Materials Project documents turned into rows of the insertion-electrode snapshot, in its exact formats.

Plain functions of documents (dicts), with no client or network, kept apart from the download
(mp_download.py, mp_transport.py) so that a fresh download comes out in the snapshot's names, order,
dtypes and value formats (``schema.ELECTRODE_COLUMNS``) and later stages cannot tell the two apart.

Formats reproduced from the snapshot:

- ``battery_id`` is ``<id>_<ion>`` with ``<id>`` the smallest ``mp-`` material id of the electrode (the
  rule of emmet's ``InsertionElectrodeDoc.battery_id``, which the API no longer returns as a field).
- ``formula_charge``/``formula_discharge`` are written per framework formula unit with the ion count
  spelled out (``K0CrF6``, ``Li0.75TiO2``), the rule emmet uses to build ``battery_formula``.
- ``adj_pairs`` is the Python repr of the per-step ``InsertionVoltagePairDoc`` list with the snapshot's
  field order and ``MPID(mp-123)`` ids.
- Material ids are in the classic ``mp-123`` form; newer emmet/API builds use letter ids
  (``mp-aaaabcdl``) which `to_classic_id` converts back.

Electrodes left out on the way are named per reason (``DROP_REASONS``) in a ``dropped`` dict that the
download reports as its provenance's ``download_dropped``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from typing import Any

import pandas as pd

from electrode_ml.chemistry import per_framework_unit
from electrode_ml.errors import InputError
from electrode_ml.schema import ELECTRODE_COLUMNS, END_MEMBER_FIELDS

log = logging.getLogger(__name__)

# Why a downloaded electrode is left out (provenance "download_dropped"), in the order they are applied.
OTHER_ION = "working ion not asked for"
OTHER_ENERGIES = "electrode computed from energies other than GGA/GGA+U"
INCOMPLETE = "incomplete or malformed document"
OUTSIDE_WINDOW = "average_voltage outside window"
NO_END_MEMBER = "end member without summary properties or GGA/GGA+U energies"
DROP_REASONS = (OTHER_ION, OTHER_ENERGIES, INCOMPLETE, OUTSIDE_WINDOW, NO_END_MEMBER)
DROP_EXAMPLES = 5  # battery ids named per reason

# The thermo documents the end members' energies come from. MP's summary documents carry the energies of
# the GGA/GGA+U/r2SCAN mixing scheme (emmet's SummaryBuilder default, GGA_GGA+U_R2SCAN), while its
# insertion electrodes are built from GGA/GGA+U entries (emmet's electrode documents, thermo_type
# "GGA_GGA+U"): the voltage that model2_phys derives from the end members' energies holds only with the
# energies the electrode was computed from. They are also the snapshot's: from its end members' energies
# the physics fit reproduces every snapshot voltage to within 2e-7 V (mean error 3e-9 V).
THERMO_TYPE = "GGA_GGA+U"
ENERGY_FIELDS = ("energy_per_atom", "formation_energy_per_atom")

# Field order of one voltage step in the snapshot's adj_pairs repr.
PAIR_FIELDS = (
    "max_delta_volume", "average_voltage", "capacity_grav", "capacity_vol", "energy_grav", "energy_vol",
    "fracA_charge", "fracA_discharge", "formula_charge", "formula_discharge", "stability_charge",
    "stability_discharge", "id_charge", "id_discharge",
)
_PAIR_ID_FIELDS = ("id_charge", "id_discharge")
_PAIR_STR_FIELDS = ("formula_charge", "formula_discharge")

# What a document missing or garbling a field raises while it is read.
MALFORMED = (KeyError, TypeError, ValueError)


def to_classic_id(identifier: Any) -> str:
    """A material id in the classic ``<prefix>-<int>`` form (``mp-19017``, ``mvc-11882``).

    Accepts the classic form, emmet's letter form (``mp-aaaabcdl``, with or without prefix), an ``MPID``
    or ``AlphaID`` object, or an int. The number is the id's integer value, so ``AlphaID`` parses the
    result back to the same id, also for ids minted after the letter format (which have no legacy form in
    emmet). Raises ValueError for anything else.
    """
    if identifier is None or isinstance(identifier, bool):
        raise ValueError(f"not a Materials Project material id: {identifier!r}")
    from emmet.core.mpid import AlphaID  # AlphaID parses classic, letter and MPID forms alike

    text = str(identifier).strip()  # MPID and AlphaID stringify to their classic / letter text
    if not text:
        raise ValueError("not a Materials Project material id: ''")
    try:
        alpha = AlphaID(identifier if isinstance(identifier, int) else text)
        value = int(alpha)
    except Exception as exc:  # AlphaID raises ValueError, TypeError, KeyError for junk
        raise ValueError(f"not a Materials Project material id: {identifier!r}") from exc
    prefix = alpha.parts[0] or "mp"  # bare letter ids ("aaaabcdl") are mp ids, as emmet assumes
    return f"{prefix}-{value}"


def normalise_formulas(formula_charge: str, formula_discharge: str, ion: str) -> tuple[str, str, str]:
    """The snapshot's (formula_charge, formula_discharge, battery_formula) from MP's reduced formulas.

    Each end member is written as the ion count per framework formula unit followed by the framework's
    reduced formula, ``K0CrF6`` and ``K3CrF6`` for ``CrF6`` and ``K3CrF6``: the subscripts and framework
    emmet's ``get_battery_formula`` uses for ``battery_formula`` (``K0-3CrF6``).
    """
    (charge_x, _), (discharge_x, framework) = (
        _ion_subscript(formula_charge, ion), _ion_subscript(formula_discharge, ion)
    )
    return (f"{ion}{charge_x}{framework}", f"{ion}{discharge_x}{framework}",
            f"{ion}{charge_x}-{discharge_x}{framework}")


def format_adj_pairs(pairs: Iterable[dict[str, Any]] | None) -> str:
    """The snapshot's adj_pairs string: repr of the per-step InsertionVoltagePairDoc list, classic ids."""
    return "[" + ", ".join(_format_pair(pair) for pair in (pairs or [])) + "]"


def as_dict(doc: Any) -> dict[str, Any]:
    if isinstance(doc, dict):
        return doc
    if hasattr(doc, "model_dump"):  # a document model, if a client returns those anyway
        return doc.model_dump()
    return dict(doc)


def emmet_ion_count(amount: float) -> str:
    """An ion count as emmet writes it into an electrode's ``formula_charge``/``formula_discharge``,
    flaws included: two decimals, then ``.00`` and trailing zeros stripped, so that 10 reads ``1``
    and 0.125 ``0.12``."""
    subscript = re.sub(".00$", "", f"{amount:.2f}")
    return subscript if subscript == "0" else subscript.rstrip("0")


def _ion_subscript(formula: str, ion: str) -> tuple[str, str]:
    """(ion count per reduced framework unit as emmet writes it, framework reduced formula).

    Written as emmet does, flaws included (two decimals; ``10.00`` -> ``10`` -> ``1`` by the
    trailing-zero strip), so a download matches the snapshot; ``data.exact_formulas`` repairs both.
    """
    ion_amount, framework = per_framework_unit(formula, ion)
    return emmet_ion_count(ion_amount), framework.reduced_formula


def _element_symbol(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, dict):  # monty-serialised Element
        value = value.get("element") or value.get("symbol") or value.get("value")
    return str(getattr(value, "symbol", value)).strip() or None


def _id_sort_key(identifier: str) -> tuple[str, int]:
    prefix, _, number = identifier.rpartition("-")
    return prefix, int(number)


def _battery_material_id(material_ids: list[str]) -> str:
    """emmet's battery id base: the smallest material id, leaving out ``mvc-`` ids when others exist."""
    candidates = [idx for idx in material_ids if not idx.startswith("mvc")] or material_ids
    return min(candidates, key=_id_sort_key)


def _pairs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [as_dict(pair) for pair in doc.get("adj_pairs") or []]


def battery_id(doc: dict[str, Any], ion: str) -> str:
    """emmet's battery id of an electrode document: from its material ids, else its end members' and steps'."""
    material_ids = [to_classic_id(idx) for idx in doc.get("material_ids") or []]
    if not material_ids:
        material_ids = [to_classic_id(doc["id_charge"]), to_classic_id(doc["id_discharge"])] + [
            to_classic_id(pair[field]) for pair in _pairs(doc) for field in _PAIR_ID_FIELDS if pair.get(field)
        ]
    return f"{_battery_material_id(material_ids)}_{ion}"


def _electrode_label(doc: dict[str, Any], ion: str) -> str:
    """An electrode document's battery id for messages, or its discharged material where it has none."""
    try:
        return battery_id(doc, ion)
    except MALFORMED:
        return f"{doc.get('id_discharge', '?')} (discharged)"


def material_id(doc: dict[str, Any]) -> str:
    """A summary document's material id, classic form."""
    return to_classic_id(doc["material_id"])


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _format_value(field: str, value: Any) -> str:
    if value is None:
        return "None"
    if field in _PAIR_ID_FIELDS:
        return f"MPID({to_classic_id(value)})"
    if field in _PAIR_STR_FIELDS:
        return repr(str(value))
    return repr(float(value))


def _format_pair(pair: Any) -> str:
    pair = as_dict(pair)
    return "InsertionVoltagePairDoc(" + ", ".join(
        f"{field}={_format_value(field, pair.get(field))}" for field in PAIR_FIELDS
    ) + ")"


def _electrode_row(doc: dict[str, Any], ion: str) -> dict[str, Any]:
    pairs = _pairs(doc)
    formula_charge, formula_discharge, battery_formula = normalise_formulas(
        doc["formula_charge"], doc["formula_discharge"], ion
    )
    framework = _ion_subscript(doc["formula_discharge"], ion)[1]
    return {
        "battery_id": battery_id(doc, ion),
        "battery_formula": doc.get("battery_formula") or battery_formula,
        "formula_charge": formula_charge,
        "formula_discharge": formula_discharge,
        "framework_formula": doc.get("framework_formula") or framework,
        "working_ion": ion,
        "num_steps": int(doc["num_steps"]) if doc.get("num_steps") is not None else len(pairs),
        "stability_charge": doc.get("stability_charge"),
        "stability_discharge": doc.get("stability_discharge"),
        "adj_pairs": format_adj_pairs(pairs),
        "capacity_grav": doc.get("capacity_grav"),
        "energy_grav": doc.get("energy_grav"),
        "capacity_vol": doc.get("capacity_vol"),
        "energy_vol": doc.get("energy_vol"),
        "average_voltage": float(doc["average_voltage"]),
        "id_charge": to_classic_id(doc["id_charge"]),
        "id_discharge": to_classic_id(doc["id_discharge"]),
    }


def electrode_rows(docs: Iterable[dict[str, Any]], ion: str, dropped: dict[str, list[str]]
                   ) -> list[dict[str, Any]]:
    """The rows of the complete `ion` electrode documents; the battery ids of the others go to `dropped`."""
    rows: list[dict[str, Any]] = []
    incomplete: list[tuple[str, str]] = []  # (battery id, what is wrong)
    for doc in docs:
        doc_ion = _element_symbol(doc.get("working_ion"))
        if doc_ion not in (None, ion):  # the API filters by ion; be safe
            dropped[OTHER_ION].append(_electrode_label(doc, doc_ion))
            continue
        if doc.get("thermo_type") not in (None, THERMO_TYPE):
            # its voltage comes from other energies than the end members' this download takes
            dropped[OTHER_ENERGIES].append(_electrode_label(doc, ion))
            continue
        try:
            row = _electrode_row(doc, ion)
        except MALFORMED as exc:
            problem = f"{type(exc).__name__}: {exc}"
        else:
            missing = [column for column, value in row.items() if _missing(value)]
            problem = f"no {', '.join(missing)}" if missing else ""
        if problem:
            incomplete.append((_electrode_label(doc, ion), problem))
            continue
        rows.append(row)
    if incomplete:
        dropped[INCOMPLETE] += [label for label, _ in incomplete]
        log.warning("%s: left out %d insertion electrodes with incomplete or malformed data, e.g. %s",
                    ion, len(incomplete), "{} ({})".format(*incomplete[0])[:200])
    return rows


def _by_material_id(docs: Iterable[Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(material id, classic, and the document as a dict) of each document that names its material."""
    for doc in docs or []:
        doc = as_dict(doc)
        try:
            identifier = material_id(doc)
        except MALFORMED:
            continue
        yield identifier, doc


def gga_energies(docs: Iterable[Any]) -> dict[str, dict[str, Any]]:
    """material id (classic) -> energy and formation energy per atom of its ``THERMO_TYPE`` thermo
    document; documents of other thermo types (a server that ignored the filter) are passed over."""
    energies: dict[str, dict[str, Any]] = {}
    for identifier, doc in _by_material_id(docs):
        thermo_type = doc.get("thermo_type")
        if str(getattr(thermo_type, "value", thermo_type)) == THERMO_TYPE:
            energies[identifier] = {field: doc.get(field) for field in ENERGY_FIELDS}
    return energies


def end_member_properties(docs: Iterable[Any], energies: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """material id (classic) -> the END_MEMBER_FIELDS of one summary document, its energies from
    ``energies`` (`gga_energies`) rather than the summary's (see ``THERMO_TYPE``)."""
    properties: dict[str, dict[str, Any]] = {}
    for identifier, doc in _by_material_id(docs):
        symmetry = as_dict(doc.get("symmetry") or {})
        crystal_system = symmetry.get("crystal_system", doc.get("symmetry.crystal_system"))
        number = symmetry.get("number", doc.get("symmetry.number"))
        values = {
            "crystal_system": str(getattr(crystal_system, "value", crystal_system)).strip().title()
            if crystal_system is not None else None,
            "space_group_number": number,
            **{field: energies.get(identifier, {}).get(field) for field in ENERGY_FIELDS},
            "band_gap": doc.get("band_gap"),
            "efermi": doc.get("efermi"),
        }
        properties[identifier] = {field: values[field] for field in END_MEMBER_FIELDS}
    return properties


def electrode_table(electrodes: list[dict[str, Any]], end_members: dict[str, dict[str, Any]],
                    dropped: dict[str, list[str]]) -> pd.DataFrame:
    """The electrode rows with their end members' properties; those lacking any go to `dropped`."""
    rows: list[dict[str, Any]] = []
    for electrode in electrodes:
        row = dict(electrode)
        for end in ("charge", "discharge"):
            found = end_members.get(electrode[f"id_{end}"], {})
            for field in END_MEMBER_FIELDS:
                row[f"{end}_{field}"] = found.get(field)
        if any(_missing(row[f"{end}_{field}"])
               for end in ("charge", "discharge") for field in END_MEMBER_FIELDS):
            dropped[NO_END_MEMBER].append(row["battery_id"])
            continue
        rows.append(row)
    if dropped[NO_END_MEMBER]:
        log.warning("left out %d electrodes with end members absent from the summary data (e.g. deprecated "
                    "materials), without %s energies or missing a property, e.g. %s",
                    len(dropped[NO_END_MEMBER]), THERMO_TYPE, ", ".join(dropped[NO_END_MEMBER][:DROP_EXAMPLES]))
    table = pd.DataFrame(rows, columns=list(ELECTRODE_COLUMNS))
    # Each query's documents are distinct by battery id and the id ends in the ion queried, so a repeat here
    # would be two different documents with one id. No legitimate case: emmet's id is the smallest material
    # id of the electrode, one electrode is built per structure group, the groups partition the materials
    # (StructureGroupDoc.from_ungrouped_structure_entries checks it), and the API keys the documents by
    # battery_id (the route's primary_key).
    repeated = table.loc[table["battery_id"].duplicated(), "battery_id"]
    if not repeated.empty:
        raise InputError(f"the Materials Project returned {len(repeated)} battery ids for more than one "
                         f"insertion electrode, e.g. {repeated.iloc[0]}; nothing was written")
    table = table.astype(ELECTRODE_COLUMNS)
    return table.sort_values("battery_id", kind="stable", ignore_index=True)
