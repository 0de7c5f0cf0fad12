"""Connection settings reach the real server: keepalive enforcement and the reflection switch.

Keepalive is observed as a client sees it: a client that pings more often than the server
accepts gets GOAWAY (too_many_pings), which ends its open health Watch stream UNAVAILABLE; the
same client against a sidecar configured to accept its pings keeps the stream until the deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.support.sidecars import InProcessSidecar

# A client that pings every 100 ms, idle or not, without limit.
EAGER_PINGS = [
    ("grpc.keepalive_time_ms", 100),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]


def watch_until_it_ends(
    address: str, timeout: float, options: list[tuple[str, int]]
) -> grpc.RpcError:
    """Open a health Watch from a client with these channel options; the error that ends it."""
    with grpc.insecure_channel(address, options=options) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=timeout
        )
        first = next(watch)
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as ended:
            for _ in watch:
                pass
        return ended.value


@pytest.mark.parametrize(
    "settings",
    [{}, {"keepalive_permit_without_calls": True}],
    ids=["defaults", "permit-without-calls-only"],
)
def test_a_client_pinging_more_often_than_allowed_gets_goaway(
    sidecar_factory: Callable[..., InProcessSidecar], settings: dict[str, object]
) -> None:
    """gRPC's defaults accept one ping per 5 minutes (keepalive_min_ping_interval_seconds)."""
    sidecar = sidecar_factory(**settings)

    ended = watch_until_it_ends(sidecar.address, timeout=60, options=EAGER_PINGS)

    assert (ended.code(), ended.details()) == (grpc.StatusCode.UNAVAILABLE, "Too many pings")


def test_a_client_pinging_within_the_configured_interval_keeps_its_connection(
    sidecar_factory: Callable[..., InProcessSidecar],
) -> None:
    """The same eager client against two sidecars: the strict one (defaults) sends GOAWAY; the
    one configured to accept those pings still holds its stream after twice as long (so the
    comparison calibrates itself to how fast this machine is)."""
    strict = sidecar_factory()
    lenient = sidecar_factory(
        keepalive_min_ping_interval_seconds=0.05, keepalive_permit_without_calls=True
    )
    request = health_pb2.HealthCheckRequest(service="")
    with grpc.insecure_channel(lenient.address, options=EAGER_PINGS) as lenient_channel:
        kept = health_pb2_grpc.HealthStub(lenient_channel).Watch(request, timeout=120)
        assert next(kept).status == health_pb2.HealthCheckResponse.SERVING
        started = time.monotonic()
        ended = watch_until_it_ends(strict.address, timeout=120, options=EAGER_PINGS)
        time.sleep(time.monotonic() - started)

        assert ended.details() == "Too many pings"
        assert not kept.done(), kept
        kept.cancel()


def test_a_connection_older_than_max_connection_age_is_closed(
    sidecar_factory: Callable[..., InProcessSidecar],
) -> None:
    sidecar = sidecar_factory(max_connection_age_seconds=0.5, max_connection_age_grace_seconds=0.5)

    ended = watch_until_it_ends(sidecar.address, timeout=60, options=[])

    assert ended.code() == grpc.StatusCode.UNAVAILABLE, ended


def test_without_max_connection_age_a_connection_stays_open(
    running_sidecar: InProcessSidecar,
) -> None:
    ended = watch_until_it_ends(running_sidecar.address, timeout=3, options=[])

    assert ended.code() == grpc.StatusCode.DEADLINE_EXCEEDED, ended


def list_services(channel: grpc.Channel) -> reflection_pb2.ServerReflectionResponse:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    return next(iter(stub.ServerReflectionInfo(iter([request]), timeout=10)))


def test_reflection_lists_the_services_by_default(running_sidecar: InProcessSidecar) -> None:
    response = list_services(running_sidecar.channel)

    names = {service.name for service in response.list_services_response.service}
    assert "rulesidecar.v1.RulesSidecarService" in names


def test_reflection_off_answers_unimplemented(
    sidecar_factory: Callable[..., InProcessSidecar],
) -> None:
    sidecar = sidecar_factory(reflection=False)

    with pytest.raises(grpc.RpcError) as refused:
        list_services(sidecar.channel)

    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
