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
    described = len(template) == len(segments) and all(
        expected is None or expected == segment
        for expected, segment in zip(template, segments, strict=True)
    )
    path = "/".join(
        segment if not segment or (described and template[index] is not None) else REDACTED
        for index, segment in enumerate(segments)
    )
    query = "&".join(
        f"{name}={REDACTED}" if separator else name
        for name, separator, _ in (item.partition("=") for item in parts.query.split("&") if item)
    )
    netloc = parts.netloc.rpartition("@")[2]  # never userinfo
    return urlunsplit((parts.scheme, netloc, path, query, ""))


@functools.lru_cache(maxsize=1024)
def _template_segments(url_template: str) -> tuple[str | None, ...]:
    """The template's path segments: the literal text, or None where a placeholder is."""
    if not url_template:
        return ()
    path = urlsplit(url_template).path
    return tuple(None if "{{" in segment else segment for segment in path.split("/"))
