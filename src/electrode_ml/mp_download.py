"""Download the insertion-electrode table from the Materials Project API in the snapshot's exact layout.

`download_electrodes` asks the real `mp_api` client (``MPRester``) for the insertion-electrode documents
of the configured working ions, for the summary properties of every charged and discharged end member
and for their GGA/GGA+U energies (thermo documents of ``mp_documents.THERMO_TYPE``: the summary's are
of MP's GGA/GGA+U/r2SCAN mixing scheme, the electrodes' voltages of GGA/GGA+U), and joins them into
the columns of ``schema.ELECTRODE_COLUMNS``: the same names, order, dtypes and value formats as the
offline snapshot, so later stages cannot tell a fresh download from it.

This module says what is asked for and checks that each query came back whole. How every request is
bounded, retried and turned into a one-line `InputError` is mp_transport.py's; how the documents become
the snapshot's rows is mp_documents.py's.

mp_api pages by the number of documents it asked for, not the number it got, stops at the first empty
page, and pages by ``_skip``/``_limit`` with no sort order: a server serving shorter pages than asked, or
pages that overlap (one document twice, another never), would drop documents without a word. So every
query's distinct documents (by battery id and thermo type for electrodes, material id for summary
documents, material id and thermo type for thermo documents) are counted
against the server's own count of them (one more small request each); on a mismatch the query is re-run
like one whose body failed, and repeats of one document are dropped.

Electrodes left out on the way (another working ion, incomplete documents, average voltage outside the
window, end members without summary properties or GGA/GGA+U energies) are counted per reason, with
example battery ids, in the provenance's ``download_dropped``, which the data step writes into
data_report.json.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from importlib import metadata
from typing import Any

import pandas as pd

from electrode_ml.errors import InputError
from electrode_ml.fileio import utc_timestamp
from electrode_ml.mp_documents import (DROP_EXAMPLES, DROP_REASONS, ENERGY_FIELDS, MALFORMED, OUTSIDE_WINDOW,
                                       THERMO_TYPE, as_dict, battery_id, electrode_rows, electrode_table,
                                       end_member_properties, gga_energies, material_id)
from electrode_ml.mp_transport import Guard, IncompleteQuery, bounded_adapter, bounded_heartbeats, check_heartbeat
from electrode_ml.schema import WORKING_IONS

log = logging.getLogger(__name__)

# Documents per page (mp_api's chunk_size; the API serves at most 1000) and material ids per summary and
# thermo query (keeps the query URL a few kB long).
PAGE_SIZE = 1000
SUMMARY_IDS_PER_QUERY = 250

# Insertion-electrode fields requested from the API. battery_id is not among them: in emmet >= 0.87 it is a
# computed property, not a document field, and the client refuses to request it.
ELECTRODE_FIELDS = (
    "battery_formula", "formula_charge", "formula_discharge", "framework_formula", "working_ion",
    "num_steps", "stability_charge", "stability_discharge", "adj_pairs", "capacity_grav", "energy_grav",
    "capacity_vol", "energy_vol", "average_voltage", "id_charge", "id_discharge", "material_ids", "thermo_type",
)
SUMMARY_FIELDS = ("material_id", "symmetry", "band_gap", "efermi")
THERMO_FIELDS = ("material_id", "thermo_type", *ENERGY_FIELDS)

# Loggers quietened to WARNING unless the user configured them.
_NOISY_LOGGERS = ("mp_api", "urllib3", "requests", "botocore", "boto3", "s3transfer", "deltalake")


# ---------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------

def download_electrodes(
    ions: list[str],
    voltage_window: tuple[float, float],
    *,
    api_key: str | None = None,
    endpoint: str | None = None,
    max_retries: int = 5,
    timeout_s: float = 60.0,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Download the insertion electrodes of `ions` from the Materials Project, in the snapshot's layout.

    Keeps complete electrodes with ``voltage_window[0] < average_voltage < voltage_window[1]`` whose two
    end members have all summary properties and GGA/GGA+U energies; returns them typed per
    ``ELECTRODE_COLUMNS``, sorted by battery_id, with the download's provenance (endpoint, database and
    client versions, UTC time, and the electrodes left out per reason as ``download_dropped``) for the
    data report. `api_key` defaults
    to the ``MP_API_KEY`` environment variable; `endpoint` to mp_api's default (``MP_API_ENDPOINT`` or
    https://api.materialsproject.org/). Raises `InputError` (one line, never containing the key) for bad
    arguments, a missing or rejected key, an unreachable or failing API, or an incomplete download.
    """
    ions = _check_ions(ions)
    low, high = _check_window(voltage_window)
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise InputError(f"max_retries must be an integer >= 0, got {max_retries!r}")
    if not isinstance(timeout_s, int | float) or not timeout_s > 0:
        raise InputError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    key = api_key if api_key is not None else os.environ.get("MP_API_KEY")
    key = (key or "").strip()
    if not key:
        raise InputError(
            "no Materials Project API key: set the MP_API_KEY environment variable "
            "(get a key at https://materialsproject.org/api)"
        )

    try:  # heavy import (pymatgen, boto3, deltalake): only when downloading
        from mp_api.client import MPRester
        from mp_api.client.core.utils import validate_endpoint, validate_ids
    except ImportError as exc:
        missing = exc.name or "mp_api"
    else:
        missing = None
    if missing:
        raise InputError(f"downloading from the Materials Project needs the mp-api package ({missing} "
                         "is not importable); install it or use the snapshot")

    _quiet_third_party_logging()
    base = validate_endpoint(endpoint)  # what MPRester does: default endpoint, trailing slash
    guard = Guard(key=key, endpoint=base, max_retries=max_retries, timeout_s=timeout_s)

    guard.call("contacting the Materials Project API",
               lambda: check_heartbeat(base, bounded_adapter(max_retries, timeout_s)))

    def open_client():
        with bounded_heartbeats(timeout_s):
            return MPRester(key, endpoint=base, mute_progress_bars=True, use_document_model=False)

    # the heartbeat above has just shown that the server answers; the construction is retried whole
    mpr = guard.call("opening the Materials Project client", open_client, transport_retried=False)
    with mpr:
        adapter = bounded_adapter(max_retries, timeout_s)  # shared by the client's resters via the session
        mpr.session.mount("http://", adapter)
        mpr.session.mount("https://", adapter)
        electrode_rester = guard.call(
            "opening the insertion-electrode route", lambda: mpr.materials.insertion_electrodes,
            transport_retried=False,
        )
        summary_rester = guard.call(
            "opening the summary route", lambda: mpr.materials.summary, transport_retried=False,
        )
        thermo_rester = guard.call(
            "opening the thermo route", lambda: mpr.materials.thermo, transport_retried=False,
        )

        electrodes: list[dict[str, Any]] = []
        dropped: dict[str, list[str]] = {reason: [] for reason in DROP_REASONS}
        for ion in ions:
            # search and count together: a re-run after a mismatch compares a fresh search with a fresh count
            docs = guard.call(
                f"downloading the {ion} insertion electrodes",
                lambda ion=ion: _distinct_documents(
                    electrode_rester.search(working_ion=ion, fields=list(ELECTRODE_FIELDS),
                                            chunk_size=PAGE_SIZE),
                    electrode_rester.count({"working_ion": ion}),
                    # one structure group built from two kinds of energies is two documents under
                    # one battery id; electrode_rows drops the one of the other energies
                    key=lambda doc, ion=ion: f"{battery_id(doc, ion)} {doc.get('thermo_type')}",
                ),
            )
            rows = electrode_rows(docs, ion, dropped)
            inside = [low < row["average_voltage"] < high for row in rows]
            kept = [row for row, keep in zip(rows, inside) if keep]
            dropped[OUTSIDE_WINDOW] += [row["battery_id"] for row, keep in zip(rows, inside) if not keep]
            log.info(
                "%s: %d insertion electrodes, %d inside %g V < average_voltage < %g V",
                ion, len(rows), len(kept), low, high,
            )
            electrodes.extend(kept)

        material_ids = sorted({row[f"id_{end}"] for row in electrodes for end in ("charge", "discharge")})
        end_members: dict[str, dict[str, Any]] = {}
        chunks = [material_ids[i:i + SUMMARY_IDS_PER_QUERY]
                  for i in range(0, len(material_ids), SUMMARY_IDS_PER_QUERY)]
        for number, chunk in enumerate(chunks, start=1):
            docs = guard.call(
                f"downloading summary properties ({number}/{len(chunks)})",
                lambda chunk=chunk: _distinct_documents(
                    summary_rester.search(material_ids=chunk, fields=list(SUMMARY_FIELDS),
                                          chunk_size=PAGE_SIZE),
                    # the searches send the ids as validate_ids writes them (letter ids above emmet's
                    # cut), comma-joined, as here
                    summary_rester.count({"material_ids": ",".join(validate_ids(chunk))}),
                    key=material_id,
                ),
            )
            thermo_docs = guard.call(
                f"downloading {THERMO_TYPE} energies ({number}/{len(chunks)})",
                lambda chunk=chunk: _distinct_documents(
                    thermo_rester.search(material_ids=chunk, thermo_types=[THERMO_TYPE],
                                         fields=list(THERMO_FIELDS), chunk_size=PAGE_SIZE),
                    thermo_rester.count({"material_ids": ",".join(validate_ids(chunk)),
                                         "thermo_types": THERMO_TYPE}),
                    key=lambda doc: f"{material_id(doc)} {doc.get('thermo_type')}",
                ),
            )
            end_members.update(end_member_properties(docs, gga_energies(thermo_docs)))
            # a line per batch: at about 6000 end members this is the download's long step
            log.info("end members' properties and %s energies: %d of %d materials",
                     THERMO_TYPE, min(number * SUMMARY_IDS_PER_QUERY, len(material_ids)), len(material_ids))
        # mp_api leaves db_version empty where the heartbeat was refused (HTTP 403) but the queries were not
        provenance = {"endpoint": base, "database_version": mpr.db_version or "unknown (no heartbeat answer)",
                      "mp_api_version": _version("mp-api"),
                      "emmet_core_version": _version("emmet-core"),
                      "downloaded_at": utc_timestamp()}

    table = electrode_table(electrodes, end_members, dropped)
    provenance["download_dropped"] = {
        reason: {"count": len(ids), "examples": sorted(ids)[:DROP_EXAMPLES]}
        for reason, ids in dropped.items()
    }
    if table.empty:
        raise InputError(
            f"the Materials Project returned no complete insertion electrodes for {', '.join(ions)} "
            f"with {low:g} V < average_voltage < {high:g} V"
        )
    log.info("downloaded %d insertion electrodes for %s (database %s)", len(table), ", ".join(ions),
             provenance["database_version"])
    return table, provenance


