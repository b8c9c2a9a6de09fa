"""Bounded, retried requests to the Materials Project API, and one-line errors for what fails for good.

The resilient client layer under `mp_download.download_electrodes`, kept apart from what is asked for
and from the reading of the documents (mp_documents.py) so that the rules on time, retries and messages
live in one place.

Every HTTP request goes through one ``requests`` adapter (`bounded_adapter`) that bounds it by
``timeout_s`` and retries connection errors, resets, timeouts, HTTP 429 (honouring ``Retry-After``, capped
at ``RETRY_AFTER_MAX_S``) and HTTP 5xx up to ``max_retries`` times with exponential backoff. Failures that
only show once the body is read (truncated body, invalid JSON, an `IncompleteQuery`) are retried by
`Guard.call` re-running the whole query, again at most ``max_retries`` times. So a query page costs at
most (max_retries + 1)**2 requests of at most ``timeout_s`` each, plus capped sleeps. This adapter
replaces mp_api's own (urllib3: 3 retries of 429/502/504 only, Retry-After honoured up to 6 h, 20 s
timeout), so the retries do not multiply. One gap is mp_api's: ``MPRester()`` GETs ``/heartbeat`` twice
with a bare ``requests.get`` (no timeout, no retry), so a server that accepts the connection and then
stalls would hang the job for good: while the client is built those two calls are given ``timeout_s``
(`bounded_heartbeats`), after a bounded heartbeat probe (`check_heartbeat`), and the construction is
retried as a whole.
Anything permanent (bad key, wrong endpoint, retries exhausted, a short download) raises `InputError`
with one line that never contains the API key.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import ssl
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from electrode_ml.errors import InputError

log = logging.getLogger(__name__)

# Backoff between retries, in seconds (module constants so tests can shrink them). The transport retry
# sleeps 0, 2b, 4b, ... and the whole-query retry b, 2b, 4b, ... with b = BACKOFF_BASE_S, each sleep
# capped at BACKOFF_MAX_S; a server's Retry-After is honoured up to RETRY_AFTER_MAX_S.
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 30.0
RETRY_AFTER_MAX_S = 60.0

RETRY_STATUSES = (429, 500, 502, 503, 504)

T = TypeVar("T")


def bounded_adapter(max_retries: int, timeout_s: float):
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
def bounded_heartbeats(timeout_s: float) -> Iterator[None]:
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


class IncompleteQuery(Exception):
    """A query's distinct documents disagree with the server's count of them: re-run the query."""


class _HTTPStatus(Exception):
    def __init__(self, status: int, url: str) -> None:
        super().__init__(f"error status code {status} on URL {url}")
        self.status = status


def check_heartbeat(base: str, adapter) -> None:
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


class Guard:
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
        incomplete = [error for error in chain if isinstance(error, IncompleteQuery)]
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
        if any(isinstance(error, requests.exceptions.MissingSchema | requests.exceptions.InvalidSchema
                          | requests.exceptions.InvalidURL) for error in chain):
            return _Problem(False, f"{where} is not a URL the client can reach (MP_API_ENDPOINT needs "
                                   f"https:// or http://): {_detail(text)}")
        if any(isinstance(error, ssl.SSLCertVerificationError) for error in chain) \
                or "certificate verify failed" in text.lower():  # other TLS errors (an EOF) are retried
            return _Problem(False, f"the TLS certificate of {where} could not be verified ({_tls_detail(text)}); "
                                   "behind a proxy that re-signs TLS, point REQUESTS_CA_BUNDLE at its certificate")
        if any(isinstance(error, requests.exceptions.ProxyError) for error in chain):
            return _Problem(False, f"the proxy refused the connection to {where} (HTTPS_PROXY / HTTP_PROXY): "
                                   f"{_detail(text)}")
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
    return f"network error: {_detail(text)}"


def _tls_detail(text: str) -> str:
    """The verification failure itself (``self-signed certificate``), not urllib3's wrapping of it."""
    match = re.search(r"certificate verify failed: ([^(')\]]+)", text, flags=re.IGNORECASE)
    return f"certificate verify failed: {match.group(1).strip()}" if match else _detail(text)


def _detail(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    detail = lines[-1] if lines else "no detail"
    return detail[:200]


def _retries(count: int) -> str:
    return f"{count} {'retry' if count == 1 else 'retries'}"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())[:500]
