"""The response cache: a connector's lookups answered from memory, identical calls shared.

    send(request, options)
      ├ options.cache is None ─────────────────────────────────► egress (one attribute check)
      └ key = keyed digest(connector id, version, method, URL, headers, body)
          a fresh entry ───────────────────────────────────────► HIT, nothing sent
          expired, within stale_while_revalidate ──────────────► STALE, one refresh behind it
          an identical call in flight: wait for it ────────────► COALESCED
          otherwise start the call and wait for it ────────────► MISS
          the call failed (timeout, connection, breaker open, 5xx, 429) or this caller's
          deadline came first, and an entry is within stale_if_error ─► STALE_IF_ERROR

Decisions, and why:

- **One call per key in flight** (singleflight, as golang.org/x/sync's `Group.Do`): the call runs
  as its own task with the connector's full timeout; each caller waits on it through a shield for
  at most its own budget. A caller with a short deadline answers in time (TIMEOUT, or the stale
  entry) without cancelling the call for the others; a call whose callers have all gone runs on
  to fill the cache (bounded by the connector's timeout), so the next caller finds the answer
  instead of starting over. `aclose` cancels what still runs.
- **The key is a keyed BLAKE2b digest** of the connector id and version and the request as it
  goes out, auth included: two credentials never share an entry, and neither a secret nor a
  visitor's value is held in a key (the digest's key is random per process). For OAuth2 client
  credentials the credential's identity stands in for the Authorization header, so a refreshed
  token still finds the entries fetched with the last one. A new connector version starts with
  an empty cache; the old entries age out.
- **What is stored**: statuses 200, 203, 204, 300, 301, 404, 410 (RFC 9111's heuristically
  cacheable answers an API lookup gives). The upstream's Cache-Control is honoured: no-store,
  no-cache and private (this cache serves every visitor behind one credential) are not stored,
  `s-maxage`/`max-age` shorten the connector's ttl (never lengthen it), `Age` counts, and
  `Vary: *` is not stored. A connector's `ignore_cache_control` skips all of that and its ttl
  rules, as OPA's `force_cache` does.
- **Bounded in bytes for the process** (`response_cache_max_bytes`), least recently used out
  first; an entry over its connector's `max_entry_bytes` is not stored. The cache lives in the
  process: each replica has its own, and a restart starts empty.

The clock is a parameter, so tests move time instead of sleeping through a ttl.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from functools import partial

from sidecar.core.model.exchange import (
    CacheOptions,
    HttpResponse,
    OutboundRequest,
    Send,
    SendError,
    SendOptions,
)
from sidecar.core.model.outcome import CacheStatus, Reason
from sidecar.telemetry.instruments import Telemetry

STORABLE_STATUSES = frozenset({200, 203, 204, 300, 301, 404, 410})
# Failures a stale entry may stand in for: the upstream (or the way to it) is unwell. A refused
# destination or an oversized answer is the operator's or the connector's matter, not an outage.
STALE_IF_ERROR_REASONS = frozenset(
    {
        Reason.TIMEOUT,
        Reason.CONNECT_ERROR,
        Reason.DNS_ERROR,
        Reason.TLS_ERROR,
        Reason.PROTOCOL_ERROR,
        Reason.CIRCUIT_OPEN,
    }
)
_UNSTORABLE_DIRECTIVES = frozenset({"no-store", "no-cache", "private"})
# Bookkeeping of one entry beyond its body and headers (key, times, objects), roughly.
ENTRY_OVERHEAD_BYTES = 256


@dataclass(slots=True)
class _Entry:
    """One stored response and the moments that bound its use (clock seconds)."""

    response: HttpResponse
    produced_at: float  # when the upstream produced it (its Age header counted)
    fresh_until: float
    revalidate_until: float  # serve stale while one refresh runs, until then
    usable_until: float  # serve stale when a call fails, until then
    size: int

    def answer(self, status: CacheStatus, now: float) -> HttpResponse:
        # attempts=0: nothing was sent for this answer.
        return replace(
            self.response, attempts=0, cache_status=status, cache_age_seconds=now - self.produced_at
        )


class ResponseCache:
    """Wraps the egress's `send` with a per-connector cache; use its `send` in its place::

        cache = ResponseCache(egress.send, max_bytes=64 << 20, telemetry=telemetry)
        engine = Engine(registry, secrets, cache.send, bindings=bindings)

    A connector without `cache` goes straight through; see the module docstring for the rest.
    """

    def __init__(
        self,
        send: Send,
        *,
        max_bytes: int,
        clock: Callable[[], float] = time.monotonic,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._send = send
        self._max_bytes = max_bytes
        self._clock = clock
        self._telemetry = telemetry or Telemetry()
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._bytes = 0
        self._flights: dict[bytes, asyncio.Task[HttpResponse]] = {}
        self._digest_key = os.urandom(16)

    @property
    def size_bytes(self) -> int:
        """Bytes held now (bodies, headers and bookkeeping), at most `max_bytes`."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def send(self, request: OutboundRequest, options: SendOptions) -> Awaitable[HttpResponse]:
        """The `Send` of the engine: cached when the connector asks, else the egress's own."""
        if options.cache is None:
            return self._send(request, options)  # no extra coroutine on the uncached path
        return self._cached(request, options, options.cache)

    def key(self, request: OutboundRequest, options: SendOptions) -> bytes:
        """The entry's key: a keyed digest, so no secret or visitor value is held in it."""
        digest = hashlib.blake2b(digest_size=20, key=self._digest_key)
        cache = options.cache
        version = cache.connector_version if cache is not None else 0
        credential = cache.credential if cache is not None else None
        parts = [options.connector_id, str(version), request.method, request.url]
        if credential is not None:
            parts += ("oauth2-credential", credential)  # stands for the token, which rotates
        for name, value in request.headers:
            if credential is None or name.lower() != "authorization":
                parts += (name.lower(), value)
        for part in parts:
            data = part.encode("utf-8", "surrogateescape")
            digest.update(len(data).to_bytes(4, "big"))
            digest.update(data)
        digest.update(request.body or b"")
        return digest.digest()

    async def _cached(
        self, request: OutboundRequest, options: SendOptions, cache: CacheOptions
    ) -> HttpResponse:
        if self._max_bytes <= 0:
            response = await self._send(request, options)
            return self._observed(options, replace(response, cache_status=CacheStatus.BYPASS))
        key = self.key(request, options)
        now = self._clock()
        entry = self._lookup(key, now)
        if entry is not None and now < entry.fresh_until:
            return self._observed(options, entry.answer(CacheStatus.HIT, now))
        if entry is not None and now < entry.revalidate_until:
            if key not in self._flights:
                self._start(key, request, options, cache)  # the one refresh; nobody waits on it
            return self._observed(options, entry.answer(CacheStatus.STALE, now))
        flight = self._flights.get(key)
        status = CacheStatus.MISS if flight is None else CacheStatus.COALESCED
        if flight is None:
            flight = self._start(key, request, options, cache)
        try:
            async with asyncio.timeout(options.timeout_seconds):
                # The shield: this caller's deadline or cancellation ends its wait, not the call.
                response = await asyncio.shield(flight)
        except TimeoutError:
            failure = SendError(
                Reason.TIMEOUT,
                f"no complete response within {options.timeout_seconds:g}s",
                attempts=1,
            )
            return self._stale_or_raise(key, failure, options, status)
        except SendError as error:
            # A copy per caller: one exception object raised in many tasks tangles tracebacks.
            failure = SendError(
                error.reason, error.message, attempts=error.attempts, retryable=error.retryable
            )
            return self._stale_or_raise(key, failure, options, status)
        if response.status >= 500 or response.status == 429:
            stale = self._stale(key)
            if stale is not None:
                return self._observed(options, stale)
        return self._observed(options, replace(response, cache_status=status))

    def _lookup(self, key: bytes, now: float) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now >= max(entry.revalidate_until, entry.usable_until):
            self._forget(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def _stale(self, key: bytes) -> HttpResponse | None:
        """The entry as a STALE_IF_ERROR answer, if it is within its stale_if_error window."""
        now = self._clock()
        entry = self._entries.get(key)
        if entry is None or now >= entry.usable_until:
            return None
        return entry.answer(CacheStatus.STALE_IF_ERROR, now)

    def _stale_or_raise(
        self, key: bytes, failure: SendError, options: SendOptions, status: CacheStatus
    ) -> HttpResponse:
        stale = self._stale(key) if failure.reason in STALE_IF_ERROR_REASONS else None
        if stale is None:
            self._count(options, status, 0.0)
            raise failure
        return self._observed(options, stale)

    def _start(
        self, key: bytes, request: OutboundRequest, options: SendOptions, cache: CacheOptions
    ) -> asyncio.Task[HttpResponse]:
        call_options = options.with_timeout(cache.call_timeout_seconds)
        flight = asyncio.get_running_loop().create_task(
            self._fetch(key, request, call_options, cache)
        )
        self._flights[key] = flight
        flight.add_done_callback(partial(self._landed, key))
        return flight

    async def _fetch(
        self, key: bytes, request: OutboundRequest, options: SendOptions, cache: CacheOptions
    ) -> HttpResponse:
        response = await self._send(request, options)
        self._store(key, response, cache)
        return response

    def _landed(self, key: bytes, flight: asyncio.Task[HttpResponse]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.cancelled():
            flight.exception()  # retrieved: a refresh nobody waits for must not log its failure

    def _store(self, key: bytes, response: HttpResponse, cache: CacheOptions) -> None:
        lifetime = storable_lifetime(response, cache)
        if lifetime is None:
            return
        fresh_seconds, age_seconds = lifetime
        response_bytes = len(response.body) + sum(
            len(name) + len(value) for name, value in response.headers.items()
        )
        size = response_bytes + ENTRY_OVERHEAD_BYTES
        if response_bytes > cache.max_entry_bytes or size > self._max_bytes:
            return
        now = self._clock()
        produced_at = now - age_seconds
        fresh_until = produced_at + fresh_seconds
        entry = _Entry(
            replace(response, cache_status=None, cache_age_seconds=0.0),
            produced_at,
            fresh_until,
            fresh_until + cache.stale_while_revalidate_seconds,
            fresh_until + cache.stale_if_error_seconds,
            size,
        )
        if now >= max(entry.revalidate_until, entry.usable_until, fresh_until):
            return  # already too old to serve in any way
        self._forget(key)
        self._entries[key] = entry
        self._bytes += size
        while self._bytes > self._max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.size

    def _forget(self, key: bytes) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry.size

    def _observed(self, options: SendOptions, response: HttpResponse) -> HttpResponse:
        if response.cache_status is not None:
            self._count(options, response.cache_status, response.cache_age_seconds)
        return response

    def _count(self, options: SendOptions, status: CacheStatus, age_seconds: float) -> None:
        if self._telemetry.metrics or self._telemetry.tracing:
            self._telemetry.cache_lookup(options.connector_id, status.value, age_seconds)

    async def aclose(self) -> None:
        """Cancel the calls still running (refreshes, and calls whose callers have gone)."""
        flights = list(self._flights.values())
        for flight in flights:
            flight.cancel()
        await asyncio.gather(*flights, return_exceptions=True)


def storable_lifetime(response: HttpResponse, cache: CacheOptions) -> tuple[float, float] | None:
    """(seconds fresh, seconds old already) if the response may be stored, else None.

    >>> from sidecar.core.model.exchange import CacheOptions, HttpResponse
    >>> policy = CacheOptions(ttl_seconds=60)
    >>> storable_lifetime(HttpResponse(200, {"cache-control": "max-age=10", "age": "4"}), policy)
    (10.0, 4.0)
    >>> storable_lifetime(HttpResponse(200, {"cache-control": "no-store"}), policy) is None
    True
    >>> storable_lifetime(HttpResponse(503), policy) is None
    True
    """
    if response.status not in STORABLE_STATUSES:
        return None
    if cache.ignore_cache_control:
        return cache.ttl_seconds, 0.0
    directives = cache_control(response.headers.get("cache-control", ""))
    if _UNSTORABLE_DIRECTIVES & directives.keys():
        return None
    if response.headers.get("vary", "").strip() == "*":
        return None
    fresh = cache.ttl_seconds
    for name in ("s-maxage", "max-age"):  # a shared cache prefers s-maxage
        seconds = _seconds(directives.get(name))
        if seconds is not None:
            fresh = min(fresh, seconds)
            break
    return fresh, _seconds(response.headers.get("age")) or 0.0


def cache_control(value: str) -> dict[str, str]:
    """Cache-Control directives by lower-cased name (value without quotes, "" when none).

    >>> cache_control('Max-Age=30, private="set-cookie", no-transform')
    {'max-age': '30', 'private': 'set-cookie', 'no-transform': ''}
    """
    directives: dict[str, str] = {}
    for part in value.split(","):
        name, _, argument = part.partition("=")
        name = name.strip().lower()
        if name:
            directives.setdefault(name, argument.strip().strip('"'))
    return directives


def _seconds(value: str | None) -> float | None:
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())
