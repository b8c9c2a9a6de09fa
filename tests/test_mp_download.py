"""electrode_ml.mp_download (with mp_transport and mp_documents) against a stand-in Materials Project API.

The stand-in is a ThreadingHTTPServer on 127.0.0.1 that the real mp_api MPRester is pointed at through
``endpoint=``. It answers the routes the installed client (mp-api 0.46.5) calls:

- ``GET /heartbeat`` (twice per MPRester construction, plain ``requests.get``, no API key),
- ``GET /materials/insertion_electrodes/?working_ion=K&_limit=..&_fields=..[&_skip=..]``,
- ``GET /materials/summary/?material_ids=mp-1,mp-2&_limit=..&_fields=..`` (mp_api's default ``include_gnome``
  adds no filter),
- ``GET /materials/thermo/?material_ids=mp-1,mp-2&thermo_types=GGA_GGA%2BU&_limit=..&_fields=..``,

with the API's ``{"data": [...], "meta": {"total_doc": ..}}`` envelope (and, as the API, 400 to a query
parameter the route does not declare), serving documents rebuilt from
real snapshot rows (MP's reduced formulas from the merged file, the adj_pairs parsed back into dicts;
the snapshot's energies as the GGA_GGA+U thermo documents, and shifted ones, as MP's r2SCAN mixing
scheme would give, in the summary and the GGA_GGA+U_R2SCAN thermo documents).
Faults are injected per route, in order: HTTP 429 with Retry-After, 5xx, a response slower than the
timeout, a truncated body, invalid JSON, a connection reset, a page starting one document early (as
unsorted ``_skip``/``_limit`` paging may: one document twice, another never), a page with one of its
documents twice. ``page_cap`` makes it serve shorter pages than asked for, as an API that lowered its
page limit would.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import socket
import struct
import threading
import time
import traceback
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import pandas as pd
import pytest

from electrode_ml import mp_documents, mp_download, mp_transport
from electrode_ml.data import read_electrode_csv, validate_electrodes
from electrode_ml.errors import InputError
from electrode_ml.mp_documents import format_adj_pairs, to_classic_id
from electrode_ml.mp_download import download_electrodes
from electrode_ml.schema import ELECTRODE_COLUMNS

ROOT = Path(__file__).resolve().parents[1]

DATA = ROOT.parent / "shared" / "data" / "mp_insertion_electrodes"
SNAPSHOT = DATA / "ma2022_mp_insertion_electrodes_4300.csv"
MERGED = DATA / "ma2022_mp_insertion_electrodes_4300_merged.csv"

# A distinctive, validly shaped (32 characters) fake key: it must never surface anywhere.
FAKE_KEY = "LEAKCANARY0123456789abcdefABCDEF"
OTHER_KEY = "ServerExpectsThisKey000000000000"

WINDOW = (0.0, 5.0)
IONS = ["K", "Li"]
# Snapshot rows the stand-in serves. Inside the window: several steps, fractional and non-zero charged
# counts (K0.38FeSe, Li3Mn3O8), battery ids from an unstable matched material below every adj_pairs id
# (the Li rows). Outside: 5.47 V, -0.84 V, 5.12 V. Not asked for: the Cs row.
EXPECTED_IDS = ["mp-19395_K", "mp-1070735_K", "mp-28849_K", "mp-758915_Li", "mp-758802_Li", "mp-26103_Li"]
OUTSIDE_WINDOW_IDS = ["mp-1111695_K", "mp-8634_K", "mp-768456_Li"]
OTHER_ION_IDS = ["mp-867522_Cs"]
SERVED_IDS = EXPECTED_IDS + OUTSIDE_WINDOW_IDS + OTHER_ION_IDS

# How far the stand-in's mixed-scheme (GGA/GGA+U/r2SCAN) energies lie from the snapshot's GGA/GGA+U ones.
MIXED_SHIFT = {"energy_per_atom": 0.137, "formation_energy_per_atom": -0.052}

SLOW_S = 1.0  # how long a "slow" answer takes; the download's timeout in those tests is shorter
STALL_S = 8.0  # how long a "stall" takes: a download that waits it out has no timeout on that request


# ---------------------------------------------------------------------------------------------------
# Snapshot rows -> API documents
# ---------------------------------------------------------------------------------------------------

_PAIR_VALUE = re.compile(r"(\w+)=(MPID\(([^)]*)\)|'([^']*)'|None|[-+0-9.eE]+)")


def parse_adj_pairs(text: str) -> list[dict]:
    """The snapshot's adj_pairs repr back into the API's per-step dicts (ids as plain strings)."""
    pairs: list[dict] = []
    for match in _PAIR_VALUE.finditer(text):
        field, raw, mpid, quoted = match.groups()
        if field == "max_delta_volume":
            pairs.append({})
        if mpid is not None:
            value = mpid
        elif quoted is not None:
            value = quoted
        elif raw == "None":
            value = None
        else:
            value = float(raw)
        pairs[-1][field] = value
    return pairs


def letter_id(classic: str) -> str:
    """mp-1111695 -> mp-aaaclgnn, the padded letter form of newer emmet / API builds."""
    from emmet.core.mpid import AlphaID

    prefix, number = classic.rsplit("-", 1)
    return str(AlphaID(int(number), prefix=prefix, padlen=8))


def canonical_id(identifier: str) -> tuple[str, int]:
    from emmet.core.mpid import AlphaID

    prefix, number = AlphaID(identifier).parts
    return prefix or "mp", number


@pytest.fixture(scope="module")
def snapshot_rows() -> pd.DataFrame:
    snapshot = pd.read_csv(SNAPSHOT)
    merged = pd.read_csv(MERGED, usecols=["battery_id", "formula_charge_mp", "formula_discharge_mp"])
    rows = snapshot[snapshot["battery_id"].isin(SERVED_IDS)].merge(merged, on="battery_id", how="left")
    assert sorted(rows["battery_id"]) == sorted(SERVED_IDS)
    return rows.set_index("battery_id", drop=False).rename_axis(None)


@pytest.fixture(scope="module")
def expected(snapshot_rows) -> pd.DataFrame:
    """What the download must return: the snapshot rows inside the window, typed and sorted."""
    rows = snapshot_rows.loc[EXPECTED_IDS, list(ELECTRODE_COLUMNS)]
    return rows.astype(ELECTRODE_COLUMNS).sort_values("battery_id", ignore_index=True)


def build_documents(rows: pd.DataFrame, letter_ids: bool = False) -> tuple[list[dict], list[dict], list[dict]]:
    """Insertion-electrode, summary and thermo documents shaped like the API's, from snapshot rows."""
    fmt = letter_id if letter_ids else str
    electrodes: list[dict] = []
    summaries: dict[str, dict] = {}
    thermo: list[dict] = []
    for row in rows.itertuples(index=False):
        pairs = parse_adj_pairs(row.adj_pairs)
        pair_ids = [pair[field] for pair in pairs for field in ("id_charge", "id_discharge")]
        battery_material = row.battery_id.rsplit("_", 1)[0]
        for pair in pairs:
            pair["id_charge"], pair["id_discharge"] = fmt(pair["id_charge"]), fmt(pair["id_discharge"])
        electrodes.append({
            "battery_type": "insertion",
            "battery_formula": row.battery_formula,
            "framework_formula": row.framework_formula,
            "working_ion": row.working_ion,
            "num_steps": int(row.num_steps),
            "max_voltage_step": 0.5,
            "formula_charge": row.formula_charge_mp,  # MP's reduced formulas, not the snapshot's form
            "formula_discharge": row.formula_discharge_mp,
            "average_voltage": row.average_voltage,
            "capacity_grav": row.capacity_grav,
            "capacity_vol": row.capacity_vol,
            "energy_grav": row.energy_grav,
            "energy_vol": row.energy_vol,
            "fracA_charge": pairs[0]["fracA_charge"],
            "fracA_discharge": pairs[-1]["fracA_discharge"],
            "stability_charge": row.stability_charge,
            "stability_discharge": row.stability_discharge,
            "id_charge": fmt(row.id_charge),
            "id_discharge": fmt(row.id_discharge),
            "material_ids": [fmt(idx) for idx in sorted(set(pair_ids) | {battery_material})],
            "adj_pairs": pairs,
            "thermo_type": "GGA_GGA+U",
            "last_updated": "2025-09-25T00:00:00",
        })
        for end in ("charge", "discharge"):
            material = getattr(row, f"id_{end}")
            gga = {field: getattr(row, f"{end}_{field}") for field in MIXED_SHIFT}
            mixed = {field: value + MIXED_SHIFT[field] for field, value in gga.items()}
            if material not in summaries:
                thermo += [{"material_id": fmt(material), "thermo_type": thermo_type,
                            "thermo_id": f"{fmt(material)}_{thermo_type}", **energies, "is_stable": False}
                           for thermo_type, energies in (("GGA_GGA+U", gga), ("GGA_GGA+U_R2SCAN", mixed))]
            summaries[material] = {
                "material_id": fmt(material),
                "formula_pretty": "X",
                "symmetry": {
                    "crystal_system": getattr(row, f"{end}_crystal_system"),
                    "symbol": "P1",
                    "number": int(getattr(row, f"{end}_space_group_number")),
                    "point_group": "1",
                    "symprec": 0.1,
                    "version": "2.5.0",
                },
                **mixed,  # what MP's summary holds: the energies of its mixing scheme
                "band_gap": getattr(row, f"{end}_band_gap"),
                "efermi": getattr(row, f"{end}_efermi"),
                "deprecated": False,
            }
    return electrodes, list(summaries.values()), thermo


