"""The response cache over the real wire: an in-process sidecar, generated stubs, and loopback
upstreams that count the calls they answer.

The cache's semantics (windows, Cache-Control, eviction) are tabled in tests/test_response_cache.py
with a clock the tests move; here: what a caller of EvaluateNode sees, and what reaches the API.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import web
from google.protobuf import json_format
from rulesidecar.v1 import rules_sidecar_pb2 as pb

from sidecar.core.model import CacheStatus, HttpMethod
from sidecar.core.secrets import SecretBindings
from sidecar.registry import load_connectors_file
from tests.support.calls import (
    RPC_TIMEOUT,
    evaluate,
    evaluate_request,
    field_violations,
    register,
    verdict,
)
from tests.support.loopback import LOOPBACK_ALLOW
from tests.support.sidecars import InProcessSidecar
from tests.support.upstreams import ORDER_API_KEY, Upstream

SECRET_NAME = "store_api_key"
BURST = 50
HELD_SECONDS = 10.0  # the gate's own deadline: a test that forgets to open it still ends
CACHED: dict[str, Any] = {"cache": {"ttl": "60s", "stale_if_error": "300s"}}
API_KEY: dict[str, Any] = {"auth": {"api_key": {"name": "X-API-Key", "value_secret": SECRET_NAME}}}


@pytest.fixture
def sidecar(
    sidecar_factory: Callable[..., InProcessSidecar], tmp_path: Path
) -> Callable[..., InProcessSidecar]:
    """A sidecar factory whose secrets_dir holds `store_api_key`."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / SECRET_NAME).write_text(ORDER_API_KEY + "\n", encoding="utf-8")

    def start(**overrides: Any) -> InProcessSidecar:
        return sidecar_factory(secrets_dir=secrets, **LOOPBACK_ALLOW, **overrides)

    return start


@pytest.fixture
def gate(upstream: Upstream) -> Iterator[threading.Event]:
    """/stock/... holds its answer until the event is set (set again at teardown)."""
    opened = threading.Event()

    async def held(request: web.Request) -> web.StreamResponse:
        await asyncio.to_thread(opened.wait, HELD_SECONDS)
        return web.json_response({"sku": "KB-1", "stock": 7})

    upstream.route("/stock/KB-1", held)
    yield opened
    opened.set()


def cache_status(response: pb.EvaluateNodeResponse) -> str:
    return pb.CacheStatus.Name(response.cache_status).removeprefix("CACHE_STATUS_")


def test_a_burst_of_50_identical_calls_reaches_the_upstream_once(
    sidecar: Callable[..., InProcessSidecar], upstream: Upstream, gate: threading.Event
) -> None:
    stub = sidecar().stub
    register(stub, "stock", upstream.url("/stock/{{sku}}"), **CACHED)
    request = evaluate_request("stock", {"sku": "KB-1"})

    calls = [stub.EvaluateNode.future(request, timeout=RPC_TIMEOUT) for _ in range(BURST)]
    deadline = time.monotonic() + HELD_SECONDS
    while upstream.hits("/stock/") < 1:  # the first call reached the upstream, which holds it
        assert time.monotonic() < deadline, "no call reached the upstream"
        time.sleep(0.01)
    gate.set()
    responses = [call.result() for call in calls]

    assert upstream.hits("/stock/") == 1
    assert {verdict(response) for response in responses} == {
        ("OUTCOME_MATCHED", "REASON_BRANCH_MATCHED")
    }
    statuses = [cache_status(response) for response in responses]
    assert statuses.count("MISS") == 1
    # Calls that arrived while the first was held joined it; any later one found its answer.
    assert set(statuses) <= {"MISS", "COALESCED", "HIT"}


def test_a_hit_says_so_with_its_age_and_in_the_explanation_without_the_secret(
    sidecar: Callable[..., InProcessSidecar], upstream: Upstream
) -> None:
    stub = sidecar().stub
    register(stub, "order", upstream.url("/orders/{{n}}"), **CACHED, **API_KEY)

    first = evaluate(stub, "order", {"n": "A-10023"})
    second = evaluate(stub, "order", {"n": "A-10023"}, explain=True)

    assert (cache_status(first), first.attempts) == ("MISS", 1)
    assert (cache_status(second), second.attempts) == ("HIT", 0)
    assert second.cache_age.ToTimedelta().total_seconds() >= 0
    assert verdict(second) == ("OUTCOME_MATCHED", "REASON_BRANCH_MATCHED")
    assert any(note.startswith("response cache: HIT") for note in second.explanation.notes)
    assert ORDER_API_KEY not in second.SerializeToString().decode("utf-8", "replace")
    assert upstream.hits("/orders/") == 1
    # Another visitor's order is another request: another entry.
    assert cache_status(evaluate(stub, "order", {"n": "B-1"})) == "MISS"


