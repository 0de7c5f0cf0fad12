"""Circuit breakers, one per upstream (scheme, host, port).

A CRM outage must not make every visitor wait for a timeout: after `failure_threshold`
consecutive failures (connection errors, timeouts, 5xx) the breaker opens and calls fail at once
with CIRCUIT_OPEN, without touching the upstream; after `cooldown_seconds` one probe is let
through (half-open) and its result closes or re-opens the breaker. Other upstreams are unaffected.

Hand-written rather than a library: the async breakers on PyPI (aiobreaker, purgatory) are
unmaintained or pull in storage back ends, and the whole state machine is the 40 lines below.

    >>> breaker = CircuitBreaker(failure_threshold=2, cooldown_seconds=10, clock=lambda: 0.0)
    >>> breaker.record_failure(); breaker.record_failure(); breaker.allow()
    False
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable


class BreakerState(enum.StrEnum):
    """Where a breaker stands."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Consecutive-failure breaker with a single half-open probe."""

    def __init__(
        self,
        *,
        failure_threshold: int,
        cooldown_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold = failure_threshold
        self._cooldown = cooldown_seconds
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probe_in_flight = False

    @property
    def state(self) -> BreakerState:
        """CLOSED, OPEN, or HALF_OPEN once the cool-down has passed."""
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at >= self._cooldown:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def allow(self) -> bool:
        """May a call go out now? In HALF_OPEN only one probe at a time."""
        if self._opened_at is None:  # CLOSED, as nearly always: no property call
            return True
        state = self.state  # OPEN or HALF_OPEN from here
        if state is BreakerState.HALF_OPEN and not self._probe_in_flight:
            self._probe_in_flight = True
            return True
        return False

    def record_success(self) -> None:
        """The upstream answered: close."""
        self._failures = 0
        self._opened_at = None
        self._probe_in_flight = False

    def abandon(self) -> None:
        """An attempt ended without a verdict on the upstream (cancelled, refused by us)."""
        self._probe_in_flight = False

    def record_failure(self) -> None:
        """The upstream failed: count, and open (again) at the threshold or after a probe."""
        self._failures += 1
        if self._probe_in_flight or self._failures >= self._threshold:
            self._opened_at = self._clock()
        self._probe_in_flight = False