# ---------------------------------------------------------------------------------------------------
# The stand-in server
# ---------------------------------------------------------------------------------------------------

ROUTES = {
    "/heartbeat": "heartbeat",
    "/materials/insertion_electrodes/": "insertion_electrodes",
    "/materials/summary/": "summary",
    "/materials/thermo/": "thermo",
}

# The query parameters each route declares; like the real API (FastAPI), the stand-in answers 400 to
# any other, so that a parameter the client invents, or one the API does not have, fails here too.
PAGING = {"_limit", "_skip", "_fields", "_all_fields"}
DECLARED = {
    "heartbeat": set(),
    "insertion_electrodes": {"working_ion", "battery_ids", *PAGING},
    "summary": {"material_ids", *PAGING},
    "thermo": {"material_ids", "thermo_types", *PAGING},
}


class FakeMP:
    """A tiny Materials Project API: heartbeat, insertion_electrodes, summary and thermo, with fault
    injection."""

    def __init__(self, electrodes: list[dict], summaries: list[dict], thermo: list[dict] | None = None,
                 key: str = FAKE_KEY, page_cap: int | None = None) -> None:
        self.electrodes = electrodes
        self.page_cap = page_cap
        self.summaries = summaries
        self.thermo = thermo or []
        self.key = key
        self.faults: dict[str, list[str]] = {}
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def do_GET(self):
                fake._handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, address: None  # writes after a client timeout fail
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True)

    def start(self) -> FakeMP:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def inject(self, route: str, *faults: str) -> None:
        self.faults.setdefault(route, []).extend(faults)

    def hits(self, route: str) -> list[dict]:
        return [request for request in self.requests if request["route"] == route]

    # -- request handling -------------------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        params = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        route = ROUTES.get(parts.path)
        sent_key = handler.headers.get("x-api-key")
        with self._lock:
            fault = self.faults.get(route, []).pop(0) if self.faults.get(route) else "ok"
            self.requests.append({"route": route or parts.path, "params": params, "key": sent_key,
                                  "fault": fault, "time": time.monotonic()})
        if route is None:
            return self._send(handler, 404, {"detail": "Not Found"})
        if undeclared := sorted(set(params) - DECLARED[route]):
            return self._send(handler, 400, {"detail": f"Unknown query parameter(s): {', '.join(undeclared)}"})
        if fault == "reset":  # close with RST, no answer
            handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            handler.close_connection = True
            return None
        if fault == "slow":
            time.sleep(SLOW_S)
        if fault == "stall":  # accepts, then answers far later than any timeout of these tests
            time.sleep(STALL_S)
        if fault == "429":
            return self._send(handler, 429, {"detail": "Rate limit exceeded"}, {"Retry-After": "1"})
        if fault.isdigit():
            return self._send(handler, int(fault), {"detail": f"server trouble {fault}"})
        if route != "heartbeat" and sent_key != self.key:
            # Echo the key the way a careless gateway might: the client puts this text in its error.
            return self._send(handler, 401, {"detail": f"Invalid API key {sent_key!s}"})
        if route == "heartbeat":
            body = {"db_version": "2025.09.25", "access_controlled_batch_ids": [], "version": "0.87.3"}
        elif route == "insertion_electrodes":
            ions = set(params.get("working_ion", "").split(",")) - {""}
            docs = [doc for doc in self.electrodes if not ions or doc["working_ion"] in ions]
            body = self._page(docs, params, fault)
        else:
            wanted = {canonical_id(idx) for idx in params.get("material_ids", "").split(",") if idx}
            served = self.summaries if route == "summary" else self.thermo
            docs = [doc for doc in served if canonical_id(doc["material_id"]) in wanted]
            types = set(params.get("thermo_types", "").split(",")) - {""}
            docs = [doc for doc in docs if not types or doc["thermo_type"] in types]
            body = self._page(docs, params, fault)
        payload = json.dumps(body).encode()
        if fault == "truncated":
            return self._send_raw(handler, 200, payload, cut=len(payload) // 2)
        if fault == "badjson":
            return self._send_raw(handler, 200, payload[: len(payload) // 2] + b"<html>oops</html>")
        return self._send_raw(handler, 200, payload)

    def _page(self, docs: list[dict], params: dict, fault: str) -> dict:
        fields = [f for f in params.get("_fields", "").split(",") if f]
        skip = int(params.get("_skip", 0) or 0)
        if fault == "overlap" and skip:
            skip -= 1
        limit = min(int(params.get("_limit", 1000) or 1000), self.page_cap or 1000)
        page = docs[skip: skip + limit]
        if fault == "repeat":
            page = page + page[:1]
        if fields:
            page = [{k: v for k, v in doc.items() if k in fields} for doc in page]
        return {"data": page, "meta": {"api_version": "0.87.3", "time_stamp": "2025-09-25T00:00:00",
                                       "total_doc": len(docs), "max_limit": 1000, "facet": {}}}

    def _send(self, handler, status: int, body: dict, headers: dict | None = None) -> None:
        self._send_raw(handler, status, json.dumps(body).encode(), headers=headers)

    @staticmethod
    def _send_raw(handler, status: int, payload: bytes, headers: dict | None = None,
                  cut: int | None = None) -> None:
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(payload)))
            for name, value in (headers or {}).items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(payload if cut is None else payload[:cut])
            handler.wfile.flush()
        except OSError:  # the client gave up (timeout) before the answer
            pass
        handler.close_connection = True


# ---------------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    """Short backoff (Retry-After stays honoured), small pages and id chunks to exercise pagination."""
    monkeypatch.setattr(mp_transport, "BACKOFF_BASE_S", 0.01)
    monkeypatch.setattr(mp_transport, "BACKOFF_MAX_S", 0.05)
    monkeypatch.setattr(mp_download, "PAGE_SIZE", 2)
    monkeypatch.setattr(mp_download, "SUMMARY_IDS_PER_QUERY", 3)
    monkeypatch.delenv("MP_API_KEY", raising=False)
    monkeypatch.delenv("MP_API_ENDPOINT", raising=False)


@pytest.fixture(autouse=True)
def fresh_heartbeat_cache():
    """mp_api caches the heartbeat per endpoint; a port reused by a later server must not hit that."""
    from mp_api.client import MPRester
    from mp_api.client.core.client import _Rester

    MPRester.get_emmet_version.cache_clear()
    _Rester._get_heartbeat_info.cache_clear()
    yield


def _serve(rows, **kwargs):
    letter_ids = kwargs.pop("letter_ids", False)
    return FakeMP(*build_documents(rows, letter_ids=letter_ids), **kwargs).start()


@pytest.fixture
def server(snapshot_rows):
    fake = _serve(snapshot_rows)
    yield fake
    fake.stop()


def download(fake: FakeMP, **kwargs) -> pd.DataFrame:
    """The downloaded table (the provenance beside it has tests of its own)."""
    options = {"api_key": FAKE_KEY, "endpoint": fake.url, "max_retries": 3, "timeout_s": 5.0}
    options.update(kwargs)
    table, _ = download_electrodes(IONS, WINDOW, **options)
    return table


def assert_one_line_error(error: InputError) -> str:
    text = str(error)
    assert text and "\n" not in text and "Traceback" not in text
    assert error.__cause__ is None and error.__context__ is None  # nothing chained to print
    rendered = "".join(traceback.format_exception(error))
    assert FAKE_KEY not in rendered and FAKE_KEY not in repr(error)
    assert "mp_api" not in rendered
    return text


# ---------------------------------------------------------------------------------------------------
# 1. columns, dtypes and values
# ---------------------------------------------------------------------------------------------------

def test_download_matches_snapshot_rows(server, expected, snapshot_rows):
    table = download(server)

    assert list(table.columns) == list(ELECTRODE_COLUMNS)
    assert {c: str(t) for c, t in table.dtypes.items()} == {c: str(pd.Series(dtype=t).dtype)
                                                            for c, t in ELECTRODE_COLUMNS.items()}
    # Same dtypes as the snapshot file loaded per the contract, and the very same values.
    snapshot_typed = pd.read_csv(SNAPSHOT, nrows=5).astype(ELECTRODE_COLUMNS)
    assert table.dtypes.equals(snapshot_typed.dtypes)
    pd.testing.assert_frame_equal(table, expected, check_exact=True)

    # Window applied (strictly), only the asked ions, sorted by battery_id.
    assert table["battery_id"].tolist() == sorted(EXPECTED_IDS)
    assert ((table["average_voltage"] > WINDOW[0]) & (table["average_voltage"] < WINDOW[1])).all()
    assert set(table["working_ion"]) == set(IONS)

    # Spot checks of the conversions the comparison above relies on.
    row = table.set_index("battery_id").loc["mp-1070735_K"]
    assert snapshot_rows.loc["mp-1070735_K", "formula_charge_mp"] == "K3(FeSe)8"  # what the API sent
    assert (row["formula_charge"], row["formula_discharge"]) == ("K0.38FeSe", "K0.5FeSe")
    assert row["adj_pairs"].startswith("[InsertionVoltagePairDoc(max_delta_volume=")
    assert re.fullmatch(r"mp-\d+", row["id_charge"]) and re.fullmatch(r"mp-\d+", row["id_discharge"])

    # Only parameters the API declares (the stand-in answers 400 to others, as the API does)
    assert all(set(hit["params"]) <= DECLARED[hit["route"]] for hit in server.requests)

    # The client paged (PAGE_SIZE = 2), asked only for its fields, and queried end members in chunks.
    electrode_hits = server.hits("insertion_electrodes")
    assert {hit["params"]["working_ion"] for hit in electrode_hits} == set(IONS)
    assert any("_skip" in hit["params"] for hit in electrode_hits)
    assert "material_ids" in electrode_hits[0]["params"]["_fields"].split(",")
    summary_hits = server.hits("summary")
    asked = [idx for hit in summary_hits for idx in hit["params"]["material_ids"].split(",")]
    assert len(summary_hits) >= 2 and all(len(hit["params"]["material_ids"].split(",")) <= 3
                                          for hit in summary_hits)
    needed = set(expected["id_charge"]) | set(expected["id_discharge"])
    assert set(asked) == needed  # nothing asked for rows outside the window
    # The energies are the GGA/GGA+U thermo documents' (the snapshot's), not the summary's mixed-scheme ones.
    thermo_hits = server.hits("thermo")
    assert {hit["params"]["thermo_types"] for hit in thermo_hits} == {"GGA_GGA+U"}
    assert {idx for hit in thermo_hits for idx in hit["params"]["material_ids"].split(",")} == needed
    assert "energy_per_atom" not in summary_hits[0]["params"]["_fields"].split(",")
    assert all(hit["key"] == FAKE_KEY for hit in electrode_hits + summary_hits + thermo_hits)
    import requests  # the stand-in itself: another parameter is refused

    refused = requests.get(f"{server.url.rstrip('/')}/materials/summary/?material_ids=mp-1&formula=Fe",
                           headers={"x-api-key": FAKE_KEY}, timeout=5)
    assert refused.status_code == 400 and "formula" in refused.json()["detail"]


def test_download_and_snapshot_load_alike(server):
    """Through the workflow's own loader, a download and the snapshot give the same table."""
    downloaded, _ = validate_electrodes(download(server), ions=IONS, voltage_window=WINDOW)
    text = read_electrode_csv(SNAPSHOT)
    text = text[text["battery_id"].isin(EXPECTED_IDS)].sort_values("battery_id")
    from_snapshot, _ = validate_electrodes(text, ions=IONS, voltage_window=WINDOW)
    pd.testing.assert_frame_equal(downloaded, from_snapshot, check_exact=True)


def test_api_key_from_environment(server, expected, monkeypatch):
    monkeypatch.setenv("MP_API_KEY", FAKE_KEY)
    table, _ = download_electrodes(IONS, WINDOW, endpoint=server.url, max_retries=1, timeout_s=5.0)
    pd.testing.assert_frame_equal(table, expected, check_exact=True)


def test_helpers_reproduce_snapshot_formats(snapshot_rows):
    for row in snapshot_rows.itertuples(index=False):
        pairs = parse_adj_pairs(row.adj_pairs)
        assert len(pairs) == row.num_steps
        assert format_adj_pairs(pairs) == row.adj_pairs
        assert mp_documents.normalise_formulas(row.formula_charge_mp, row.formula_discharge_mp,
                                               row.working_ion) == (
            row.formula_charge, row.formula_discharge, row.battery_formula)


# ---------------------------------------------------------------------------------------------------
# 2. transient failures are retried
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fault", ["429", "500", "502", "503", "504", "slow", "truncated", "badjson",
                                   "reset"])
