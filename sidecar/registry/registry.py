"""The connector registry: one in-memory view over the store and the connectors file.

Reads (`get`, on every EvaluateNode) are a dict lookup. Writes are serialised by one lock, go to
the store first and change memory only once the commit is durable, so a failed write never leaves
a half-updated registry. The store, not memory, decides versions and checks `expected_version`
(`sidecar/registry/backend.py`): with a shared database another replica may have written since
this one last heard of the id.

How file and API connectors relate: the connectors file is the source of truth for the ids it
declares. Those connectors are read-only at runtime (RegisterConnector and DeleteConnector answer
FAILED_PRECONDITION for them) and are never written to the store; an API-registered connector with
the same id is shadowed by the file's (and a warning is logged). Every other id is managed through
the API and kept in the store across restarts.

Every connector that enters obeys the operator's `secret_hosts`: a registration that would carry a
secret to a host its binding does not name, or a secret with no binding at all (unless the
`allow_unbound_secrets` development setting says so), is refused here (INVALID_ARGUMENT on
`connector.auth`), as the connectors file refuses such a connector when it is loaded
(`load_connectors_file`). Stored connectors registered under older bindings still load; the
engine refuses to send them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import ParamSpec, TypeVar

from sidecar.core.auth import binding_refusals
from sidecar.core.model import Connector, ConnectorSource, ConnectorStatus
from sidecar.core.model.connector import CONNECTOR_ID_PATTERN
from sidecar.core.secrets import SecretBindings
from sidecar.errors import (
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
    ReadOnlyConnectorError,
)
from sidecar.registry.backend import Store

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")

_CONNECTOR_ID = re.compile(CONNECTOR_ID_PATTERN)
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


class Registry:
    """Connectors by id, from the store (API) and the connectors file (read-only).

    Usage::

        registry = Registry(store, bindings=bindings, file_connectors=())
        connector, created = await registry.register(definition, expected_version=0)
    """

    def __init__(
        self,
        store: Store,
        *,
        bindings: SecretBindings,
        file_connectors: Iterable[Connector],
    ) -> None:
        self._store = store
        self._bindings = bindings
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="registry-store")
        self._write_lock = asyncio.Lock()
        self._api = {connector.id: connector for connector in store.load_all()}
        self._file: dict[str, Connector] = {}
        self._merged: dict[str, Connector] = {}
        self.replace_file_connectors(file_connectors)

    def get(self, connector_id: str) -> Connector | None:
        """The connector with this id, or None."""
        return self._merged.get(connector_id)

    def require(self, connector_id: str) -> Connector:
        """The connector with this id, or NotFoundError."""
        connector = self._merged.get(connector_id)
        if connector is None:
            raise NotFoundError(
                f"no connector with id {connector_id!r}", metadata={"connector_id": connector_id}
            )
        return connector

    def list_page(
        self, *, page_size: int, page_token: str, status: ConnectorStatus | None
    ) -> tuple[list[Connector], str]:
        """One page of connectors in id order, and the token of the next page ("" at the end)."""
        if page_size < 0 or page_size > MAX_PAGE_SIZE:
            raise InvalidArgumentError(
                [FieldViolation("page_size", f"must be between 0 and {MAX_PAGE_SIZE}")]
            )
        after = _decode_page_token(page_token)
        size = page_size or DEFAULT_PAGE_SIZE
        matching = [
            connector
            for connector_id, connector in sorted(self._merged.items())
            if connector_id > after and (status is None or connector.status is status)
        ]
        page = matching[:size]
        next_token = page_token_after(page[-1].id) if len(matching) > size else ""
        return page, next_token

    async def register(
        self, connector: Connector, *, expected_version: int | None
    ) -> tuple[Connector, bool]:
        """Create or replace a connector; returns the stored version and whether it was new."""
        refused = secret_host_refusals(connector, self._bindings)
        if refused:
            raise InvalidArgumentError(
                [FieldViolation("connector.auth", problem) for problem in refused]
            )
        async with self._write_lock:
            self._refuse_file_managed(connector.id)
            entering = connector.model_copy(
                update={"update_time": datetime.now(UTC), "source": ConnectorSource.API}
            )
            stored, created = await self._run(
                self._store.save, entering, expected_version=expected_version
            )
            self._api[stored.id] = stored
            # The file wins, even if a reload declared this id while the write was in flight.
            self._merged[stored.id] = self._file.get(stored.id, stored)
            return stored, created

    async def delete(self, connector_id: str, *, expected_version: int | None) -> int:
        """Delete a connector; returns the version deleted."""
        async with self._write_lock:
            self._refuse_file_managed(connector_id)
            deleted = await self._run(
                self._store.remove, connector_id, expected_version=expected_version
            )
            self._api.pop(connector_id, None)
            if connector_id in self._file:  # declared by a reload during the write: it stays
                self._merged[connector_id] = self._file[connector_id]
            else:
                self._merged.pop(connector_id, None)
            return deleted

    async def resync(self) -> None:
        """Re-read every stored connector: a replica of a fleet catching up (startup of its
        change feed, a reconnect, the periodic resync that heals a missed notification)."""
        async with self._write_lock:
            stored = await self._run(self._store.load_all)
            self._api = {connector.id: connector for connector in stored}
            self._merged = {**self._api, **self._file}

    async def refresh(self, connector_id: str) -> None:
        """Re-read one connector another replica changed; under the write lock, so what lands
        in memory is the row as read after every write of this replica."""
        async with self._write_lock:
            stored = await self._run(self._store.get, connector_id)
            if stored is None:
                self._api.pop(connector_id, None)
            else:
                self._api[connector_id] = stored
            if connector_id in self._file:
                self._merged[connector_id] = self._file[connector_id]
            elif stored is None:
                self._merged.pop(connector_id, None)
            else:
                self._merged[connector_id] = stored

    def replace_file_connectors(self, connectors: Iterable[Connector]) -> None:
        """Install a new set of file connectors (startup, or a reload of the file)."""
        self._file = {connector.id: connector for connector in connectors}
        for connector_id in sorted(self._file.keys() & self._api.keys()):
            log.warning(
                "connector %r is declared in the connectors file and also registered through "
                "the API; the file's definition wins",
                connector_id,
            )
        self._merged = {**self._api, **self._file}

    def close(self) -> None:
        """Finish pending writes and close the store."""
        self._writer.shutdown(wait=True)
        self._store.close()

    def __len__(self) -> int:
        return len(self._merged)

    def _refuse_file_managed(self, connector_id: str) -> None:
        if connector_id in self._file:
            raise ReadOnlyConnectorError(
                f"connector {connector_id!r} is declared in the connectors file and is read-only "
                "at runtime; change the file instead",
                metadata={"connector_id": connector_id},
            )

    async def _run(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writer, lambda: function(*args, **kwargs))


def secret_host_refusals(connector: Connector, bindings: SecretBindings) -> list[str]:
    """The rule every connector obeys on entering: each secret is bound, and goes only to its
    bound hosts."""
    return binding_refusals(connector, bindings)


def page_token_after(last_id: str) -> str:
    """The page token of the page that starts after `last_id` (ListConnectors' next_page_token)."""
    return base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


def _decode_page_token(token: str) -> str:
    if not token:
        return ""
    invalid = InvalidArgumentError(
        [FieldViolation("page_token", "not a token returned by ListConnectors")]
    )
    try:
        padded = token + "=" * (-len(token) % 4)
        last_id = base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise invalid from exc
    if not _CONNECTOR_ID.fullmatch(last_id):
        raise invalid
    return last_id
