"""The one way out: every outbound HTTP request of the sidecar passes through `Egress.send`.

    send(request, options)
      └ within one total time budget (connect, headers, body, retries, redirects):
          judge the destination ─ blocked ──────────────► BLOCKED_DESTINATION, no socket opened
          circuit breaker of (scheme, host, port) ─ open ► CIRCUIT_OPEN, upstream untouched
          per-upstream concurrency limit
          attempt: headers on the wire (`headers`: trace context, defaults), observed by
                   telemetry (CLIENT span, duration), performed by `transport` (guarded
                   resolve, capped body)
          retry? connection never established, or 502/503/504/429 when the method is
                 idempotent (or POST/PATCH with an idempotency key); at most 2 retries,
                 jittered exponential backoff, Retry-After honoured only if it fits the budget
          redirect? only if the connector opts in: at most 3 hops, each judged again,
                 credentials dropped when the origin changes

No other module constructs an HTTP client (tests/security check this).

Retries use `stamina` (well kept, async-native, jittered backoff, a backoff hook that lets
Retry-After set the wait); the breaker is `breaker.CircuitBreaker`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from urllib.parse import urljoin, urlsplit

import stamina

from sidecar.core.compiled_cache import CompiledCache
from sidecar.core.hosts import host_matches
from sidecar.core.model.exchange import (
    HttpResponse,
    Origin,
    OutboundRequest,
    SendError,
    SendOptions,
)
from sidecar.core.model.outcome import Reason
from sidecar.egress.breaker import BreakerState, CircuitBreaker
from sidecar.egress.deadlines import Deadlines
from sidecar.egress.headers import on_the_wire, without_credentials
from sidecar.egress.policy import EgressPolicy, Verdict
from sidecar.egress.pool import Resolver
from sidecar.egress.slots import Slots
from sidecar.egress.transport import DEFAULT_PORTS, ORIGIN_PREFIX, ConnectorFactory, Transport
from sidecar.telemetry.instruments import Telemetry

MAX_REDIRECTS = 3
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_VERDICT_CACHE_LIMIT = 1024


@dataclass(frozen=True, slots=True)
class EgressLimits:
    """Resource limits of the egress (from Settings)."""

    max_connections: int = 256
    per_upstream_concurrency: int = 64
    retries: int = 2
    backoff_initial_seconds: float = 0.05
    backoff_max_seconds: float = 1.0
    breaker_failure_threshold: int = 5
    breaker_cooldown_seconds: float = 10.0
    keepalive_seconds: float = 30.0  # an idle pooled connection is closed after this
    dns_cache_seconds: float = 10.0  # a name's judged addresses are reused this long


class _Tally:
    """Attempts made so far by one `send`, across retries and redirect hops (a timeout
    interrupts the count, so it lives outside the calls it counts)."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


class _RetryableStatusError(Exception):
    """An answer worth retrying (502/503/504/429); carries the response to return if not."""

    def __init__(self, response: HttpResponse) -> None:
        super().__init__(f"status {response.status}")
        self.response = response