def test_transient_fault_is_retried(server, expected, fault):
    server.inject("insertion_electrodes", fault)
    server.inject("summary", fault)
    table = download(server, timeout_s=SLOW_S / 3 if fault == "slow" else 5.0)
    pd.testing.assert_frame_equal(table, expected, check_exact=True)
    assert server.faults["insertion_electrodes"] == [] and server.faults["summary"] == []
    if fault == "429":  # Retry-After: 1 was honoured
        hits = server.hits("insertion_electrodes")
        assert hits[0]["fault"] == "429" and hits[1]["time"] - hits[0]["time"] >= 0.9


def test_many_faults_in_a_row_then_success(server, expected, caplog):
    # heartbeat: our probe gets a 500 (retried by the adapter); MPRester's own heartbeat gets garbage
    # (its constructor is retried as a whole).
    server.inject("heartbeat", "500", "ok", "badjson")
    # One search: 3 transport retries (429, 500, slow) then a truncated body; re-run: invalid JSON;
    # re-run: a reset (transport retry) then the answer.
    server.inject("insertion_electrodes", "429", "500", "slow", "truncated", "badjson", "reset")
    server.inject("summary", "503", "truncated", "reset")
    with caplog.at_level(logging.WARNING):
        table = download(server, timeout_s=SLOW_S / 3)
    pd.testing.assert_frame_equal(table, expected, check_exact=True)
    assert all(not pending for pending in server.faults.values())
    assert "retry" in caplog.text


