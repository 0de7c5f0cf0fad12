"""sidecar.egress.Egress against real loopback upstreams (tests/upstreams.py).

Each test runs its own event loop with `asyncio.run` and closes its Egress; the upstreams run in
their own thread. The default policy refuses loopback and plain http, so most tests use
LOOPBACK_POLICY, which opens exactly 127.0.0.1. Failures are asserted by reason, never by how
long they took.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import ssl
import zlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from sidecar.core.model import Reason
from sidecar.core.model.exchange import HttpResponse, OutboundRequest, SendError, SendOptions
from sidecar.egress import Egress, EgressLimits, EgressPolicy
from sidecar.egress.http1 import (
    ConnectError,
    DisconnectedError,
    MalformedResponseError,
    RequestError,
    ResolveError,
)
from sidecar.egress.transport import DestinationBlockedError, failure_of, wire_url
from tests.support.loopback import LOOPBACK_POLICY
from tests.support.upstreams import MALFORMED, ORDER_API_KEY, ORDERS, Upstream

T = TypeVar("T")
DEFAULT_OPTIONS = SendOptions(timeout_seconds=5.0, max_response_bytes=1024 * 1024)
NO_RETRIES = EgressLimits(retries=0)
PROXY_VARIABLES = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
)


def get(url: str, *headers: tuple[str, str]) -> OutboundRequest:
    return OutboundRequest("GET", url, tuple(headers), None)


def with_egress(
    use: Callable[[Egress], Awaitable[T]],
    policy: EgressPolicy = LOOPBACK_POLICY,
    limits: EgressLimits = NO_RETRIES,
) -> T:
    """Run `use` with a fresh Egress in a fresh event loop; the Egress is always closed."""

    async def main() -> T:
        egress = Egress(policy, limits)
        try:
            return await use(egress)
        finally:
            await egress.aclose()

    return asyncio.run(main())


def send(
    request: OutboundRequest, options: SendOptions = DEFAULT_OPTIONS, **egress: Any
) -> HttpResponse:
    """One request through a fresh Egress (`policy=`, `limits=` as for `with_egress`)."""
    return with_egress(lambda client: client.send(request, options), **egress)


def send_error(
    request: OutboundRequest, options: SendOptions = DEFAULT_OPTIONS, **egress: Any
) -> SendError:
    with pytest.raises(SendError) as caught:
        send(request, options, **egress)
    return caught.value


# ---------------------------------------------------------------------------------------------
# Responses that arrive
# ---------------------------------------------------------------------------------------------


def test_json_response_comes_back_with_status_and_full_body(upstream: Upstream) -> None:
    response = send(get(upstream.url("/orders/A-10023"), ("X-API-Key", ORDER_API_KEY)))

    assert response.status == 200
    assert json.loads(response.body) == ORDERS["A-10023"]
    assert response.attempts == 1


def test_request_goes_out_with_its_method_headers_and_body(upstream: Upstream) -> None:
    request = OutboundRequest(
        "PATCH",
        upstream.url("/echo/orders/A%2F1?expand=items%20and%20more"),
        (("Content-Type", "application/json"), ("X-Trace", "t-1")),
        b'{"qty":2}',
    )

    echoed = json.loads(send(request).body)

    assert echoed["method"] == "PATCH"
    assert echoed["raw_path"] == "/echo/orders/A%2F1"
    assert echoed["query"] == "expand=items%20and%20more"
    headers = {name.lower(): value for name, value in echoed["headers"]}
    assert headers["content-type"] == "application/json"
    assert headers["x-trace"] == "t-1"
    assert echoed["body"] == '{"qty":2}'


def test_response_header_names_are_lower_cased_and_repeats_joined(upstream: Upstream) -> None:
    async def headers(request: web.Request) -> web.StreamResponse:
        multi = CIMultiDict([("X-Custom-Header", "one"), ("X-Multi", "a"), ("X-Multi", "b")])
        return web.Response(text="{}", headers=multi, content_type="application/json")

    upstream.route("/headers", headers)

    response = send(get(upstream.url("/headers")))

    assert response.headers["x-custom-header"] == "one"
    assert response.headers["x-multi"] == "a, b"
    assert all(name == name.lower() for name in response.headers)


def test_redirect_is_returned_as_the_answer_and_not_followed(upstream: Upstream) -> None:
    response = send(get(upstream.url("/redirect")))

    assert response.status == 302
    assert response.headers["location"] == "/redirected"
    assert upstream.hits("/redirected") == 0


def test_error_statuses_are_responses_not_failures(upstream: Upstream) -> None:
    statuses = [send(get(upstream.url(f"/status/{code}"))).status for code in (404, 500, 503)]

    assert statuses == [404, 500, 503]


def test_empty_204_response_has_an_empty_body(upstream: Upstream) -> None:
    response = send(get(upstream.url("/empty")))

    assert (response.status, response.body) == (204, b"")


def test_gzip_encoded_body_is_decoded(upstream: Upstream) -> None:
    document = {"status": "shipped", "padding": "z" * 2000}

    async def gzipped(request: web.Request) -> web.StreamResponse:
        body = gzip.compress(json.dumps(document).encode())
        headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
        return web.Response(body=body, headers=headers)

    upstream.route("/gzipped", gzipped)

    response = send(get(upstream.url("/gzipped")))

    assert json.loads(response.body) == document


def test_body_that_is_not_valid_gzip_is_a_protocol_error(upstream: Upstream) -> None:
    upstream.respond(
        "/bad-gzip",
        body=b"this is not gzip at all",
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )

    assert send_error(get(upstream.url("/bad-gzip"))).reason is Reason.PROTOCOL_ERROR


# ---------------------------------------------------------------------------------------------
# Size cap
# ---------------------------------------------------------------------------------------------


def test_body_exactly_at_the_cap_is_accepted(upstream: Upstream) -> None:
    upstream.respond("/thousand", body=b"x" * 1000)

    response = send(get(upstream.url("/thousand")), SendOptions(5.0, 1000))

    assert len(response.body) == 1000


def test_declared_body_one_byte_over_the_cap_is_response_too_large(upstream: Upstream) -> None:
    upstream.respond("/thousand", body=b"x" * 1000)

    error = send_error(get(upstream.url("/thousand")), SendOptions(5.0, 999))

    assert error.reason is Reason.RESPONSE_TOO_LARGE


def test_huge_body_with_content_length_is_response_too_large(upstream: Upstream) -> None:
    assert send_error(get(upstream.url("/huge"))).reason is Reason.RESPONSE_TOO_LARGE


def test_declared_oversize_body_is_refused_before_reading_it(upstream: Upstream) -> None:
    # /huge-stalled declares 2 MiB and then sends nothing for longer than this budget: a client
    # that waited for the body would end in TIMEOUT, not RESPONSE_TOO_LARGE.
    error = send_error(get(upstream.url("/huge-stalled")), SendOptions(1.5, 1024 * 1024))

    assert error.reason is Reason.RESPONSE_TOO_LARGE


def test_huge_chunked_body_without_content_length_is_response_too_large(
    upstream: Upstream,
) -> None:
    assert send_error(get(upstream.url("/huge-chunked"))).reason is Reason.RESPONSE_TOO_LARGE


@pytest.mark.parametrize(("cap", "accepted"), [(1000, True), (999, False)])
def test_chunked_body_is_counted_against_the_cap(
    upstream: Upstream, cap: int, accepted: bool
) -> None:
    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(10):
            await response.write(b"y" * 100)
        await response.write_eof()
        return response

    upstream.route("/chunked", chunked)
    request = get(upstream.url("/chunked"))

    if accepted:
        assert send(request, SendOptions(5.0, cap)).body == b"y" * 1000
    else:
        assert send_error(request, SendOptions(5.0, cap)).reason is Reason.RESPONSE_TOO_LARGE


# ---------------------------------------------------------------------------------------------
# No usable response: one reason each
# ---------------------------------------------------------------------------------------------


def test_connection_refused_is_connect_error(refused_url: str) -> None:
    assert send_error(get(refused_url)).reason is Reason.CONNECT_ERROR


def test_upstream_slower_than_the_budget_is_timeout(upstream: Upstream) -> None:
    error = send_error(get(upstream.url("/slow")), SendOptions(0.3, 1024 * 1024))

    assert error.reason is Reason.TIMEOUT


def test_drip_fed_body_is_cut_at_the_total_budget_as_timeout(upstream: Upstream) -> None:
    # One byte every 0.3 s never leaves the socket idle for a whole second, so only a total
    # budget (not a per-read timeout) can end this exchange within 1 s.
    error = send_error(get(upstream.url("/drip")), SendOptions(1.0, 1024 * 1024))

    assert error.reason is Reason.TIMEOUT


def test_connection_reset_mid_body_is_a_connection_or_protocol_error(upstream: Upstream) -> None:
    error = send_error(get(upstream.raw_url("/reset")))

    assert error.reason in (Reason.CONNECT_ERROR, Reason.PROTOCOL_ERROR)


@pytest.mark.parametrize("path", sorted(MALFORMED))
def test_malformed_response_is_protocol_error(upstream: Upstream, path: str) -> None:
    assert send_error(get(upstream.raw_url(path))).reason is Reason.PROTOCOL_ERROR


def test_unresolvable_host_is_dns_error() -> None:
    # .invalid never resolves (RFC 6761); only the local resolver is asked.
    error = send_error(get("https://nonexistent.invalid/orders/1"))

    assert error.reason is Reason.DNS_ERROR


def test_tls_handshake_with_a_plain_http_port_is_tls_error(upstream: Upstream) -> None:
    assert send_error(get(upstream.https_url("/json"))).reason is Reason.TLS_ERROR


def test_failure_messages_never_echo_request_headers(refused_url: str) -> None:
    error = send_error(get(refused_url, ("X-API-Key", "canary-secret-value")))

    assert "canary-secret-value" not in f"{error.message} {error}"


# ---------------------------------------------------------------------------------------------
# Proxies, pooling, logging
# ---------------------------------------------------------------------------------------------


def point_proxy_variables_at(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.setenv(name, url)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)


def test_proxy_trap_sees_clients_that_honour_proxy_variables(
    upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The control for the next test: the trap does see a client that trusts the environment.
    point_proxy_variables_at(monkeypatch, upstream.trap_url)

    async def trusting_client() -> None:
        async with aiohttp.ClientSession(trust_env=True) as session:
            with pytest.raises(aiohttp.ClientError):
                await session.get(upstream.url("/json"))

    asyncio.run(trusting_client())

    assert upstream.trap_connections >= 1  # aiohttp retries an idempotent request once
    assert upstream.hits("/json") == 0


def test_proxy_environment_variables_are_ignored(
    upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    point_proxy_variables_at(monkeypatch, upstream.trap_url)

    response = send(get(upstream.url("/json")))

    assert response.status == 200
    assert upstream.trap_connections == 0
    assert upstream.hits("/json") == 1


def test_sequential_requests_reuse_one_keep_alive_connection(upstream: Upstream) -> None:
    async def twenty(egress: Egress) -> list[int]:
        return [
            (await egress.send(get(upstream.url("/json")), DEFAULT_OPTIONS)).status
            for _ in range(20)
        ]

    statuses = with_egress(twenty)

    assert statuses == [200] * 20
    assert upstream.hits("/json") == 20
    assert upstream.connections == 1


@pytest.fixture
def httpx_logger_unset() -> Any:
    """The httpx logger as a fresh process has it (no level), restored afterwards."""
    logger = logging.getLogger("httpx")
    saved = logger.level
    logger.setLevel(logging.NOTSET)
    yield logger
    logger.setLevel(saved)


def test_request_urls_are_not_logged_at_info(
    upstream: Upstream, caplog: pytest.LogCaptureFixture, httpx_logger_unset: logging.Logger
) -> None:
    caplog.set_level(logging.INFO)

    send(get(upstream.url("/json?api_key=canary")))

    assert upstream.hits("/json") == 1
    assert "canary" not in caplog.text
    assert all("canary" not in record.getMessage() for record in caplog.records)


def test_no_url_is_logged_even_when_httpx_logs_at_info(
    upstream: Upstream, caplog: pytest.LogCaptureFixture, httpx_logger_unset: logging.Logger
) -> None:
    # A logging config may turn httpx up out of habit: the egress does not use httpx, and its
    # aiohttp transport writes no request line.
    caplog.set_level(logging.DEBUG)

    async def use(egress: Egress) -> HttpResponse:
        httpx_logger_unset.setLevel(logging.INFO)
        return await egress.send(get(upstream.url("/json?api_key=canary")), DEFAULT_OPTIONS)

    with_egress(use)

    assert "canary" not in caplog.text
    assert "/json" not in caplog.text


# ---------------------------------------------------------------------------------------------
# The destination guard: judged before any socket opens
# ---------------------------------------------------------------------------------------------


def test_default_policy_refuses_loopback_without_connecting(upstream: Upstream) -> None:
    error = send_error(get(upstream.url("/json")), policy=EgressPolicy())

    assert error.reason is Reason.BLOCKED_DESTINATION
    assert error.attempts == 0
    assert upstream.connections == 0
    # The refusal names every setting the destination needs (http and loopback here), and that
    # loopback opens only when named.
    assert "add 127.0.0.1 to egress_allow_http_hosts" in error.message
    assert "127.0.0.1 is loopback; to allow it, add it" in error.message
    assert "egress_allow_cidrs (a wider range does not open it)" in error.message


def test_plain_http_is_refused_unless_the_host_is_listed(upstream: Upstream) -> None:
    https_only = EgressPolicy(allow_cidrs=("127.0.0.1/32",))

    error = send_error(get(upstream.url("/json")), policy=https_only)

    assert error.reason is Reason.BLOCKED_DESTINATION
    assert upstream.connections == 0
    assert "add 127.0.0.1 to egress_allow_http_hosts" in error.message


@pytest.mark.parametrize("host", ["127.1", "2130706433", "0x7f.0.0.1", "localhost"])
def test_other_spellings_of_loopback_are_refused(upstream: Upstream, host: str) -> None:
    policy = EgressPolicy(allow_cidrs=("127.0.0.1/32",), allow_http_hosts=(host, "127.0.0.1"))

    error = send_error(get(f"http://{host}:{upstream.port}/json"), policy=policy)

    assert error.reason is Reason.BLOCKED_DESTINATION
    assert upstream.connections == 0


def test_host_outside_the_connectors_hosts_is_refused(upstream: Upstream) -> None:
    options = SendOptions(5.0, 1024 * 1024, allowed_hosts=("api.example.com",))

    error = send_error(get(upstream.url("/json")), options)

    assert error.reason is Reason.BLOCKED_DESTINATION
    assert "add it to the connector's allowed_hosts" in error.message
    assert upstream.connections == 0


def test_a_judged_destination_is_judged_again_for_other_hosts_or_other_credentials(
    upstream: Upstream,
) -> None:
    """The verdict of a connector's destination is kept (judged once), but keyed by everything it
    depends on: another exchange's allowed hosts or userinfo in the URL are judged anew."""
    allowed = SendOptions(5.0, 1024 * 1024, allowed_hosts=("127.0.0.1",))
    elsewhere = SendOptions(5.0, 1024 * 1024, allowed_hosts=("api.example.com",))
    url = upstream.url("/json")

    async def use(egress: Egress) -> list[int | Reason]:
        seen: list[int | Reason] = []
        for request, options in [
            (get(url), allowed),
            (get(url), elsewhere),
            (get(url.replace("http://", "http://user:pw@")), allowed),
            (get(url), allowed),
        ]:
            try:
                seen.append((await egress.send(request, options)).status)
            except SendError as error:
                seen.append(error.reason)
        return seen

    assert with_egress(use) == [
        200,
        Reason.BLOCKED_DESTINATION,
        Reason.BLOCKED_DESTINATION,
        200,
    ]
    assert upstream.hits("/json") == 2