def _distinct_documents(docs: Iterable[Any], counted: int, *, key: Callable[[dict[str, Any]], str]
                        ) -> list[dict[str, Any]]:
    """The query's documents, each once, if there are as many distinct ones as the server counts.

    Counting distinct documents, not documents, catches overlapping pages (one document twice, another
    never: the same length). A document too malformed to have a `key` counts by its whole text, so only
    exact copies of it are one. Raises `IncompleteQuery` (retried, see the module docstring) otherwise.
    """
    distinct: dict[str, dict[str, Any]] = {}
    for doc in docs or []:
        doc = as_dict(doc)
        try:
            identity = key(doc)
        except MALFORMED:
            identity = json.dumps(doc, sort_keys=True, default=str)
        distinct.setdefault(identity, doc)
    if len(distinct) != counted:
        raise IncompleteQuery(f"the Materials Project counts {counted} documents but returned "
                              f"{len(distinct)} distinct ones (pages overlapping or shorter than asked "
                              "for?); nothing was written")
    return list(distinct.values())


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


# ---------------------------------------------------------------------------------------------------
# Argument checks and logging
# ---------------------------------------------------------------------------------------------------

def _check_ions(ions: Sequence[str]) -> list[str]:
    if isinstance(ions, str):
        ions = [ions]
    checked: list[str] = []
    for ion in ions or []:
        symbol = str(ion).strip()
        if symbol not in WORKING_IONS:
            raise InputError(f"unknown working ion {ion!r}: expected some of {', '.join(WORKING_IONS)}")
        if symbol not in checked:
            checked.append(symbol)
    if not checked:
        raise InputError(f"no working ions given: expected some of {', '.join(WORKING_IONS)}")
    return checked


def _check_window(window: Sequence[float]) -> tuple[float, float]:
    try:
        low, high = (float(value) for value in window)
    except (TypeError, ValueError):
        low = high = float("nan")
    if low != low or high != high:  # not two numbers (raised here, so no chained exception)
        raise InputError(f"voltage_window must be two numbers (low, high), got {window!r}")
    if not low < high:
        raise InputError(f"voltage_window must have low < high, got ({low:g}, {high:g})")
    return low, high


def _quiet_third_party_logging() -> None:
    """Lower mp_api / urllib3 / AWS chatter to warnings, leaving loggers the user configured alone."""
    for name in _NOISY_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)
    client_logger = logging.getLogger("mp_api.client.core.client")
    if client_logger.level == logging.INFO:  # what mp_api sets at import
        client_logger.setLevel(logging.WARNING)