# ---------------------------------------------------------------------------------------------------
# 3. rejected key, 4. unreachable / persistently failing server
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("status", [401, 403])
def test_rejected_key_is_one_line_input_error(snapshot_rows, status):
    fake = _serve(snapshot_rows, key=OTHER_KEY)
    try:
        if status == 403:
            fake.inject("insertion_electrodes", "403")
        with pytest.raises(InputError) as caught:
            download(fake)
    finally:
        fake.stop()
    text = assert_one_line_error(caught.value)
    assert f"HTTP {status}" in text and "MP_API_KEY" in text and "rejected the API key" in text
    assert fake.hits("insertion_electrodes")[0]["key"] == FAKE_KEY  # the key did go out, in the header
    assert len(fake.hits("insertion_electrodes")) == 1  # permanent: not retried


def test_closed_port_is_one_line_input_error_after_bounded_retries():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(InputError) as caught:
        download_electrodes(IONS, WINDOW, api_key=FAKE_KEY, endpoint=f"http://127.0.0.1:{port}/",
                            max_retries=2, timeout_s=2.0)
    text = assert_one_line_error(caught.value)
    assert "could not reach" in text and "connection refused" in text and "after 2 retries" in text


def test_a_proxy_that_refuses_the_connection_is_named_in_one_line(monkeypatch):
    """A site proxy (HTTPS_PROXY) answering the tunnel request with 403: the error names the proxy
    and its variables, not the API."""
    tunnels = []

    class RefusingProxy(BaseHTTPRequestHandler):
        def do_CONNECT(self):
            tunnels.append(self.path)
            self.send_response(403)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    proxy = ThreadingHTTPServer(("127.0.0.1", 0), RefusingProxy)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        for name in ("HTTPS_PROXY", "https_proxy"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{proxy.server_address[1]}")
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        with pytest.raises(InputError) as caught:
            download_electrodes(IONS, WINDOW, api_key=FAKE_KEY, endpoint="https://api.materialsproject.org/",
                                max_retries=2, timeout_s=3.0)
    finally:
        proxy.shutdown()
    text = assert_one_line_error(caught.value)
    assert "the proxy refused the connection to https://api.materialsproject.org/ (HTTPS_PROXY / HTTP_PROXY)" in text
    assert tunnels and all(path == "api.materialsproject.org:443" for path in tunnels)


@pytest.mark.parametrize("endpoint", ["api.materialsproject.org", "htps://api.materialsproject.org"])
def test_an_endpoint_without_a_usable_scheme_is_named_and_not_retried(endpoint):
    with pytest.raises(InputError) as caught:
        download_electrodes(IONS, WINDOW, api_key=FAKE_KEY, endpoint=endpoint, max_retries=3, timeout_s=2.0)
    text = assert_one_line_error(caught.value)
    assert "is not a URL the client can reach" in text and "https://" in text
    assert "retr" not in text and "network error" not in text  # nothing was sent, so nothing was retried


def test_a_certificate_that_fails_verification_is_named_with_the_fix(tmp_path):
    """Behind a TLS-intercepting proxy this is the one fact a user needs; it read "network error"."""
    import ssl
    import subprocess
    from http.server import HTTPServer

    key, certificate = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-keyout", str(key), "-out", str(certificate)], check=True, capture_output=True)

    class Answer(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Answer)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with pytest.raises(InputError) as caught:
            download_electrodes(IONS, WINDOW, api_key=FAKE_KEY, endpoint=f"https://127.0.0.1:{httpd.server_address[1]}/",
                                max_retries=1, timeout_s=2.0)
    finally:
        httpd.shutdown()
        httpd.server_close()
    text = assert_one_line_error(caught.value)
    assert "TLS certificate" in text and "self-signed certificate" in text and "REQUESTS_CA_BUNDLE" in text


def test_a_tls_error_that_is_no_certificate_failure_is_retried():
    """An EOF in the TLS handshake is a passing fault; only a failed verification is named as one."""
    import ssl

    import requests

    guard = mp_transport.Guard(key=FAKE_KEY, endpoint="https://example.invalid/", max_retries=2, timeout_s=1.0)
    eof = requests.exceptions.SSLError(ssl.SSLEOFError(8, "EOF occurred in violation of protocol"))
    problem = guard._classify(eof, transport_retried=False)
    assert problem.transient and "certificate" not in problem.message
    verify = requests.exceptions.SSLError(ssl.SSLCertVerificationError(1, "certificate verify failed: self-signed "
                                                                          "certificate (_ssl.c:1000)"))
    problem = guard._classify(verify, transport_retried=False)
    assert not problem.transient and "certificate verify failed: self-signed certificate" in problem.message


@pytest.mark.parametrize("fault, words", [("503", "HTTP 503"), ("badjson", "not valid JSON")])
def test_a_persistent_fault_stops_after_max_retries(server, fault, words):
    server.inject("insertion_electrodes", *[fault] * 20)
    with pytest.raises(InputError) as caught:
        download(server, max_retries=2)
    text = assert_one_line_error(caught.value)
    assert words in text and "after 2 retries" in text
    assert len(server.hits("insertion_electrodes")) == 3


def test_wrong_endpoint_is_one_line_input_error(server):
    with pytest.raises(InputError) as caught:
        download(server, endpoint=server.url + "nowhere/")
    assert "HTTP 404" in assert_one_line_error(caught.value)


def test_http_400_is_one_line_naming_the_likely_cause(server):
    server.inject("insertion_electrodes", "400")
    with pytest.raises(InputError) as caught:
        download(server)
    text = assert_one_line_error(caught.value)
    assert "refused the query (HTTP 400)" in text and "outdated mp-api" in text
    assert "_fields" not in text  # not the query URL cut off at 200 characters
    assert len(server.hits("insertion_electrodes")) == 1  # permanent: not retried


@pytest.mark.parametrize("stalled", [1, 2])
def test_a_stalled_client_heartbeat_times_out_and_is_retried(server, expected, stalled):
    """MPRester's constructor GETs /heartbeat twice with a bare requests.get; either may stall."""
    import requests

    bare_get = requests.get
    server.inject("heartbeat", *["ok"] * stalled, "stall")  # the first is the download's own probe
    table = download(server, timeout_s=SLOW_S / 2)
    pd.testing.assert_frame_equal(table, expected, check_exact=True)
    assert server.faults["heartbeat"] == []
    # the client gave up on the stalled request: it asked again before that answer could have come
    heartbeats = server.hits("heartbeat")
    assert heartbeats[stalled]["fault"] == "stall" and len(heartbeats) > stalled + 1
    assert heartbeats[stalled + 1]["time"] < heartbeats[stalled]["time"] + STALL_S
    assert requests.get is bare_get  # the bounded get was only lent to the constructor


def test_pages_shorter_than_asked_are_an_error_not_a_gap(snapshot_rows):
    """mp_api moves its offset by the page size it asked for: a server serving less would lose rows."""
    fake = _serve(snapshot_rows, page_cap=1)  # PAGE_SIZE is 2 here
    try:
        with pytest.raises(InputError) as caught:
            download(fake)
    finally:
        fake.stop()
    text = assert_one_line_error(caught.value)
    assert re.search(r"downloading the K insertion electrodes failed: the Materials Project counts 5 documents "
                     r"but returned [0-4] distinct ones", text), text


@pytest.mark.parametrize(("route", "served"), [("insertion_electrodes", "counts 5 documents but returned 4"),
                                               ("summary", "counts 3 documents but returned 2"),
                                               ("thermo", "counts 3 documents but returned 2")])
def test_overlapping_pages_are_re_run(server, expected, route, served, caplog):
    """mp_api pages by _skip/_limit with no sort order: a page that repeats its predecessor's last document
    has the right length but misses one, so it is the distinct documents that must match the count."""
    server.inject(route, "ok", "overlap")  # the first query's second page, once
    with caplog.at_level(logging.WARNING):
        table = download(server)
    pd.testing.assert_frame_equal(table, expected, check_exact=True)
    assert server.faults[route] == []
    assert f"{served} distinct ones" in caplog.text and "retry 1 of 3" in caplog.text


def test_persistently_overlapping_pages_are_one_line_input_error(server):
    server.inject("insertion_electrodes", *["overlap"] * 50)
    with pytest.raises(InputError) as caught:
        download(server, max_retries=2)
    text = assert_one_line_error(caught.value)
    assert ("downloading the K insertion electrodes failed: the Materials Project counts 5 documents but "
            "returned 4 distinct ones") in text
    assert "nothing was written" in text and "after 2 retries" in text
    second_pages = [hit for hit in server.hits("insertion_electrodes") if hit["params"].get("_skip") == "2"]
    assert len(second_pages) == 3  # the query ran 1 + max_retries times


def test_a_document_served_twice_counts_once(server, expected, caplog):
    """A repeat of one document is harmless: kept once, and no reason to re-run the query."""
    # on the K query's last page: on an earlier one mp_api would stop a document short, as with an overlap
    server.inject("insertion_electrodes", "ok", "ok", "repeat")
    with caplog.at_level(logging.WARNING):
        table = download(server)
    pd.testing.assert_frame_equal(table, expected, check_exact=True)
    assert "retry" not in caplog.text


def test_counts_ask_for_the_ids_the_searches_ask_for(snapshot_rows):
    """mp_api's searches send material ids above emmet's cut in the letter form (validate_ids); a count
    sending the classic text could count other documents on the real API than the search returns."""
    documents = json.dumps(build_documents(snapshot_rows)).replace('"mp-1176890"', '"mp-3347530"')
    fake = FakeMP(*json.loads(documents)).start()  # the discharged end of mp-758915_Li renumbered
    try:
        table = download(fake)
    finally:
        fake.stop()
    assert "mp-3347530" in set(table["id_discharge"])
    for route in ("summary", "thermo"):
        asked = {"count": set(), "search": set()}
        for hit in fake.hits(route):
            asked["search" if "_fields" in hit["params"] else "count"].add(hit["params"]["material_ids"])
        assert asked["count"] == asked["search"], route
        assert any("mp-hilze" in ids.split(",") for ids in asked["count"]), route


def test_electrodes_left_out_are_counted_in_the_provenance(snapshot_rows, expected):
    """The data report must say what the download itself left out: rows_in counts only what it kept."""
    electrodes, summaries, thermo = build_documents(snapshot_rows)
    malformed = next(doc for doc in electrodes if doc["id_discharge"] == "mp-28849")  # mp-28849_K
    malformed["average_voltage"] = None
    summaries = [doc for doc in summaries if doc["material_id"] != "mp-1176890"]  # discharged mp-758915_Li
    # charged mp-26103_Li has r2SCAN-scheme energies only: no GGA/GGA+U energy to take its voltage from
    charged = snapshot_rows.loc["mp-26103_Li", "id_charge"]
    thermo = [doc for doc in thermo if (doc["material_id"], doc["thermo_type"]) != (charged, "GGA_GGA+U")]
    # an electrode MP built from the mixed scheme's energies: its voltage is not the GGA/GGA+U end members'
    electrodes[list(snapshot_rows["battery_id"]).index("mp-1070735_K")]["thermo_type"] = "GGA_GGA+U_R2SCAN"
    fake = FakeMP(electrodes, summaries, thermo).start()
    try:
        table, provenance = download_electrodes(IONS, WINDOW, api_key=FAKE_KEY, endpoint=fake.url,
                                                max_retries=1)
    finally:
        fake.stop()
    assert provenance["download_dropped"] == {
        mp_documents.OTHER_ION: {"count": 0, "examples": []},
        mp_documents.OTHER_ENERGIES: {"count": 1, "examples": ["mp-1070735_K"]},
        mp_documents.INCOMPLETE: {"count": 1, "examples": ["mp-28849_K"]},
        mp_documents.OUTSIDE_WINDOW: {"count": 3, "examples": sorted(OUTSIDE_WINDOW_IDS)},
        mp_documents.NO_END_MEMBER: {"count": 2, "examples": ["mp-26103_Li", "mp-758915_Li"]},
    }
    left_out = ["mp-28849_K", "mp-758915_Li", "mp-26103_Li", "mp-1070735_K"]
    kept = expected[~expected["battery_id"].isin(left_out)].reset_index(drop=True)
    pd.testing.assert_frame_equal(table, kept, check_exact=True)


def test_one_electrode_under_two_thermo_types_keeps_the_gga_one(snapshot_rows, expected):
    """Both documents share a battery id (emmet's: material ids and ion): counted as one, the distinct
    count fell short of the server's and every retry failed."""
    electrodes, summaries, thermo = build_documents(snapshot_rows)
    gga = electrodes[list(snapshot_rows["battery_id"]).index("mp-1070735_K")]
    mixed = {**gga, "thermo_type": "GGA_GGA+U_R2SCAN", "average_voltage": gga["average_voltage"] + 0.3}
    fake = FakeMP([*electrodes, mixed], summaries, thermo).start()
    try:
        table, provenance = download_electrodes(IONS, WINDOW, api_key=FAKE_KEY, endpoint=fake.url,
                                                max_retries=0)
    finally:
        fake.stop()
    assert provenance["download_dropped"][mp_documents.OTHER_ENERGIES] == {"count": 1, "examples": ["mp-1070735_K"]}
    pd.testing.assert_frame_equal(table, expected, check_exact=True)


def test_documents_of_another_ion_or_without_ids_are_counted(snapshot_rows):
    electrodes, _, _ = build_documents(snapshot_rows.loc[["mp-867522_Cs", "mp-19395_K"]])
    cs, k = electrodes
    anonymous = {field: value for field, value in k.items()
                 if field not in ("material_ids", "id_charge", "adj_pairs")}
    dropped = {reason: [] for reason in mp_documents.DROP_REASONS}
    assert mp_documents.electrode_rows([cs, anonymous], "K", dropped) == []
    assert dropped[mp_documents.OTHER_ION] == ["mp-867522_Cs"]
    assert dropped[mp_documents.INCOMPLETE] == ["mp-1080245 (discharged)"]


def test_two_electrodes_with_one_battery_id_are_an_error(snapshot_rows):
    """Each query's documents are distinct by battery id, so a repeat in the join is two documents for one id."""
    electrodes, summaries, thermo = build_documents(snapshot_rows.loc[["mp-19395_K"]])
    dropped = {reason: [] for reason in mp_documents.DROP_REASONS}
    (row,) = mp_documents.electrode_rows(electrodes, "K", dropped)
    end_members = mp_documents.end_member_properties(summaries, mp_documents.gga_energies(thermo))
    with pytest.raises(InputError) as caught:
        mp_documents.electrode_table([row, {**row, "average_voltage": 1.0}], end_members, dropped)
    text = assert_one_line_error(caught.value)
    assert "mp-19395_K" in text and "nothing was written" in text


def test_the_download_records_where_and_when(server):
    from importlib.metadata import version

    before = datetime.now(timezone.utc).replace(microsecond=0)
    _, provenance = download_electrodes(IONS, WINDOW, api_key=FAKE_KEY, endpoint=server.url, max_retries=1)
    assert provenance["endpoint"] == server.url
    assert provenance["database_version"] == "2025.09.25"  # what the heartbeat said
    assert provenance["mp_api_version"] == version("mp-api")
    assert provenance["emmet_core_version"] == version("emmet-core")
    assert before <= datetime.fromisoformat(provenance["downloaded_at"]) <= datetime.now(timezone.utc)


def test_a_refused_heartbeat_leaves_the_database_version_unknown_and_the_report_names_the_source(server):
    """mp_api answers a 403 heartbeat with an empty db_version and goes on; the report then left out
    where and when the data came from."""
    from electrode_ml.report import section_data

    server.inject("heartbeat", "403", "403", "403")
    table, provenance = download_electrodes(IONS, WINDOW, api_key=FAKE_KEY, endpoint=server.url, max_retries=1)
    assert len(table) and provenance["database_version"] == "unknown (no heartbeat answer)"
    crosstab = pd.crosstab(table["working_ion"], pd.Series("train", index=table.index, name="split"))
    page = section_data({"data_report": {"source": "mp_api", "rows_in": len(table), "rows_out": len(table),
                                         **provenance}, "ion_split": crosstab})
    assert server.url in page and "unknown (no heartbeat answer)" in page and provenance["downloaded_at"] in page


def test_the_data_step_writes_a_download_and_its_provenance(server, tmp_path, monkeypatch):
    """The data rule's step with source mp_api: the table, and the report saying which database it is."""
    from electrode_ml.steps import data_step

    monkeypatch.setenv("MP_API_KEY", FAKE_KEY)
    monkeypatch.setattr(mp_download, "download_electrodes", functools.partial(
        mp_download.download_electrodes, endpoint=server.url, max_retries=1))
    data = tmp_path / "results" / "data"
    output = SimpleNamespace(electrodes=str(data / "electrodes.parquet"), report=str(data / "data_report.json"))
    settings = {"source": "mp_api", "ions": IONS, "voltage_window": list(WINDOW), "on_bad_row": "error",
                "exact_formulas": True}
    data_step(SimpleNamespace(snapshot=None), output, SimpleNamespace(data=settings), 1)
    report = json.loads((data / "data_report.json").read_text())
    assert report["source"] == "mp_api" and report["rows_out"] == len(EXPECTED_IDS)
    assert report["endpoint"] == server.url and report["database_version"] == "2025.09.25"
    assert report["download_dropped"][mp_documents.OUTSIDE_WINDOW] == {"count": len(OUTSIDE_WINDOW_IDS),
                                                                       "examples": sorted(OUTSIDE_WINDOW_IDS)}
    assert "snapshot_sha256" not in report
    assert sorted(pd.read_parquet(data / "electrodes.parquet")["battery_id"]) == sorted(EXPECTED_IDS)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"api_key": None}, "MP_API_KEY"),
    ({"api_key": "  "}, "MP_API_KEY"),
    ({"api_key": "tooshort-LEAKCANARY"}, "32 characters"),
])
def test_missing_or_malformed_key(server, kwargs, message):
    with pytest.raises(InputError) as caught:
        download(server, **kwargs)
    text = assert_one_line_error(caught.value)
    assert message in text and "LEAKCANARY" not in text
    assert server.hits("insertion_electrodes") == []


