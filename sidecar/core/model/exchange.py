"""What crosses between the engine and the egress: a rendered request, a response, a failure.

The engine hands an `OutboundRequest` to a `send` callable and gets back an `HttpResponse` or a
`SendError`; it never sees httpx or sockets, so it can be tested and benchmarked with any
`send`. SendError belongs to the `EvaluationFailure` tree (`sidecar.core.model.failures`); it
is named here too because it is part of the `Send` contract.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from sidecar.core.model.base import record
from sidecar.core.model.failures import SendError
from sidecar.core.model.outcome import CacheStatus

__all__ = [
    "CacheOptions",
    "HttpResponse",
    "Origin",
    "OutboundRequest",
    "Send",
    "SendError",
    "SendOptions",
]


@record
class OutboundRequest:
    """A rendered request, ready for auth and sending: encoded URL, ordered headers, JSON bytes."""

    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    body: bytes | None


@dataclass(frozen=True, slots=True)
class CacheOptions:
    """A connector's `cache` in seconds, worked out once per connector version.

    `call_timeout_seconds` is the connector's own timeout: a shared (coalesced) call runs for as
    long as the most patient caller may wait, whatever the caller that started it had left.
    """

    ttl_seconds: float
    stale_while_revalidate_seconds: float = 0.0
    stale_if_error_seconds: float = 0.0
    max_entry_bytes: int = 256 * 1024
    ignore_cache_control: bool = False
    call_timeout_seconds: float = 5.0
    connector_version: int = 0
    # An OAuth2 credential's identity (`ClientCredentials.key`, a digest): the entry is keyed by
    # it instead of the Authorization header, so entries outlive the token they were fetched with.
    credential: str | None = None


@record
class SendOptions:
    """What the egress needs to know about one exchange, beyond the request itself."""

    timeout_seconds: float
    max_response_bytes: int
    # Hosts this exchange may reach (the connector's URL host and its allowed_hosts).
    allowed_hosts: tuple[str, ...] = ()
    follow_redirects: bool = False
    # Retry on 502/503/504/429: idempotent methods, or POST/PATCH with an idempotency key.
    retry_on_status: bool = False
    # Lower-cased names of headers carrying credentials: dropped when a redirect leaves the
    # origin.
    credential_headers: frozenset[str] = frozenset()
    # For telemetry: the connector (a metric label), its URL template (to redact the path
    # segments a visitor's variables fill) and whether trace headers may be sent upstream.
    connector_id: str = ""
    url_template: str = ""
    propagate_trace: bool = True
    # The connector's response cache; None (the default) sends every call.
    cache: CacheOptions | None = None

    def with_timeout(self, seconds: float) -> SendOptions:
        """These options with `seconds` for the exchange: every call with a gRPC deadline
        nearer than the connector's timeout. dataclasses.replace walks the fields in Python
        (3.7 us in the evaluation path); every field is named here, and a test fails when a
        new one is not carried."""
        return SendOptions(
            seconds,
            self.max_response_bytes,
            self.allowed_hosts,
            self.follow_redirects,
            self.retry_on_status,
            self.credential_headers,
            self.connector_id,
            self.url_template,
            self.propagate_trace,
            self.cache,
        )


class Origin(NamedTuple):
    """Where a request goes: the egress keeps one breaker and one concurrency limit per origin,
    and telemetry labels attempts and breaker states with it (host lower-cased, port explicit).
    """

    scheme: str
    host: str
    port: int


@record
class HttpResponse:
    """An upstream's answer, body fully read (and capped). Header names are lower-cased."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    attempts: int = 1
    # Set by the response cache (sidecar.egress.cache) for a connector that has one.
    cache_status: CacheStatus | None = None
    cache_age_seconds: float = 0.0


Send = Callable[[OutboundRequest, SendOptions], Awaitable[HttpResponse]]
"""How the engine sends: an async callable that returns a response or raises SendError."""