# ---------------------------------------------------------------------------------------------
# Retries and circuit breakers
# ---------------------------------------------------------------------------------------------

TWO_RETRIES = EgressLimits(retries=2, backoff_initial_seconds=0.01, backoff_max_seconds=0.05)
RETRY_ON_STATUS = SendOptions(5.0, 1024 * 1024, retry_on_status=True)


def flaky(statuses: list[int]) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A handler answering the given statuses in turn, then 200."""
    remaining = list(statuses)

    async def handler(request: web.Request) -> web.StreamResponse:
        code = remaining.pop(0) if remaining else 200
        return web.json_response({"status": code}, status=code)

    return handler


def test_503_is_retried_until_the_retries_run_out(upstream: Upstream) -> None:
    response = send(get(upstream.url("/status/503")), RETRY_ON_STATUS, limits=TWO_RETRIES)

    assert (response.status, response.attempts) == (503, 3)
    assert upstream.hits("/status/503") == 3


def test_retry_that_succeeds_returns_the_success(upstream: Upstream) -> None:
    upstream.route("/flaky", flaky([502, 503]))

    response = send(get(upstream.url("/flaky")), RETRY_ON_STATUS, limits=TWO_RETRIES)

    assert (response.status, response.attempts) == (200, 3)


@pytest.mark.parametrize(
    ("path", "options"),
    [("/status/503", DEFAULT_OPTIONS), ("/status/500", RETRY_ON_STATUS)],
    ids=["not-idempotent", "500-is-not-retryable"],
)
def test_status_is_not_retried_when_it_is_not_safe_or_not_transient(
    upstream: Upstream, path: str, options: SendOptions
) -> None:
    response = send(get(upstream.url(path)), options, limits=TWO_RETRIES)

    assert response.attempts == 1
    assert upstream.hits(path) == 1


def test_retry_after_beyond_the_budget_is_not_waited_for(upstream: Upstream) -> None:
    upstream.respond("/busy", status=503, json={"busy": True}, headers={"Retry-After": "30"})

    response = send(get(upstream.url("/busy")), RETRY_ON_STATUS, limits=TWO_RETRIES)

    assert (response.status, response.attempts) == (503, 1)


@pytest.mark.parametrize(
    ("path", "limits", "attempts"),
    [("refused", TWO_RETRIES, 3), ("refused", NO_RETRIES, 1), ("/huge", NO_RETRIES, 1)],
    ids=["refused-retried-twice", "refused-once", "too-large-once"],
)
def test_failed_exchange_reports_every_attempt_made(
    upstream: Upstream, refused_url: str, path: str, limits: EgressLimits, attempts: int
) -> None:
    url = refused_url if path == "refused" else upstream.url(path)

    assert send_error(get(url), limits=limits).attempts == attempts


def test_refused_connection_stays_connect_error_across_retries(refused_url: str) -> None:
    assert send_error(get(refused_url), limits=TWO_RETRIES).reason is Reason.CONNECT_ERROR


def test_breaker_opens_after_consecutive_failures_without_touching_the_upstream(
    upstream: Upstream,
) -> None:
    limits = EgressLimits(retries=0, breaker_failure_threshold=2, breaker_cooldown_seconds=60)

    async def calls(egress: Egress) -> list[int | Reason]:
        results: list[int | Reason] = []
        for path in ("/status/500", "/status/500", "/status/200"):
            try:
                response = await egress.send(get(upstream.url(path)), DEFAULT_OPTIONS)
                results.append(response.status)
            except SendError as error:
                results.append(error.reason)
        return results

    results = with_egress(calls, limits=limits)

    assert results == [500, 500, Reason.CIRCUIT_OPEN]
    assert upstream.hits("/status/200") == 0


def test_a_success_resets_the_breakers_count(upstream: Upstream) -> None:
    limits = EgressLimits(retries=0, breaker_failure_threshold=2, breaker_cooldown_seconds=60)

    async def calls(egress: Egress) -> list[int]:
        return [
            (await egress.send(get(upstream.url(path)), DEFAULT_OPTIONS)).status
            for path in ("/status/500", "/status/200", "/status/500", "/status/200")
        ]

    assert with_egress(calls, limits=limits) == [500, 200, 500, 200]


def test_an_open_breaker_leaves_other_upstreams_alone(
    upstream: Upstream, other_upstream: Upstream
) -> None:
    limits = EgressLimits(retries=0, breaker_failure_threshold=1, breaker_cooldown_seconds=60)

    async def calls(egress: Egress) -> tuple[int, int]:
        first = await egress.send(get(upstream.url("/status/500")), DEFAULT_OPTIONS)
        other = await egress.send(get(other_upstream.url("/json")), DEFAULT_OPTIONS)
        return first.status, other.status

    assert with_egress(calls, limits=limits) == (500, 200)


# ---------------------------------------------------------------------------------------------
# Redirects, when a connector opts in
# ---------------------------------------------------------------------------------------------

FOLLOW = SendOptions(
    5.0,
    1024 * 1024,
    follow_redirects=True,
    credential_headers=frozenset({"authorization", "x-api-key"}),
)
CREDENTIALS = (("Authorization", "Bearer tok-canary"), ("X-API-Key", "key-canary"))


@pytest.fixture
def other_upstream() -> Iterator[Upstream]:
    """A second upstream: another origin (same host, another port)."""
    server = Upstream()
    yield server
    server.close()


def test_redirect_is_followed_when_asked_and_every_hop_counted(upstream: Upstream) -> None:
    response = send(get(upstream.url("/redirect")), FOLLOW)

    assert (response.status, response.attempts) == (200, 2)
    assert json.loads(response.body) == {"redirected": True}


def test_redirect_within_the_origin_keeps_credentials(upstream: Upstream) -> None:
    upstream.respond("/hop", status=302, json={}, headers={"Location": "/echo/same"})

    send(get(upstream.url("/hop"), *CREDENTIALS, ("X-Trace", "t-1")), FOLLOW)

    landed = upstream.last("/echo/same")
    assert landed.header("Authorization") == "Bearer tok-canary"
    assert landed.header("X-API-Key") == "key-canary"


def test_redirect_to_another_origin_drops_credentials(
    upstream: Upstream, other_upstream: Upstream
) -> None:
    target = other_upstream.url("/echo/landed")
    upstream.respond("/hop", status=307, json={}, headers={"Location": target})

    response = send(get(upstream.url("/hop"), *CREDENTIALS, ("X-Trace", "t-1")), FOLLOW)

    assert response.status == 200
    landed = other_upstream.last("/echo/landed")
    assert landed.header("X-Trace") == "t-1"
    assert landed.header("Authorization") is None
    assert landed.header("X-API-Key") is None


def test_redirect_leaving_the_connectors_hosts_is_refused(
    upstream: Upstream, other_upstream: Upstream
) -> None:
    upstream.respond(
        "/hop",
        status=302,
        json={},
        headers={"Location": f"http://localhost:{other_upstream.port}/"},
    )
    options = SendOptions(5.0, 1024 * 1024, follow_redirects=True, allowed_hosts=("127.0.0.1",))

    assert send_error(get(upstream.url("/hop")), options).reason is Reason.BLOCKED_DESTINATION
    assert other_upstream.connections == 0


def test_redirects_stop_after_three_hops(upstream: Upstream) -> None:
    upstream.respond("/loop", status=302, json={}, headers={"Location": "/loop"})

    response = send(get(upstream.url("/loop")), FOLLOW)

    assert (response.status, response.attempts) == (302, 4)
    assert upstream.hits("/loop") == 4


def test_303_after_a_post_becomes_a_get_without_body(upstream: Upstream) -> None:
    upstream.respond("/created", status=303, json={}, headers={"Location": "/echo/after"})
    request = OutboundRequest(
        "POST", upstream.url("/created"), (("Content-Type", "application/json"),), b'{"a":1}'
    )

    send(request, FOLLOW)

    landed = upstream.last("/echo/after")
    assert (landed.method, landed.body) == ("GET", b"")


# ---------------------------------------------------------------------------------------------
# Content encodings, decoded within the cap
# ---------------------------------------------------------------------------------------------


def test_gzip_bomb_stops_at_the_cap(upstream: Upstream) -> None:
    bomb = gzip.compress(b"\0" * (20 * 1024 * 1024))
    upstream.respond("/bomb", body=bomb, headers={"Content-Encoding": "gzip"})

    error = send_error(get(upstream.url("/bomb")))

    assert len(bomb) < DEFAULT_OPTIONS.max_response_bytes
    assert error.reason is Reason.RESPONSE_TOO_LARGE


def test_deflate_body_is_decoded(upstream: Upstream) -> None:
    upstream.respond(
        "/deflated", body=zlib.compress(b'{"ok":true}'), headers={"Content-Encoding": "deflate"}
    )

    assert send(get(upstream.url("/deflated"))).body == b'{"ok":true}'


def test_unknown_content_encoding_is_a_protocol_error(upstream: Upstream) -> None:
    upstream.respond("/brotli", body=b"\x0b\x02\x80{}\x03", headers={"Content-Encoding": "br"})

    assert send_error(get(upstream.url("/brotli"))).reason is Reason.PROTOCOL_ERROR


# ---------------------------------------------------------------------------------------------
# The URL on the wire, and what foreign exceptions mean
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("https://a.example/o/A%3A1?k=%2F%3F&x=1", "/o/A%3A1?k=%2F%3F&x=1"),  # as rendered
        ("https://a.example/o/a|b?q=x|y", "/o/a|b?q=x|y"),
        ("https://a.example/o/a b?q=c d", "/o/a%20b?q=c%20d"),
        ("https://a.example/caf\u00e9?q=\u00e9", "/caf%C3%A9?q=%C3%A9"),
        ("https://a.example/a/./b/../c", "/a/c"),
        ("https://a.example/a?", "/a"),  # an empty query is not sent (nor was it with httpx)
        ("https://a.example/a#part", "/a"),
    ],
)
def test_the_url_goes_out_as_rendered_and_only_unsendable_text_is_encoded(
    url: str, target: str
) -> None:
    assert wire_url(url).target == target


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://h.example:8080/a?x=1", ("http", "h.example", 8080, "/a?x=1", "h.example:8080")),
        ("http://h.example:8080/b", ("http", "h.example", 8080, "/b", "h.example:8080")),
        ("http://h.example:8080", ("http", "h.example", 8080, "/", "h.example:8080")),
        ("HTTP://H.Example:80?q", ("http", "h.example", 80, "/?q", "h.example")),
        ("https://[::1]:443/x#y?z", ("https", "::1", 443, "/x", "[::1]")),
        ("https://[::1]:8443/x", ("https", "::1", 8443, "/x", "[::1]:8443")),
    ],
)
def test_each_url_gets_its_own_target_behind_an_origin_worked_out_once(
    url: str, expected: tuple[str, str, int, str, str]
) -> None:
    # The origin (scheme, host, port, Host header) is kept per `scheme://authority`: the
    # second call of a prefix must still carry its own path and query.
    assert tuple(wire_url(url)) == expected
    assert tuple(wire_url(url)) == expected


@pytest.mark.parametrize("url", ["http://h.example:99999/x", "ftp://h.example/x", "/relative"])
def test_a_url_that_cannot_be_sent_is_refused_each_time(url: str) -> None:
    for _ in range(2):  # a refusal is never kept
        with pytest.raises(SendError) as raised:
            wire_url(url)
        assert raised.value.reason is Reason.PROTOCOL_ERROR


def test_a_non_ascii_host_goes_out_idna_encoded() -> None:
    assert wire_url("https://b\u00fccher.example/x").host == "xn--bcher-kva.example"


@pytest.mark.parametrize("url", ["https://a.example/next\x7fpage", "https://a.example/a\tb"])
def test_a_url_with_a_control_character_is_refused(url: str) -> None:
    with pytest.raises(SendError) as raised:
        wire_url(url)

    assert raised.value.reason is Reason.PROTOCOL_ERROR


def caused(exc: BaseException, cause: BaseException) -> BaseException:
    exc.__cause__ = cause
    return exc


@pytest.mark.parametrize(
    ("exc", "reason", "retryable"),
    [
        (DestinationBlockedError("'x' resolves to 10.0.0.1"), Reason.BLOCKED_DESTINATION, False),
        (ResolveError("no name"), Reason.DNS_ERROR, False),
        (caused(ConnectError("refused"), ConnectionRefusedError()), Reason.CONNECT_ERROR, True),
        (ssl.SSLCertVerificationError("bad certificate"), Reason.TLS_ERROR, False),
        (DisconnectedError("closed"), Reason.CONNECT_ERROR, False),
        (MalformedResponseError("truncated"), Reason.PROTOCOL_ERROR, False),
        (RequestError("line break"), Reason.PROTOCOL_ERROR, False),
        (TimeoutError(), Reason.TIMEOUT, False),
        (caused(OSError(), ConnectionResetError()), Reason.CONNECT_ERROR, False),
        (OSError(), Reason.CONNECT_ERROR, False),  # nothing more specific known
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else None,
)
def test_foreign_exceptions_map_to_one_reason(
    exc: BaseException, reason: Reason, retryable: bool
) -> None:
    error = failure_of(exc)

    assert (error.reason, error.retryable) == (reason, retryable)
