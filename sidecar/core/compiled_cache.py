"""One cache policy for compiled forms: bounded in entries and in bytes, least recently used out.

Backends send the same few nodes, extraction lists and connector versions over and over;
validating and compiling them (pydantic, JMESPath, RE2, templates) on every call would dominate
the hot path. The servicer keys compiled nodes by the bytes of their message, the engine keys
prepared connectors by id and version. Only successful compilations are kept: a build that raises
leaves nothing behind.

Counting entries alone let 40 distinct 3.5 MiB nodes hold 468 MiB (issue 14), so each entry also
has a size, estimated when it is built (`size`, e.g. from the bytes it was compiled from), and
the least recently used entries go until the total fits `max_bytes`; an entry larger than
`max_bytes` on its own is built and returned but not kept.

    >>> cache: CompiledCache[str, int] = CompiledCache(limit=2)
    >>> cache.get("a", lambda: 1), cache.get("b", lambda: 2), cache.get("a", lambda: 99)
    (1, 2, 1)
    >>> cache.get("c", lambda: 3)  # over the limit: "b", the least recently used, goes
    3
    >>> cache.get("b", lambda: 20)
    20
    >>> sized: CompiledCache[str, int] = CompiledCache(limit=10, max_bytes=100, size=lambda n: n)
    >>> sized.get("x", lambda: 60), sized.get("y", lambda: 60), len(sized), sized.bytes
    (60, 60, 1, 60)
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class CompiledCache(Generic[K, T]):
    """Compiled values by key: a repeat costs one lookup; at most `limit` entries and
    `max_bytes` (as `size` estimates them) are kept."""

    def __init__(
        self,
        *,
        limit: int,
        max_bytes: int | None = None,
        size: Callable[[T], int] | None = None,
    ) -> None:
        self._limit = limit
        self._max_bytes = max_bytes
        self._size = size
        self._entries: OrderedDict[K, tuple[T, int]] = OrderedDict()
        self._lock = threading.Lock()  # large requests are compiled in worker threads
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def cached(self, key: K) -> T | None:
        """The cached value for key, or None (nothing is built)."""
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                return None
            self._entries.move_to_end(key)
            return found[0]

    def get(self, key: K, build: Callable[[], T], *, size: int | None = None) -> T:
        """The cached value for key, or build() (which may raise) on first sight.

        `size` is the entry's estimated bytes when the caller knows it up front (else `size()`
        of the constructor, else 0).
        """
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                return found[0]
        built = build()  # outside the lock: two threads may build one key; the last one stays
        if size is None:
            size = self._size(built) if self._size is not None else 0
        if self._max_bytes is not None and size > self._max_bytes:
            return built  # kept by no one once used: the cache never holds more than max_bytes
        with self._lock:
            previous = self._entries.pop(key, None)
            self.bytes -= previous[1] if previous is not None else 0
            self._entries[key] = (built, size)
            self.bytes += size
            while len(self._entries) > self._limit or (
                self._max_bytes is not None and self.bytes > self._max_bytes
            ):
                _, (_, dropped) = self._entries.popitem(last=False)
                self.bytes -= dropped
        return built