@pytest.mark.parametrize(("ions", "window"), [(["Xx"], WINDOW), ([], WINDOW), (IONS, (5.0, 0.0)),
                                              (IONS, ("a", 1))])
def test_bad_arguments(ions, window):
    with pytest.raises(InputError) as caught:
        download_electrodes(ions, window, api_key=FAKE_KEY, endpoint="http://127.0.0.1:9/")
    assert_one_line_error(caught.value)


# ---------------------------------------------------------------------------------------------------
# 5. the key never leaks
# ---------------------------------------------------------------------------------------------------

def test_key_never_in_logs_output_or_errors(snapshot_rows, caplog, capsys):
    for name in ("", "urllib3", "mp_api", "requests", "electrode_ml"):
        caplog.set_level(logging.DEBUG, logger=name or None)
    good = _serve(snapshot_rows)
    bad = _serve(snapshot_rows, key=OTHER_KEY)
    try:
        good.inject("insertion_electrodes", "429", "truncated", "badjson", "500")
        good.inject("summary", "reset", "badjson")
        download(good)
        with pytest.raises(InputError) as caught:
            download(bad)
    finally:
        good.stop()
        bad.stop()
    out, err = capsys.readouterr()
    assert bad.hits("insertion_electrodes")[0]["key"] == FAKE_KEY
    assert "Retrying" in caplog.text or "retry" in caplog.text  # the logs did see the trouble
    assert "GET /materials/insertion_electrodes/" in caplog.text  # urllib3 debug lines were captured
    for text in (caplog.text, out, err, str(caught.value), repr(caught.value),
                 "".join(traceback.format_exception(caught.value)),
                 " ".join(str(record.args) for record in caplog.records)):
        assert FAKE_KEY not in text
        assert "LEAKCANARY" not in text


