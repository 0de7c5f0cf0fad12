"""A canary secret through every path, then searched for everywhere it could leak: 0 times.

The canary is the value of the secrets an in-process sidecar reads from its secrets_dir, used as
a bearer token, an API key (header and query), basic credentials and OAuth2 client credentials
(whose tokens, issued by a loopback token server, carry a canary of their own). Every path of the
issue is taken over the real wire (success, 4xx, 5xx, timeout, refused, blocked, not JSON,
oversize, a redirect to another origin, a secret bound to other hosts, a failing token endpoint),
with and without `explain`, and the canary (and its base64 form inside a basic Authorization
header) is searched for in:

- every log record at DEBUG, the sidecar's loggers and httpx/httpcore/aiohttp/stamina/grpc:
  the message, the traceback, and every attribute of the record (structured `fields` too);
- the responses: SerializeToString() bytes and their text form;
- the gRPC status code, details, debug string and trailing metadata of failed calls;
- the spans exported through an in-memory exporter, and the metrics of an in-memory reader;
- what a second origin received after a redirect (the credential must not get there).

Positive controls show the canary did reach the upstream that was meant to get it, and that the
search finds a planted canary.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import text_format
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from rulesidecar.v1 import rules_sidecar_pb2 as pb

from tests.support.calls import RPC_TIMEOUT, evaluate_request, register
from tests.support.loopback import HOST
from tests.support.raw_servers import RawServers, silent
from tests.support.sidecars import InProcessSidecar
from tests.support.token_server import TokenServer
from tests.support.upstreams import Upstream, closed_port

CANARY = "canary-7f3a9c2e-do-not-log"
CANARY_USER = "canary-user-51d0e6a4"
TOKEN_CANARY = "canary-token-c81e0b57"  # the prefix of the tokens the token server issues
BASIC_VALUE = base64.b64encode(f"{CANARY_USER}:{CANARY}".encode()).decode()
# Every form in which a secret of this test could show up (base64 without its padding, so a
# truncated header value is found too).
FORMS = (CANARY, CANARY_USER, BASIC_VALUE.rstrip("="), TOKEN_CANARY)
SECRETS = {"canary_token": CANARY, "canary_key": CANARY, "canary_user": CANARY_USER}
LOGGERS = ("", "sidecar", "httpx", "httpcore", "aiohttp", "stamina", "grpc", "asyncio")

AUTH = {
    "bearer": {"bearer": {"token_secret": "canary_token"}},
    "api-key-header": {"api_key": {"name": "X-API-Key", "value_secret": "canary_key"}},
    "api-key-query": {
        "api_key": {
            "name": "api_key",
            "location": "API_KEY_LOCATION_QUERY",
            "value_secret": "canary_key",
        }
    },
    "basic": {"basic": {"username_secret": "canary_user", "password_secret": "canary_key"}},
}


def occurrences(text: str | bytes) -> int:
    """How many times any form of the canary appears in `text`."""
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    return sum(text.count(form) for form in FORMS)


# ---------------------------------------------------------------------------------------------
# Everything a call leaves behind
# ---------------------------------------------------------------------------------------------


@dataclass
class Leftovers:
    """What the calls of one test produced, as text to search."""

    texts: dict[str, list[str]] = field(default_factory=dict)

    def add(self, where: str, text: str | bytes) -> None:
        if isinstance(text, bytes):
            text = text.decode("latin-1")
        self.texts.setdefault(where, []).append(text)

    def leaks(self) -> dict[str, int]:
        """Where the canary was found, and how often (empty: nowhere)."""
        found = {where: sum(occurrences(t) for t in texts) for where, texts in self.texts.items()}
        return {where: count for where, count in found.items() if count}


def record_text(record: logging.LogRecord) -> str:
    """A log record as every formatter could render it: message, traceback, all attributes."""
    parts = [record.getMessage(), repr(record.__dict__)]
    if record.exc_info:
        parts.append(logging.Formatter().formatException(record.exc_info))
    try:
        from sidecar.telemetry.logs import JsonFormatter, TextFormatter
    except ImportError:  # structured logging not there: the attributes above cover it
        return "\n".join(parts)
    parts += [JsonFormatter().format(record), TextFormatter().format(record)]
    return "\n".join(parts)


@dataclass
class Telemetry:
    """In-memory span exporter and metric reader, and the sidecar telemetry that feeds them."""

    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    instruments: Any  # sidecar.telemetry.instruments.Telemetry, handed to the sidecar

    def span_texts(self) -> list[str]:
        return [span.to_json() for span in self.spans.get_finished_spans()]

    def metric_text(self) -> str:
        data = self.metrics.get_metrics_data()
        return data.to_json() if data is not None else ""


@pytest.fixture
def telemetry() -> Telemetry:
    """Spans and metrics exported to memory, for the sidecar the test starts with them."""
    telemetry_module = pytest.importorskip(
        "sidecar.telemetry.instruments",
        reason="TODO: no sidecar.telemetry.instruments yet, so no spans to search",
    )
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    built = telemetry_module.Telemetry(tracer_provider, meter_provider)
    return Telemetry(spans, reader, built)


@pytest.fixture
def secrets_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "secrets"
    directory.mkdir()
    for name, value in SECRETS.items():
        (directory / name).write_text(value + "\n", encoding="utf-8")
    return directory


@pytest.fixture
def other_upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


# ---------------------------------------------------------------------------------------------
# The paths
# ---------------------------------------------------------------------------------------------


@dataclass
class Stage:
    """What a path needs: upstreams, raw servers, and where its requests should land."""

    upstream: Upstream
    other_upstream: Upstream
    raw_servers: RawServers


def ok(stage: Stage) -> tuple[str, dict[str, Any]]:
    stage.upstream.respond("/orders/A-1", json={"status": "shipped"})
    return stage.upstream.url("/orders/{{order}}"), {}


def client_error(stage: Stage) -> tuple[str, dict[str, Any]]:
    stage.upstream.respond("/orders/A-1", status=401, json={"error": "bad key"})
    return stage.upstream.url("/orders/{{order}}"), {}


def server_error(stage: Stage) -> tuple[str, dict[str, Any]]:
    stage.upstream.respond("/orders/A-1", status=503, json={"error": "down"})
    return stage.upstream.url("/orders/{{order}}"), {}


def timeout(stage: Stage) -> tuple[str, dict[str, Any]]:
    return stage.raw_servers.serve(silent).url("/orders/{{order}}"), {"timeout": "0.3s"}


def refused(stage: Stage) -> tuple[str, dict[str, Any]]:
    return f"http://127.0.0.1:{closed_port()}/orders/{{{{order}}}}", {}


BLOCKED_HOST = "169.254.169.254"


def blocked(stage: Stage) -> tuple[str, dict[str, Any]]:
    return f"https://{BLOCKED_HOST}/latest/{{{{order}}}}", {}


def not_json(stage: Stage) -> tuple[str, dict[str, Any]]:
    stage.upstream.respond("/orders/A-1", body=b"<html>Maintenance</html>")
    return stage.upstream.url("/orders/{{order}}"), {}


def oversize(stage: Stage) -> tuple[str, dict[str, Any]]:
    stage.upstream.respond("/orders/A-1", json={"padding": "x" * 4096})
    return stage.upstream.url("/orders/{{order}}"), {"max_response_bytes": 1024}


def redirect_to_another_origin(stage: Stage) -> tuple[str, dict[str, Any]]:
    target = stage.other_upstream.url("/echo/landed")
    stage.upstream.respond("/orders/A-1", status=307, json={}, headers={"Location": target})
    return stage.upstream.url("/orders/{{order}}"), {"follow_redirects": True}


PATHS: dict[str, Callable[[Stage], tuple[str, dict[str, Any]]]] = {
    "success": ok,
    "4xx": client_error,
    "5xx": server_error,
    "timeout": timeout,
    "refused": refused,
    "blocked": blocked,
    "not-json": not_json,
    "oversize": oversize,
    "redirect-to-another-origin": redirect_to_another_origin,
}
# Paths whose first request reaches the upstream (the positive control applies).
DELIVERED = {"success", "4xx", "5xx", "not-json", "oversize", "redirect-to-another-origin"}
EXPECTED_REASON = {
    "success": "REASON_BRANCH_MATCHED",
    "4xx": "REASON_NO_BRANCH_MATCHED",
    "5xx": "REASON_UPSTREAM_ERROR",
    "timeout": "REASON_TIMEOUT",
    "refused": "REASON_CONNECT_ERROR",
    "blocked": "REASON_BLOCKED_DESTINATION",
    "not-json": "REASON_BRANCH_MATCHED",
    "oversize": "REASON_RESPONSE_TOO_LARGE",
    "redirect-to-another-origin": "REASON_BRANCH_MATCHED",
}


def call(stub: Any, request: pb.EvaluateNodeRequest, leftovers: Leftovers) -> Any:
    """EvaluateNode; the response (kept as bytes and text) or the RpcError (kept whole)."""
    try:
        response = stub.EvaluateNode(request, timeout=RPC_TIMEOUT)
    except grpc.RpcError as failure:
        keep_rpc_error(failure, leftovers)
        return failure
    leftovers.add("response bytes", response.SerializeToString())
    leftovers.add("response text", text_format.MessageToString(response))
    leftovers.add("response repr", repr(response))
    return response


def keep_rpc_error(failure: grpc.RpcError, leftovers: Leftovers) -> None:
    leftovers.add("status code", str(failure.code()))
    leftovers.add("status details", failure.details() or "")
    leftovers.add("status debug string", failure.debug_error_string())
    for key, value in failure.trailing_metadata() or ():
        leftovers.add("trailing metadata", f"{key}={value!r}")


def wait_for_spans(telemetry: Telemetry, calls: int) -> None:
    """The SERVER span ends just after the answer is sent: wait (bounded) for all of them."""
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        names = [span.name for span in telemetry.spans.get_finished_spans()]
        if sum(name.endswith("/EvaluateNode") for name in names) >= calls:
            return
        time.sleep(0.02)


def upstream_saw(upstream: Upstream) -> str:
    return json.dumps(
        [[r.method, r.raw_path, r.headers, r.body.decode("latin-1")] for r in upstream.requests]
    )


def path_cases() -> list[Any]:
    """auth x path; a query API key meets the request line on the paths that get an answer."""
    cases = []
    for auth in AUTH:
        for path in PATHS:
            cases.append(pytest.param(auth, path, id=f"{auth}-{path}"))
    return cases


@dataclass
class Harness:
    """An in-process sidecar holding the canary, its telemetry, logs and upstreams."""

    sidecar: InProcessSidecar
    telemetry: Telemetry
    caplog: pytest.LogCaptureFixture
    stage: Stage

    def run(self, auth: str | dict[str, Any], path: str) -> tuple[list[Any], Leftovers]:
        """Register a connector for `path` with `auth` (a name of AUTH, or the auth itself),
        evaluate it without and with explain; the answers, and everything the calls left
        behind."""
        url, fields = PATHS[path](self.stage)
        auth = AUTH[auth] if isinstance(auth, str) else auth
        register(self.sidecar.stub, "canary", url, auth=auth, **fields)
        leftovers = Leftovers()
        answers = [
            call(
                self.sidecar.stub,
                evaluate_request("canary", {"order": "A-1"}, explain=explain),
                leftovers,
            )
            for explain in (False, True)
        ]
        wait_for_spans(self.telemetry, calls=2)
        for record in self.caplog.records:
            leftovers.add(f"log {record.name}", record_text(record))
        leftovers.add("log text", self.caplog.text)
        for span in self.telemetry.span_texts():
            leftovers.add("span", span)
        leftovers.add("metrics", self.telemetry.metric_text())
        leftovers.add("second origin", upstream_saw(self.stage.other_upstream))
        print(
            f"searched {sum(len(t) for ts in leftovers.texts.values() for t in ts)} characters in "
            f"{len(leftovers.texts)} places: {len(self.caplog.records)} log records, "
            f"{len(self.telemetry.span_texts())} spans"
        )
        return answers, leftovers


@pytest.fixture
def harness(
    sidecar_factory: Callable[..., InProcessSidecar],
    secrets_dir: Path,
    telemetry: Telemetry,
    upstream: Upstream,
    other_upstream: Upstream,
    raw_servers: RawServers,
    caplog: pytest.LogCaptureFixture,
) -> Harness:
    caplog.set_level(logging.DEBUG)  # the root logger: what `log_level=DEBUG` sets
    # The breaker is not the subject here: repeated failures must not turn into CIRCUIT_OPEN.
    # The canaries are bound to the blocked stage's address too, so that stage reaches the
    # egress guard (BLOCKED_DESTINATION) rather than being refused at registration.
    bound = {name: [HOST, BLOCKED_HOST] for name in SECRETS}
    sidecar = sidecar_factory(
        secrets_dir=secrets_dir,
        secret_hosts=bound,
        breaker_failure_threshold=100,
        telemetry=telemetry.instruments,
    )
    return Harness(sidecar, telemetry, caplog, Stage(upstream, other_upstream, raw_servers))


@pytest.mark.parametrize(("auth", "path"), path_cases())
def test_canary_appears_nowhere_on_any_path(harness: Harness, auth: str, path: str) -> None:
    for name in LOGGERS:  # after startup, so no logger level set while building wins
        harness.caplog.set_level(logging.DEBUG, logger=name)

    answers, leftovers = harness.run(auth, path)

    for answer in answers:
        assert isinstance(answer, pb.EvaluateNodeResponse), answer
        assert pb.Reason.Name(answer.reason) == EXPECTED_REASON[path], answer.message
    assert answers[1].explanation.request.url, "the explanation shows the request"
    assert leftovers.leaks() == {}
    if path in DELIVERED:  # the positive control: the secret was really sent where it belongs
        assert occurrences(upstream_saw(harness.stage.upstream)) > 0


@pytest.mark.parametrize("path", sorted(DELIVERED))
def test_query_api_key_is_not_logged_with_the_sidecars_own_logger_levels(
    harness: Harness, path: str
) -> None:
    # The root logger at DEBUG, the client libraries left at their defaults: what an operator's
    # `log_level: DEBUG` gives.
    answers, leftovers = harness.run("api-key-query", path)

    assert pb.Reason.Name(answers[0].reason) == EXPECTED_REASON[path]
    assert leftovers.leaks() == {}
    assert occurrences(upstream_saw(harness.stage.upstream)) > 0


def test_secret_bound_to_other_hosts_is_refused_at_registration_without_leaking(
    sidecar_factory: Callable[..., InProcessSidecar],
    secrets_dir: Path,
    upstream: Upstream,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sidecar = sidecar_factory(
        secrets_dir=secrets_dir, secret_hosts={"canary_token": ["api.store.example"]}
    )
    caplog.set_level(logging.DEBUG)
    leftovers = Leftovers()

    with pytest.raises(grpc.RpcError) as refused_registration:
        register(sidecar.stub, "moved", upstream.url("/json"), auth=AUTH["bearer"])
    keep_rpc_error(refused_registration.value, leftovers)
    for record in caplog.records:
        leftovers.add("log", record_text(record))

    assert refused_registration.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert leftovers.leaks() == {}
    assert upstream.requests == []


def oauth2_path_cases() -> list[Any]:
    """Every path, plus a token endpoint that fails."""
    return [*(pytest.param(path, id=path) for path in PATHS), "token-endpoint-fails"]


@pytest.mark.parametrize("path", oauth2_path_cases())
def test_oauth2_client_secret_and_tokens_appear_nowhere_on_any_path(
    harness: Harness, path: str
) -> None:
    for name in LOGGERS:
        harness.caplog.set_level(logging.DEBUG, logger=name)
    tokens = TokenServer(
        harness.stage.upstream, CANARY_USER, CANARY, clock=time.monotonic, token_prefix=TOKEN_CANARY
    )
    auth = {
        "oauth2_client_credentials": {
            "token_url": tokens.token_url,
            "client_id_secret": "canary_user",
            "client_secret_secret": "canary_key",
        }
    }
    if path == "token-endpoint-fails":
        tokens.fail_with = 503

    answers, leftovers = harness.run(auth, "success" if path == "token-endpoint-fails" else path)

    expected = EXPECTED_REASON.get(path, "REASON_AUTH_TOKEN_ERROR")
    for answer in answers:
        assert isinstance(answer, pb.EvaluateNodeResponse), answer
        assert pb.Reason.Name(answer.reason) == expected, answer.message
    assert leftovers.leaks() == {}
    # The positive controls: the client secret went to the token endpoint (basic auth) and,
    # where the API was reached, a token went to it.
    assert tokens.fetches >= 1
    assert BASIC_VALUE in (tokens.requests[0].authorization or "")
    if path in DELIVERED:
        api_calls = [r for r in harness.stage.upstream.requests if r.path.startswith("/orders")]
        assert TOKEN_CANARY in (api_calls[0].header("Authorization") or "")


def test_a_planted_canary_is_found_by_the_search() -> None:
    # The control for every search above: each form of the secret is recognised.
    leftovers = Leftovers()
    leftovers.add("log", f"Authorization: Basic {BASIC_VALUE}")
    leftovers.add("span", f'{{"url.full": "http://x/?api_key={CANARY}"}}')

    assert leftovers.leaks() == {"log": 1, "span": 1}


def test_garbage_answer_does_not_leak_a_query_key_into_logs(
    sidecar_factory: Callable[..., InProcessSidecar],
    secrets_dir: Path,
    raw_servers: RawServers,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A client's parser errors may quote the request URL, query key included (aiohttp's did):
    # they must be translated at the transport edge, never logged or returned as they are.
    from .test_hostile_upstreams import garbage_status_line

    caplog.set_level(logging.DEBUG)
    sidecar = sidecar_factory(secrets_dir=secrets_dir)
    server = raw_servers.serve(garbage_status_line)
    register(sidecar.stub, "garbage", server.url("/orders/{{order}}"), auth=AUTH["api-key-query"])
    leftovers = Leftovers()

    answer = call(sidecar.stub, evaluate_request("garbage", {"order": "A-1"}), leftovers)
    for record in caplog.records:
        leftovers.add(f"log {record.name}", record_text(record))

    assert isinstance(answer, pb.EvaluateNodeResponse), answer
    assert pb.Reason.Name(answer.reason) == "REASON_PROTOCOL_ERROR"
    assert leftovers.leaks() == {}


@pytest.mark.parametrize(
    ("url", "fields"),
    [
        pytest.param(
            "https://api.example.com/orders",
            {"headers": {"Authorization": f"Bearer {CANARY}"}},
            id="authorization-header",
        ),
        pytest.param(
            "https://api.example.com/orders",
            {"headers": {"X-API-Key": CANARY}},
            id="api-key-header",
        ),
        pytest.param(
            "https://api.example.com/orders", {"headers": {"Cookie": f"s={CANARY}"}}, id="cookie"
        ),
        pytest.param(f"https://user:{CANARY}@api.example.com/orders", {}, id="url-userinfo"),
    ],
)
def test_a_pasted_credential_is_refused_without_being_echoed(
    sidecar_factory: Callable[..., InProcessSidecar],
    caplog: pytest.LogCaptureFixture,
    url: str,
    fields: dict[str, Any],
) -> None:
    # An admin who pastes the key itself into a connector gets INVALID_ARGUMENT pointing to
    # secret references; the refusal (details, BadRequest trailer) and the logs never repeat it.
    caplog.set_level(logging.DEBUG)
    sidecar = sidecar_factory()
    leftovers = Leftovers()

    with pytest.raises(grpc.RpcError) as refused_registration:
        register(sidecar.stub, "pasted", url, **fields)
    keep_rpc_error(refused_registration.value, leftovers)
    for record in caplog.records:
        leftovers.add("log", record_text(record))

    assert refused_registration.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert leftovers.leaks() == {}
