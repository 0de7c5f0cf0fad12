"""What crosses between the engine and the egress: a rendered request, a response, a failure.

The engine hands an `OutboundRequest` to a `send` callable and gets back an `HttpResponse` or a
`SendError`; it never sees httpx or sockets, so it can be tested and benchmarked with any
`send`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from sidecar.model.outcome import Reason


@dataclass(frozen=True, slots=True)
class OutboundRequest:
    """A rendered request, ready for auth and sending: encoded URL, ordered headers, JSON bytes."""

    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    body: bytes | None


@dataclass(frozen=True, slots=True)
class SendOptions:
    """Per-connector limits of one exchange."""

    timeout_seconds: float
    max_response_bytes: int


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """An upstream's answer, body fully read (and capped). Header names are lower-cased."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    attempts: int = 1


class SendError(Exception):
    """No usable response: the reason says why (TIMEOUT, CONNECT_ERROR, DNS_ERROR ...).

    The message is safe to return to callers: it never holds a secret or a request header.
    """

    def __init__(self, reason: Reason, message: str, *, attempts: int = 1) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.attempts = attempts


Send = Callable[[OutboundRequest, SendOptions], Awaitable[HttpResponse]]
"""How the engine sends: an async callable that returns a response or raises SendError."""