def test_redaction_of_client_messages():
    guard = mp_transport.Guard(key=FAKE_KEY, endpoint="http://x/", max_retries=0, timeout_s=1)
    assert FAKE_KEY not in guard.redact(f"headers {{'x-api-key': '{FAKE_KEY}'}} detail {FAKE_KEY}")
    assert "***" in guard.redact(f"x-api-key: {FAKE_KEY}")


# ---------------------------------------------------------------------------------------------------
# 6. letter-format ids
# ---------------------------------------------------------------------------------------------------

def test_letter_ids_come_back_classic(snapshot_rows, expected):
    fake = _serve(snapshot_rows, letter_ids=True)
    try:
        assert fake.electrodes[0]["id_charge"].startswith("mp-aaa")  # the server really speaks letters
        table = download(fake)
    finally:
        fake.stop()
    pd.testing.assert_frame_equal(table, expected, check_exact=True)
    for column in ("id_charge", "id_discharge"):
        assert table[column].str.fullmatch(r"mp-\d+").all()
    assert not table["adj_pairs"].str.contains("aaa").any()


@pytest.mark.parametrize(("given", "classic"), [
    ("mp-aaaabcdl", "mp-19017"),
    ("mp-bcdl", "mp-19017"),
    ("aaaabcdl", "mp-19017"),
    ("mp-aaaclgnn", "mp-1111695"),
    ("mp-19017", "mp-19017"),
    (" mp-19017 ", "mp-19017"),
    (19017, "mp-19017"),
    ("19017", "mp-19017"),
    ("mvc-11882", "mvc-11882"),
])
def test_to_classic_id(given, classic):
    assert to_classic_id(given) == classic


