"""Host names compared the way URLs mean them: case, brackets and a trailing dot do not matter.

One rule shared by the egress policy (which hosts are allowed) and secret bindings (which hosts a
secret may go to), so the two can never disagree about whether `API.Store.com.` is
`api.store.com`.

    >>> host_matches("shop.api.store.com", ["*.store.com"])
    True
    >>> host_matches("store.com", ["*.store.com"])
    False
"""

from __future__ import annotations

from collections.abc import Iterable


def host_matches(host: str, patterns: Iterable[str]) -> bool:
    """True when host equals a pattern or matches a `*.example.com` wildcard (1+ labels)."""
    name = canonical_host(host)
    for pattern in patterns:
        wanted = canonical_host(pattern)
        if wanted.startswith("*.") and name.endswith(wanted[1:]) and len(name) > len(wanted) - 1:
            return True
        if name == wanted:
            return True
    return False


def canonical_host(host: str) -> str:
    """The spelling two hosts are compared in: lower case, no brackets, no trailing dot."""
    return host.strip().strip("[]").rstrip(".").lower()


def host_names(hosts: Iterable[str]) -> frozenset[str]:
    """Many hosts in their canonical spelling."""
    return frozenset(canonical_host(host) for host in hosts)