def test_a_connector_without_cache_answers_no_cache_status(
    sidecar: Callable[..., InProcessSidecar], upstream: Upstream
) -> None:
    stub = sidecar().stub
    register(stub, "plain", upstream.url("/json"))

    responses = [evaluate(stub, "plain") for _ in range(2)]

    assert [r.cache_status for r in responses] == [pb.CACHE_STATUS_UNSPECIFIED] * 2
    assert not responses[1].HasField("cache_age")
    assert upstream.hits("/json") == 2


def test_a_sidecar_with_its_cache_off_bypasses(
    sidecar: Callable[..., InProcessSidecar], upstream: Upstream
) -> None:
    stub = sidecar(response_cache_max_bytes=0).stub
    register(stub, "stock", upstream.url("/json"), **CACHED)

    assert [cache_status(evaluate(stub, "stock")) for _ in "ab"] == ["BYPASS", "BYPASS"]
    assert upstream.hits("/json") == 2


@pytest.mark.parametrize(
    ("fields", "field", "says"),
    [
        ({"method": "HTTP_METHOD_POST", **CACHED}, "connector.cache", "idempotent_lookup"),
        ({"method": "HTTP_METHOD_DELETE", **CACHED}, "connector.cache", "not DELETE"),
        ({"cache": {"stale_if_error": "5s"}}, "connector.cache.ttl", "required"),
        ({"cache": {"ttl": "0s"}}, "connector.cache.ttl", "more than 0"),
        ({"cache": {"ttl": "90000s"}}, "connector.cache.ttl", "at most 1 day"),
    ],
)
def test_a_cache_that_cannot_be_is_refused_naming_the_field(
    sidecar: Callable[..., InProcessSidecar],
    upstream: Upstream,
    fields: dict[str, Any],
    field: str,
    says: str,
) -> None:
    stub = sidecar().stub

    with pytest.raises(grpc.RpcError) as caught:
        register(stub, "refused", upstream.url("/json"), **fields)

    violations = field_violations(caught.value)
    assert field in violations, violations
    assert says in violations[field]


def test_a_search_post_that_declares_itself_a_lookup_is_cached(
    sidecar: Callable[..., InProcessSidecar], upstream: Upstream
) -> None:
    stub = sidecar().stub
    cache = {"ttl": "60s", "idempotent_lookup": True, "max_entry_bytes": "4096"}
    stored = register(
        stub,
        "search",
        upstream.url("/echo/search"),
        method="HTTP_METHOD_POST",
        body_template={"q": "{{q}}"},
        cache=cache,
    )

    assert json_format.MessageToDict(stored.cache) == {
        "ttl": "60s",
        "staleWhileRevalidate": "0s",
        "staleIfError": "0s",
        "maxEntryBytes": "4096",
        "idempotentLookup": True,
    }
    statuses = [cache_status(evaluate(stub, "search", {"q": q})) for q in ("kb", "kb", "mouse")]
    assert statuses == ["MISS", "HIT", "MISS"]
    assert upstream.hits("/echo/search") == 2


def test_the_connectors_file_takes_a_cache(tmp_path: Path) -> None:
    path = tmp_path / "connectors.yaml"
    path.write_text(
        "connectors:\n"
        "  - id: stock\n"
        "    status: LIVE\n"
        "    url_template: https://api.store.com/stock/{{sku}}\n"
        "    cache: {ttl: 30s, stale_while_revalidate: 10s, stale_if_error: 300s}\n"
        "  - id: search\n"
        "    status: LIVE\n"
        "    method: POST\n"
        "    url_template: https://api.store.com/search\n"
        "    cache: {ttl: 5s, idempotent_lookup: true}\n",
        encoding="utf-8",
    )

    stock, search = load_connectors_file(path, bindings=SecretBindings({}))

    assert stock.cache is not None
    assert (stock.cache.ttl.total_seconds(), stock.cache.stale_if_error.total_seconds()) == (
        30,
        300,
    )
    assert search.method is HttpMethod.POST
    assert search.cache is not None
    assert search.cache.idempotent_lookup


def test_cache_status_names_match_the_proto() -> None:
    assert {f"CACHE_STATUS_{status.value}" for status in CacheStatus} == {
        name
        for name in pb.CacheStatus.DESCRIPTOR.values_by_name
        if name != "CACHE_STATUS_UNSPECIFIED"
    }