def test_to_classic_id_objects_and_new_ids():
    from emmet.core.mpid import MPID, AlphaID

    assert to_classic_id(MPID("mp-19017")) == "mp-19017"
    assert to_classic_id(AlphaID(19017, prefix="mp", padlen=8)) == "mp-19017"
    assert to_classic_id(AlphaID("mp-19017")) == "mp-19017"
    # Minted after the letter format: no legacy form in emmet, the number still round-trips.
    new = AlphaID("mp-aaaaaaaaaitpee")
    assert AlphaID(to_classic_id(new)) == new and re.fullmatch(r"mp-\d+", to_classic_id(new))
    for junk in (None, "", "MP-12", "mp-12x", "not an id", True):
        with pytest.raises(ValueError):
            to_classic_id(junk)


def test_the_end_members_download_says_how_far_it_is(server, caplog):
    """The end members' properties come in batches of ids, the download's long step: it logged
    nothing between the electrodes and the end."""
    with caplog.at_level(logging.INFO, logger="electrode_ml.mp_download"):
        download(server)
    lines = [record.getMessage() for record in caplog.records if "of" in record.getMessage()
             and record.getMessage().startswith("end members' properties")]
    total = int(lines[-1].rsplit(" of ", 1)[1].split()[0])
    assert len(lines) == -(-total // mp_download.SUMMARY_IDS_PER_QUERY) >= 2
    assert lines[-1].endswith(f"{total} of {total} materials") and lines[0].split(": ")[1].startswith("3 of ")
