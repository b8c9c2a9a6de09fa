"""Download the insertion-electrode table from the Materials Project API in the snapshot's exact layout.

`download_electrodes` asks the real `mp_api` client (``MPRester``) for the insertion-electrode documents
of the configured working ions and for the summary properties of every charged and discharged end
member, and joins them into the columns of ``schema.ELECTRODE_COLUMNS``: the same names, order, dtypes
and value formats as the offline snapshot, so later stages cannot tell a fresh download from it.

Formats reproduced from the snapshot:

- ``battery_id`` is ``<id>_<ion>`` with ``<id>`` the smallest ``mp-`` material id of the electrode (the
  rule of emmet's ``InsertionElectrodeDoc.battery_id``, which the API no longer returns as a field).
- ``formula_charge``/``formula_discharge`` are written per framework formula unit with the ion count
  spelled out (``K0CrF6``, ``Li0.75TiO2``), the rule emmet uses to build ``battery_formula``.
- ``adj_pairs`` is the Python repr of the per-step ``InsertionVoltagePairDoc`` list with the snapshot's
  field order and ``MPID(mp-123)`` ids.
- Material ids are in the classic ``mp-123`` form; newer emmet/API builds use letter ids
  (``mp-aaaabcdl``) which `to_classic_id` converts back.

Failure handling. Every HTTP request goes through one ``requests`` adapter that bounds it by
``timeout_s`` and retries connection errors, resets, timeouts, HTTP 429 (honouring ``Retry-After``, capped
at ``RETRY_AFTER_MAX_S``) and HTTP 5xx up to ``max_retries`` times with exponential backoff. Failures that
only show once the body is read (truncated body, invalid JSON) are retried by re-running the whole query,
again at most ``max_retries`` times. So a query page costs at most (max_retries + 1)**2 requests of at
most ``timeout_s`` each, plus capped sleeps. This adapter replaces mp_api's own (urllib3: 3 retries of
429/502/504 only, Retry-After honoured up to 6 h, 20 s timeout), so the retries do not multiply. One gap
is mp_api's: ``MPRester()`` GETs ``/heartbeat`` twice with a bare ``requests.get`` (no timeout, no retry),
so a server that accepts the connection and then stalls would hang the job for good: while the client is
built those two calls are given ``timeout_s`` (`_bounded_heartbeats`), after a bounded heartbeat probe, and
the construction is retried as a whole.
mp_api pages by the number of documents it asked for, not the number it got, stops at the first empty
page, and pages by ``_skip``/``_limit`` with no sort order: a server serving shorter pages than asked, or
pages that overlap (one document twice, another never), would drop documents without a word. So every
query's distinct documents (by battery id for electrodes, material id for summary documents) are counted
against the server's own count of them (one more small request each); on a mismatch the query is re-run
like one whose body failed, and repeats of one document are dropped.
Anything permanent (bad key, wrong endpoint, retries exhausted, a short download) raises `InputError`
with one line that never contains the API key.

Electrodes left out on the way (another working ion, incomplete documents, average voltage outside the
window, end members without summary properties) are counted per reason, with example battery ids, in
the provenance's ``download_dropped``, which the data step writes into data_report.json.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from typing import Any, TypeVar

import pandas as pd

from electrode_ml.chemistry import per_framework_unit
from electrode_ml.errors import InputError
from electrode_ml.schema import ELECTRODE_COLUMNS, END_MEMBER_FIELDS, WORKING_IONS

log = logging.getLogger(__name__)

# Backoff between retries, in seconds (module constants so tests can shrink them). The transport retry
# sleeps 0, 2b, 4b, ... and the whole-query retry b, 2b, 4b, ... with b = BACKOFF_BASE_S, each sleep
# capped at BACKOFF_MAX_S; a server's Retry-After is honoured up to RETRY_AFTER_MAX_S.
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 30.0
RETRY_AFTER_MAX_S = 60.0
# Documents per page (mp_api's chunk_size; the API serves at most 1000) and material ids per summary query
# (keeps the query URL a few kB long).
PAGE_SIZE = 1000
SUMMARY_IDS_PER_QUERY = 250

RETRY_STATUSES = (429, 500, 502, 503, 504)

# Why a downloaded electrode is left out (provenance "download_dropped"), in the order they are applied.
OTHER_ION = "working ion not asked for"
INCOMPLETE = "incomplete or malformed document"
OUTSIDE_WINDOW = "average_voltage outside window"
NO_END_MEMBER = "end member without summary properties"
DROP_REASONS = (OTHER_ION, INCOMPLETE, OUTSIDE_WINDOW, NO_END_MEMBER)
DROP_EXAMPLES = 5  # battery ids named per reason

# Insertion-electrode fields requested from the API. battery_id is not among them: in emmet >= 0.87 it is a
# computed property, not a document field, and the client refuses to request it.
ELECTRODE_FIELDS = (
    "battery_formula", "formula_charge", "formula_discharge", "framework_formula", "working_ion",
    "num_steps", "stability_charge", "stability_discharge", "adj_pairs", "capacity_grav", "energy_grav",
    "capacity_vol", "energy_vol", "average_voltage", "id_charge", "id_discharge", "material_ids",
)
SUMMARY_FIELDS = (
    "material_id", "symmetry", "energy_per_atom", "formation_energy_per_atom", "band_gap", "efermi",
)
# Field order of one voltage step in the snapshot's adj_pairs repr.
PAIR_FIELDS = (
    "max_delta_volume", "average_voltage", "capacity_grav", "capacity_vol", "energy_grav", "energy_vol",
    "fracA_charge", "fracA_discharge", "formula_charge", "formula_discharge", "stability_charge",
    "stability_discharge", "id_charge", "id_discharge",
)
_PAIR_ID_FIELDS = ("id_charge", "id_discharge")
_PAIR_STR_FIELDS = ("formula_charge", "formula_discharge")

# Loggers quietened to WARNING unless the user configured them.
_NOISY_LOGGERS = ("mp_api", "urllib3", "requests", "botocore", "boto3", "s3transfer", "deltalake")

T = TypeVar("T")


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
    end members have all summary properties; returns them typed per ``ELECTRODE_COLUMNS``, sorted by
    battery_id, with the download's provenance (endpoint, database and client versions, UTC time, and
    the electrodes left out per reason as ``download_dropped``) for the data report. `api_key` defaults
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
        from mp_api.client.core.utils import validate_endpoint
    except ImportError as exc:
        missing = exc.name or "mp_api"
    else:
        missing = None
    if missing:
        raise InputError(f"downloading from the Materials Project needs the mp-api package ({missing} "
                         "is not importable); install it or use the snapshot")

    _quiet_third_party_logging()
    base = validate_endpoint(endpoint)  # what MPRester does: default endpoint, trailing slash
    guard = _Guard(key=key, endpoint=base, max_retries=max_retries, timeout_s=timeout_s)

    guard.call("contacting the Materials Project API",
               lambda: _check_heartbeat(base, _bounded_adapter(max_retries, timeout_s)))

    def open_client():
        with _bounded_heartbeats(timeout_s):
            return MPRester(key, endpoint=base, mute_progress_bars=True, use_document_model=False)

    # the heartbeat above has just shown that the server answers; the construction is retried whole
    mpr = guard.call("opening the Materials Project client", open_client, transport_retried=False)
    with mpr:
        adapter = _bounded_adapter(max_retries, timeout_s)  # shared by the client's resters via the session
        mpr.session.mount("http://", adapter)
        mpr.session.mount("https://", adapter)
        electrode_rester = guard.call(
            "opening the insertion-electrode route", lambda: mpr.materials.insertion_electrodes,
            transport_retried=False,
        )
        summary_rester = guard.call(
            "opening the summary route", lambda: mpr.materials.summary, transport_retried=False,
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
                    key=functools.partial(_battery_id, ion=ion),
                ),
            )
            rows = _electrode_rows(docs, ion, dropped)
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
                    # the summary search sends the ids comma-joined, as here
                    summary_rester.count({"material_ids": ",".join(chunk)}),
                    key=_material_id,
                ),
            )
            end_members.update(_end_member_properties(docs))
        provenance = {"endpoint": base, "database_version": mpr.db_version, "mp_api_version": _version("mp-api"),
                      "emmet_core_version": _version("emmet-core"),
                      "downloaded_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}

    table = _join(electrodes, end_members, dropped)
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


# ---------------------------------------------------------------------------------------------------
# Transport: bounded time and retries for every request
# ---------------------------------------------------------------------------------------------------

def _bounded_adapter(max_retries: int, timeout_s: float):
    """A requests adapter with our timeout on every request and urllib3 retries of transient failures."""
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    retry = Retry(
        total=max_retries, connect=max_retries, read=max_retries, status=max_retries, other=max_retries,
        status_forcelist=RETRY_STATUSES, allowed_methods=frozenset({"GET", "HEAD"}),
        backoff_factor=BACKOFF_BASE_S, backoff_max=BACKOFF_MAX_S,
        respect_retry_after_header=True, retry_after_max=RETRY_AFTER_MAX_S, raise_on_status=True,
    )

    class _BoundedAdapter(HTTPAdapter):
        def send(self, request, **kwargs):  # mp_api passes its own timeout (20 s): ours wins
            kwargs["timeout"] = timeout_s
            return super().send(request, **kwargs)

    return _BoundedAdapter(max_retries=retry)


@contextmanager
def _bounded_heartbeats(timeout_s: float) -> Iterator[None]:
    """While ``MPRester`` is built, its two bare ``requests.get`` heartbeats time out after `timeout_s`.

    mp_api calls ``requests.get`` in its core client and a ``get`` imported from requests in
    ``mprester``; both names are swapped for the bounded call and put back, whatever happens.
    """
    import requests
    from mp_api.client import mprester

    bounded = functools.partial(requests.get, timeout=timeout_s)
    bare = requests.get, mprester.get
    requests.get = mprester.get = bounded
    try:
        yield
    finally:
        requests.get, mprester.get = bare


class _IncompleteQuery(Exception):
    """A query's distinct documents disagree with the server's count of them: re-run the query."""


def _distinct_documents(docs: Iterable[Any], counted: int, *, key: Callable[[dict[str, Any]], str]
                        ) -> list[dict[str, Any]]:
    """The query's documents, each once, if there are as many distinct ones as the server counts.

    Counting distinct documents, not documents, catches overlapping pages (one document twice, another
    never: the same length). A document too malformed to have a `key` counts by its whole text, so only
    exact copies of it are one. Raises `_IncompleteQuery` (retried, see the module docstring) otherwise.
    """
    distinct: dict[str, dict[str, Any]] = {}
    for doc in docs or []:
        doc = _as_dict(doc)
        try:
            identity = key(doc)
        except _MALFORMED:
            identity = json.dumps(doc, sort_keys=True, default=str)
        distinct.setdefault(identity, doc)
    if len(distinct) != counted:
        raise _IncompleteQuery(f"the Materials Project counts {counted} documents but returned "
                               f"{len(distinct)} distinct ones (pages overlapping or shorter than asked "
                               "for?); nothing was written")
    return list(distinct.values())


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


class _HTTPStatus(Exception):
    def __init__(self, status: int, url: str) -> None:
        super().__init__(f"error status code {status} on URL {url}")
        self.status = status


def _check_heartbeat(base: str, adapter) -> None:
    """GET <endpoint>/heartbeat through the bounded adapter: is there an MP API at this endpoint?"""
    import requests

    with requests.Session() as session:
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        response = session.get(base + "heartbeat")
        if response.status_code not in (200, 403):  # mp_api only warns on 403 (status page outage)
            raise _HTTPStatus(response.status_code, base + "heartbeat")
        if response.status_code == 200:
            json.loads(response.text)  # a truncated or garbled answer is worth a retry


@dataclass
class _Problem:
    transient: bool
    message: str


class _Guard:
    """Runs one client call with whole-call retries for transient failures and one-line InputErrors."""

    def __init__(self, *, key: str, endpoint: str, max_retries: int, timeout_s: float) -> None:
        self.key = key
        self.endpoint = endpoint
        self.max_retries = max_retries
        self.timeout_s = timeout_s

    def redact(self, text: str) -> str:
        text = str(text).replace(self.key, "***")
        return re.sub(r"(?i)(x-api-key['\"]?\s*[:=]\s*['\"]?)[^'\"\s,}]+", r"\1***", text)

    def call(self, what: str, function: Callable[[], T], *, transport_retried: bool = True) -> T:
        """`function()`, retried on transient failures; on a permanent one raise a one-line InputError.

        With `transport_retried` the call's requests already went through the bounded adapter, so
        connection failures and HTTP 429/5xx arrive here only once its retries are exhausted: final.
        """
        attempt = 0
        while True:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    return function()
                except Exception as exc:  # noqa: BLE001 - every failure becomes one InputError line
                    problem = self._classify(exc, transport_retried)
                finally:
                    self._relay(caught)
            if problem.transient and attempt < self.max_retries:
                attempt += 1
                delay = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (attempt - 1))
                log.warning("%s failed (%s); retry %d of %d in %.3g s",
                            what, self.redact(problem.message), attempt, self.max_retries, delay)
                time.sleep(delay)
                continue
            suffix = f" (after {_retries(attempt)})" if problem.transient and attempt else ""
            # Raised outside the except block: no chained client exception (whose text may hold the key).
            raise InputError(_one_line(self.redact(f"{what} failed: {problem.message}{suffix}")))

    def _relay(self, caught: list[warnings.WarningMessage]) -> None:
        seen: set[str] = set()
        for warning in caught:
            if issubclass(warning.category, DeprecationWarning | PendingDeprecationWarning):
                continue
            text = _one_line(self.redact(re.sub(r"\x1b\[[0-9;]*m", "", str(warning.message))))
            if text not in seen:
                seen.add(text)
                log.warning("Materials Project client: %s", text)

    def _classify(self, exc: BaseException, transport_retried: bool) -> _Problem:
        import requests
        from urllib3.exceptions import ProtocolError

        chain = _exception_chain(exc)
        incomplete = [error for error in chain if isinstance(error, _IncompleteQuery)]
        if incomplete:
            return _Problem(True, str(incomplete[0]))
        text = " | ".join(str(error) for error in chain)
        status = _status_code(chain, text)
        where = self.endpoint

        if status is not None:
            if "too many" in text and status in RETRY_STATUSES:
                return _Problem(False, f"the server at {where} kept answering HTTP {status} "
                                       f"after {_retries(self.max_retries)}")
            if status in (401, 403):
                return _Problem(False, f"Materials Project rejected the API key (HTTP {status}); "
                                       "check MP_API_KEY")
            if status == 404:
                return _Problem(False, f"HTTP 404 (not found) from {where}: check the endpoint "
                                       "and the mp-api version")
            if status in RETRY_STATUSES:
                return _Problem(True, f"HTTP {status}")
            return _Problem(False, f"the server at {where} refused the query (HTTP {status}): "
                                   f"{_detail(text)}")
        if "does not support the request" in text:  # mp_api's text for HTTP 400, without the code
            return _Problem(False, f"the server at {where} refused the query (HTTP 400): an outdated "
                                   "mp-api package or a malformed query")
        if "32 characters" in text or "valid API key" in text:
            return _Problem(False, "MP_API_KEY is not a valid Materials Project API key "
                                   "(they are 32 characters)")
        if any(isinstance(error, json.JSONDecodeError) for error in chain):
            return _Problem(True, "the response was not valid JSON")
        if any(isinstance(error, requests.exceptions.ChunkedEncodingError
                          | requests.exceptions.ContentDecodingError | ProtocolError) for error in chain) \
                and not any(isinstance(error, requests.exceptions.ConnectionError) for error in chain):
            return _Problem(True, "the response was cut off")
        if any(isinstance(error, requests.exceptions.RequestException) for error in chain):
            reason = _network_reason(text, self.timeout_s)
            if transport_retried:
                return _Problem(False, f"could not reach the Materials Project API at {where} after "
                                       f"{_retries(self.max_retries)} ({reason})")
            return _Problem(True, reason)
        if any(isinstance(error, KeyError) for error in chain):
            return _Problem(True, f"unexpected response layout (missing {_detail(text)})")
        return _Problem(False, f"{type(exc).__name__}: {_detail(text)}")


def _exception_chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    pending: list[BaseException] = [exc]
    while pending and len(chain) < 20:
        error = pending.pop(0)
        if error in chain:
            continue
        chain.append(error)
        pending += [e for e in (error.__cause__, error.__context__) if e is not None]
        pending += [arg for arg in getattr(error, "args", ()) if isinstance(arg, BaseException)]
        reason = getattr(error, "reason", None)
        if isinstance(reason, BaseException):
            pending.append(reason)
    return chain


def _status_code(chain: list[BaseException], text: str) -> int | None:
    for error in chain:
        if isinstance(error, _HTTPStatus):
            return error.status
    match = re.search(r"error status code (\d{3})", text) or re.search(r"too many (\d{3}) error", text)
    return int(match.group(1)) if match else None


def _network_reason(text: str, timeout_s: float) -> str:
    lowered = text.lower()
    if "timed out" in lowered or "timeout" in lowered:
        return f"no answer within {timeout_s:g} s"
    if "refused" in lowered:
        return "connection refused"
    if "name or service not known" in lowered or "nodename nor servname" in lowered \
            or "name resolution" in lowered or "getaddrinfo" in lowered:
        return "host name not found"
    if "reset" in lowered or "aborted" in lowered or "remotedisconnected" in lowered:
        return "connection reset"
    return "network error"


def _detail(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    detail = lines[-1] if lines else "no detail"
    return detail[:200]


def _retries(count: int) -> str:
    return f"{count} {'retry' if count == 1 else 'retries'}"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())[:500]


# ---------------------------------------------------------------------------------------------------
# Documents to rows
# ---------------------------------------------------------------------------------------------------

# What a document missing or garbling a field raises while it is read.
_MALFORMED = (KeyError, TypeError, ValueError)


def _as_dict(doc: Any) -> dict[str, Any]:
    if isinstance(doc, dict):
        return doc
    if hasattr(doc, "model_dump"):  # a document model, if a client returns those anyway
        return doc.model_dump()
    return dict(doc)


def _ion_subscript(formula: str, ion: str) -> tuple[str, str]:
    """(ion count per reduced framework unit as emmet writes it, framework reduced formula).

    Written as emmet does, flaws included (two decimals; ``10.00`` -> ``10`` -> ``1`` by the
    trailing-zero strip), so a download matches the snapshot; ``data.exact_formulas`` repairs both.
    """
    ion_amount, framework = per_framework_unit(formula, ion)
    subscript = re.sub(".00$", "", f"{ion_amount:.2f}")
    if subscript != "0":
        subscript = subscript.rstrip("0")
    return subscript, framework.reduced_formula


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
    return [_as_dict(pair) for pair in doc.get("adj_pairs") or []]


def _battery_id(doc: dict[str, Any], ion: str) -> str:
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
        return _battery_id(doc, ion)
    except _MALFORMED:
        return f"{doc.get('id_discharge', '?')} (discharged)"


def _material_id(doc: dict[str, Any]) -> str:
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
    pair = _as_dict(pair)
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
        "battery_id": _battery_id(doc, ion),
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


def _electrode_rows(docs: Iterable[dict[str, Any]], ion: str, dropped: dict[str, list[str]]
                    ) -> list[dict[str, Any]]:
    """The rows of the complete `ion` electrode documents; the battery ids of the others go to `dropped`."""
    rows: list[dict[str, Any]] = []
    incomplete: list[tuple[str, str]] = []  # (battery id, what is wrong)
    for doc in docs:
        doc_ion = _element_symbol(doc.get("working_ion"))
        if doc_ion not in (None, ion):  # the API filters by ion; be safe
            dropped[OTHER_ION].append(_electrode_label(doc, doc_ion))
            continue
        try:
            row = _electrode_row(doc, ion)
        except _MALFORMED as exc:
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


def _end_member_properties(docs: Iterable[Any]) -> dict[str, dict[str, Any]]:
    """material id (classic) -> the END_MEMBER_FIELDS of one summary document."""
    properties: dict[str, dict[str, Any]] = {}
    for doc in docs or []:
        doc = _as_dict(doc)
        try:
            material_id = _material_id(doc)
        except _MALFORMED:
            continue
        symmetry = _as_dict(doc.get("symmetry") or {})
        crystal_system = symmetry.get("crystal_system", doc.get("symmetry.crystal_system"))
        number = symmetry.get("number", doc.get("symmetry.number"))
        values = {
            "crystal_system": str(getattr(crystal_system, "value", crystal_system)).strip().title()
            if crystal_system is not None else None,
            "space_group_number": number,
            "energy_per_atom": doc.get("energy_per_atom"),
            "formation_energy_per_atom": doc.get("formation_energy_per_atom"),
            "band_gap": doc.get("band_gap"),
            "efermi": doc.get("efermi"),
        }
        properties[material_id] = {field: values[field] for field in END_MEMBER_FIELDS}
    return properties


def _join(electrodes: list[dict[str, Any]], end_members: dict[str, dict[str, Any]],
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
                    "materials) or missing a property, e.g. %s", len(dropped[NO_END_MEMBER]),
                    ", ".join(dropped[NO_END_MEMBER][:DROP_EXAMPLES]))
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
