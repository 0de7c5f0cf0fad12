"""What goes on the wire besides a request's own headers, and what is dropped on the way.

    every attempt        + traceparent/tracestate/baggage of the attempt's span (replacing any
                           header of the same name), unless the connector sets
                           `disable_trace_propagation`; telemetry supplies the values
                         + Accept-Encoding (what `transport` decodes under its caps), User-Agent
    a redirect that      - the connector's credential headers (Authorization, its API key
    leaves the origin      header): a 3xx must not carry a secret to another host

The rules live here, together, so what the sidecar sends can be read in one place; telemetry
observes the attempt but never decides a header.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

Headers = tuple[tuple[str, str], ...]

ACCEPTED_ENCODINGS = "gzip, deflate"
DEFAULT_HEADERS: Headers = (
    ("Accept-Encoding", ACCEPTED_ENCODINGS),
    ("User-Agent", "rules-sidecar"),
)


def on_the_wire(headers: Headers, trace_context: Mapping[str, str]) -> Headers:
    """The headers one attempt sends: the request's, the trace context, then the defaults."""
    if trace_context:
        replaced = {name.lower() for name in trace_context}
        headers = (
            *((name, value) for name, value in headers if name.lower() not in replaced),
            *trace_context.items(),
        )
    return (*headers, *DEFAULT_HEADERS)


def without_credentials(headers: Headers, credential_headers: Collection[str]) -> Headers:
    """`headers` without the credential headers (names lower-cased), for another origin."""
    return tuple((name, value) for name, value in headers if name.lower() not in credential_headers)
