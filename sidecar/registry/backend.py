"""The store interface: what the registry asks of a back end, and the rules every one keeps.

Two back ends implement it: `ConnectorStore` (embedded SQLite, one process, the default) and
`PostgresStore` (one database shared by a fleet of replicas, chosen by `store_url`).

The rules, the same on both (tests/test_store_contract.py runs them on each):

    versions         the store assigns them: 1 for a new id, then +1 per write, per id. They never
                     repeat, also after a delete: a re-created id continues after its last version,
                     so an (id, version) pair a cache may hold always means one definition.
    expected_version None: create or replace. N: the write applies only if the id is at version N
                     now (0: does not exist), checked by the store in the same transaction as the
                     write, so of several writers racing with one expected_version exactly one wins
                     and the others get VersionConflictError (ABORTED on the wire).
    remove           NotFoundError if the id is not stored; the same expected_version check.
    errors           only the project's own: StoreError naming what failed and what to do,
                     VersionConflictError, NotFoundError. Never a driver's exception.

Calls block (a database round trip, an fsync): the registry runs them off the event loop.
`save` and `remove` are named apart from SQLite's older `put`/`delete`, which write a version
given by the caller and stay as they are for the embedded store's own tests.
"""

from __future__ import annotations

import random
from typing import Protocol

from pydantic import ValidationError

from sidecar.core.model import Connector
from sidecar.errors import StoreError, VersionConflictError


class Store(Protocol):
    """A durable home for API-registered connectors, as the registry uses it.

    Usage::

        stored, created = store.save(connector, expected_version=0)   # version 1, created
        store.remove(stored.id, expected_version=stored.version)      # returns 1
    """

    def load_all(self) -> list[Connector]:
        """Every stored connector, in id order (startup, and a full resync)."""
        ...

    def get(self, connector_id: str) -> Connector | None:
        """The stored connector with this id, or None (re-reading one row after a change)."""
        ...

    def save(self, connector: Connector, *, expected_version: int | None) -> tuple[Connector, bool]:
        """Create or replace; the connector as stored (its new version) and whether it is new."""
        ...

    def remove(self, connector_id: str, *, expected_version: int | None) -> int:
        """Delete; returns the version deleted."""
        ...

    def close(self) -> None:
        """Release the connection (and any lock)."""
        ...


class StoreUnreachableError(StoreError):
    """The store cannot be reached now (refused, timed out, cut, starting up): an outage, retried
    with backoff at startup, UNAVAILABLE for a write. A refusal by the database (a wrong password,
    a missing database) is a plain StoreError: no retry fixes a configuration."""


def check_expected_version(connector_id: str, expected: int | None, current: int) -> None:
    """VersionConflictError unless `expected` is None or the id's current version (0: absent)."""
    if expected is not None and expected != current:
        state = f"is at version {current}" if current else "does not exist"
        raise VersionConflictError(
            f"connector {connector_id!r} {state}, but expected_version was {expected}; "
            "read it again and retry",
            metadata={
                "connector_id": connector_id,
                "expected_version": str(expected),
                "current_version": str(current),
            },
        )


def parse_definition(connector_id: str, definition: str, where: str) -> Connector:
    """A stored row's connector; StoreError naming the id and the store if it cannot be read."""
    try:
        return Connector.model_validate_json(definition)
    except ValidationError as exc:
        raise StoreError(
            f"connector {connector_id!r} in store {where} cannot be read: "
            f"{exc.error_count()} invalid field(s), first: {exc.errors()[0]['msg']}"
        ) from exc


class Backoff:
    """Exponential retry delays, bounded and jittered: `first` doubling up to `most`, each
    drawn from [half, all] of its step, so replicas that lost the database together do not
    come back in step.

    >>> backoff = Backoff(0.5, 10.0)
    >>> 0.25 <= backoff.next() <= 0.5, all(0 < backoff.next() <= 10.0 for _ in range(20))
    (True, True)
    """

    def __init__(self, first: float, most: float) -> None:
        self._first = first
        self._most = most
        self._step = first

    def next(self) -> float:
        """The delay before the next attempt; each call doubles the step, up to `most`."""
        step = self._step
        self._step = min(step * 2, self._most)
        return random.uniform(step / 2, step)  # noqa: S311 (jitter, not a secret)

    def reset(self) -> None:
        """Back to `first` (after a success)."""
        self._step = self._first
