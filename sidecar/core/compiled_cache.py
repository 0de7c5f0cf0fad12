"""One cache policy for compiled forms: bounded, least recently used out.

Backends send the same few nodes, extraction lists and connector versions over and over;
validating and compiling them (pydantic, JMESPath, RE2, templates) on every call would dominate
the hot path. The servicer keys compiled nodes by the bytes of their message, the engine keys
prepared connectors by id and version. Only successful compilations are kept: a build that raises
leaves nothing behind.

    >>> cache: CompiledCache[str, int] = CompiledCache(limit=2)
    >>> cache.get("a", lambda: 1), cache.get("b", lambda: 2), cache.get("a", lambda: 99)
    (1, 2, 1)
    >>> cache.get("c", lambda: 3)  # over the limit: "b", the least recently used, goes
    3
    >>> cache.get("b", lambda: 20)
    20
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class CompiledCache(Generic[K, T]):
    """Compiled values by key: a repeat costs one lookup; at most `limit` entries are kept."""

    def __init__(self, *, limit: int) -> None:
        self._limit = limit
        self._entries: OrderedDict[K, T] = OrderedDict()

    def get(self, key: K, build: Callable[[], T]) -> T:
        """The cached value for key, or build() (which may raise) on first sight."""
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
            return found
        built = self._entries[key] = build()
        if len(self._entries) > self._limit:
            self._entries.popitem(last=False)
        return built
