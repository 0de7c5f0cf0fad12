"""A replica following a shared store: what another replica writes reaches this one's memory.

Evaluations read the registry's memory and never wait on the database; this task is what keeps
that memory current. It consumes a change feed (`PostgresStore.changes`): an id means "re-read
this connector" (`Registry.refresh`), None means "re-read them all" (`Registry.resync`, after
every reconnect and periodically). When a re-read fails (the database is away), the next event
becomes a full resync, so nothing stays missed once the database answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator

from sidecar.errors import StoreError
from sidecar.registry.registry import Registry

log = logging.getLogger(__name__)


class Follower:
    """Applies a change feed to a registry, in a task of its own.

    Usage::

        follower = Follower(registry, store.changes(resync_seconds=30.0))
        follower.start()
        ...
        await follower.stop()
    """

    def __init__(self, registry: Registry, changes: AsyncGenerator[str | None, None]) -> None:
        self._registry = registry
        self._changes = changes
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start following (on the running event loop)."""
        self._task = asyncio.get_running_loop().create_task(self._follow(), name="follower")
        self._task.add_done_callback(_report_unexpected_end)

    async def stop(self) -> None:
        """Stop following; the feed's connection is closed."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _follow(self) -> None:
        needs_resync = False
        # aclosing: a feed stopped while this task waits on the registry still closes its
        # connection now, not whenever the garbage collector finds it.
        async with contextlib.aclosing(self._changes) as changes:
            async for changed in changes:
                try:
                    if changed is None or needs_resync:
                        await self._registry.resync()
                        needs_resync = False
                    else:
                        await self._registry.refresh(changed)
                except StoreError as exc:
                    log.warning("cannot apply a connector change: %s; resyncing next time", exc)
                    needs_resync = True


def _report_unexpected_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error(
            "this replica stopped following connector changes: %r",
            task.exception(),
            exc_info=task.exception(),
        )