class Egress:
    """The shared outbound HTTP client with its guard, breakers and limits.

    Usage::

        egress = Egress(EgressPolicy(allow_http_hosts=("127.0.0.1",),
                                     allow_cidrs=("127.0.0.1/32",)))
        response = await egress.send(request, SendOptions(5.0, 1 << 20))
    """

    def __init__(
        self,
        policy: EgressPolicy,
        limits: EgressLimits | None = None,
        *,
        resolver: Resolver | None = None,
        connector_factory: ConnectorFactory | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.policy = policy
        self._telemetry = telemetry or Telemetry()
        self._limits = limits or EgressLimits()
        self._transport = Transport(
            policy,
            max_connections=self._limits.max_connections,
            keepalive_seconds=self._limits.keepalive_seconds,
            dns_cache_seconds=self._limits.dns_cache_seconds,
            resolver=resolver,
            connector_factory=connector_factory,
        )
        self._breakers: dict[Origin, CircuitBreaker] = {}
        # Allowed destinations by (scheme://authority, the exchange's allowed hosts): a prepared
        # connector's URL judged once, not on every call. Only allowed ones are kept (a refusal
        # is judged again, and says why); names are judged again whenever they are resolved
        # (`transport.GuardedResolver`), so a changed DNS answer is always judged.
        self._origins: CompiledCache[tuple[str, tuple[str, ...]], Origin] = CompiledCache(
            limit=_VERDICT_CACHE_LIMIT
        )
        self._slots: defaultdict[Origin, Slots] = defaultdict(
            lambda: Slots(self._limits.per_upstream_concurrency)
        )
        # The total budget of each send (`deadlines`: asyncio.timeout's rule, one timer for all).
        self._deadlines = Deadlines()

    def breaker_states(self) -> dict[Origin, BreakerState]:
        """The state of every upstream's breaker (for metrics and health detail)."""
        return {origin: breaker.state for origin, breaker in self._breakers.items()}

    async def send(self, request: OutboundRequest, options: SendOptions) -> HttpResponse:
        """Send one request; the response, or SendError with a reason (attempts counted)."""
        deadline = time.monotonic() + options.timeout_seconds
        attempts = _Tally()
        current = request
        try:
            with self._deadlines.within(options.timeout_seconds):
                for hop in range(MAX_REDIRECTS + 1):
                    origin = self._judge(current.url, options)
                    response = await self._send_with_retries(
                        current, origin, options, deadline, attempts
                    )
                    location = response.headers.get("location", "")
                    if not (
                        options.follow_redirects
                        and response.status in REDIRECT_STATUSES
                        and location
                        and hop < MAX_REDIRECTS
                    ):
                        if response.attempts == attempts.count:  # one attempt: as it came
                            return response
                        return replace(response, attempts=attempts.count)
                    current = _redirected(current, response.status, location, options)
        except TimeoutError as exc:
            raise SendError(
                Reason.TIMEOUT,
                f"no complete response within {options.timeout_seconds:g}s",
                attempts=max(attempts.count, 1),
            ) from exc
        except SendError as error:
            error.attempts = attempts.count
            raise
        raise AssertionError("unreachable: the loop returns on its last hop")

    def _judge(self, url: str, options: SendOptions) -> Origin:
        """The destination's origin, or SendError(BLOCKED_DESTINATION) before any socket; an
        allowed destination is judged once (the policy is fixed for the egress's life)."""
        authority = ORIGIN_PREFIX.match(url)
        if authority is None:
            return self._judge_anew(url, options)
        key = (authority.group(), options.allowed_hosts)
        judged = self._origins.cached(key)  # no closure made for the common case
        if judged is not None:
            return judged
        return self._origins.get(key, lambda: self._judge_anew(url, options))

    def _judge_anew(self, url: str, options: SendOptions) -> Origin:
        parts = urlsplit(url)
        host = parts.hostname or ""
        try:
            port = parts.port or DEFAULT_PORTS.get(parts.scheme, 0)
        except ValueError:
            raise _blocked(f"the URL has an invalid port: {url[:80]!r}") from None
        if parts.username is not None or parts.password is not None:
            raise _blocked("credentials in the URL (userinfo) are not allowed")
        if options.allowed_hosts and not host_matches(host, options.allowed_hosts):
            raise _blocked(
                f"{host!r} is not one of this connector's hosts; to allow it, "
                "add it to the connector's allowed_hosts"
            )
        # Both judged, so one message names every setting the destination needs.
        refusals = [
            verdict.reason
            for verdict in (self.policy.judge_scheme(parts.scheme, host), self._judge_host(host))
            if not verdict.allowed
        ]
        if refusals:
            raise _blocked(". ".join(refusals))
        return Origin(parts.scheme, host.lower(), port)

    def _judge_host(self, host: str) -> Verdict:
        verdict, address = self.policy.judge_host(host)
        if verdict.allowed and address is not None and str(address) != host.strip("[]"):
            # An allowed address in an unusual spelling (127.1, 0x7f.1 ...): never legitimate
            # for an API, and resolvers disagree on such forms.
            return Verdict(False, f"{host!r} is a non-canonical address; write {address}")
        return verdict

    async def _send_with_retries(
        self,
        request: OutboundRequest,
        origin: Origin,
        options: SendOptions,
        deadline: float,
        attempts: _Tally,
    ) -> HttpResponse:
        """The first attempt as it is; the retry machinery only once it failed retryably (most
        calls succeed at once, and setting up a retry context costs more than the judging)."""
        first = attempts.count
        try:
            response = await self._attempt(
                request, origin, options, attempts, deadline, first_attempt=first
            )
        except SendError as error:
            if not error.retryable or self._limits.retries < 1:
                raise
            failure: Exception = error
        else:
            if not (options.retry_on_status and response.status in RETRYABLE_STATUSES):
                return response
            if self._limits.retries < 1:
                return response
            failure = _RetryableStatusError(response)
        return await self._retry(failure, request, origin, options, deadline, attempts, first)

    async def _retry(
        self,
        failure: Exception,
        request: OutboundRequest,
        origin: Origin,
        options: SendOptions,
        deadline: float,
        attempts: _Tally,
        first: int,
    ) -> HttpResponse:
        """The attempts after a retryable `failure` of the first, by stamina: its first round
        replays that failure (nothing is sent), so stamina decides and waits exactly as if it had
        made the first attempt itself."""

        def backoff(exc: Exception) -> bool | float:
            remaining = deadline - time.monotonic()
            if isinstance(exc, _RetryableStatusError):
                wait = _retry_after_seconds(exc.response)
                if wait is None:
                    return True
                return wait if wait < remaining else False
            return isinstance(exc, SendError) and exc.retryable

        replayed: Exception | None = failure
        try:
            async for attempt in stamina.retry_context(
                on=backoff,
                attempts=self._limits.retries + 1,
                timeout=dt.timedelta(seconds=max(deadline - time.monotonic(), 0.001)),
                wait_initial=self._limits.backoff_initial_seconds,
                wait_max=self._limits.backoff_max_seconds,
                wait_jitter=self._limits.backoff_initial_seconds,
            ):
                with attempt:
                    if replayed is not None:
                        raising, replayed = replayed, None
                        raise raising
                    response = await self._attempt(
                        request, origin, options, attempts, deadline, first_attempt=first
                    )
                    if options.retry_on_status and response.status in RETRYABLE_STATUSES:
                        raise _RetryableStatusError(response)
                    return response
        except _RetryableStatusError as last:
            return last.response
        raise AssertionError("unreachable: stamina either returns or raises")

    async def _attempt(
        self,
        request: OutboundRequest,
        origin: Origin,
        options: SendOptions,
        attempts: _Tally,
        deadline: float,
        *,
        first_attempt: int,
    ) -> HttpResponse:
        """One attempt, counted only if something may have been sent."""
        breaker = self._breakers.get(origin)
        if breaker is None:
            breaker = self._breakers[origin] = CircuitBreaker(
                failure_threshold=self._limits.breaker_failure_threshold,
                cooldown_seconds=self._limits.breaker_cooldown_seconds,
            )
        if not breaker.allow():
            raise SendError(
                Reason.CIRCUIT_OPEN,
                f"{origin.host} failed repeatedly; calls are paused for up to "
                f"{self._limits.breaker_cooldown_seconds:g}s",
            )
        slots = self._slots[origin]
        if not slots.take():
            await slots.wait()
        try:
            attempts.count += 1
            try:
                # Telemetry observes the attempt (CLIENT span, duration); the egress performs it.
                with self._telemetry.http_attempt(
                    request,
                    options,
                    origin,
                    resend_count=attempts.count - 1,
                    retry=attempts.count - first_attempt > 1,
                ) as observed:
                    telemetry = self._telemetry
                    trace_context = (
                        telemetry.trace_headers()
                        if options.propagate_trace and telemetry.tracing
                        else {}
                    )
                    outgoing = OutboundRequest(
                        request.method,
                        request.url,
                        on_the_wire(request.headers, trace_context),
                        request.body,
                    )
                    response = await self._transport.attempt(outgoing, options.max_response_bytes)
                    observed.record(response)
            except SendError as error:
                if error.reason is Reason.BLOCKED_DESTINATION:
                    attempts.count -= 1  # the resolver refused: nothing was sent
                    breaker.abandon()
                elif error.reason in (
                    Reason.CONNECT_ERROR,
                    Reason.TIMEOUT,
                    Reason.PROTOCOL_ERROR,
                ):
                    breaker.record_failure()
                else:
                    breaker.record_success()  # the upstream answered; the problem is ours
                raise
            except asyncio.CancelledError:
                if time.monotonic() >= deadline - 0.001:
                    breaker.record_failure()  # the budget ran out: the upstream was too slow
                else:
                    breaker.abandon()  # the caller gave up: says nothing about the upstream
                raise
        finally:
            slots.give()
        if response.status >= 500:
            breaker.record_failure()
        else:
            breaker.record_success()
        return response

    async def aclose(self) -> None:
        """Close every pooled connection."""
        await self._transport.aclose()


def _blocked(reason: str) -> SendError:
    return SendError(Reason.BLOCKED_DESTINATION, reason, attempts=0)


def _redirected(
    request: OutboundRequest, status: int, location: str, options: SendOptions
) -> OutboundRequest:
    """The next hop: method rules of RFC 9110, credentials dropped across origins."""
    url = urljoin(request.url, location)
    before, after = urlsplit(request.url), urlsplit(url)
    headers = request.headers
    if (before.scheme, before.hostname, before.port) != (after.scheme, after.hostname, after.port):
        headers = without_credentials(headers, options.credential_headers)
    if status == 303 or (status in (301, 302) and request.method == "POST"):
        headers = tuple((n, v) for n, v in headers if n.lower() != "content-type")
        return OutboundRequest("GET", url, headers, None)
    return OutboundRequest(request.method, url, headers, request.body)


def _retry_after_seconds(response: HttpResponse) -> float | None:
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max((moment - dt.datetime.now(dt.UTC)).total_seconds(), 0.0)
