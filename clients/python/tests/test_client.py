"""The Python client against the real sidecar: registry calls, errors, deadlines, addresses."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from conftest import Harness
from rulesidecar.client import Client, FieldViolation, SidecarError
from rulesidecar.v1 import rules_sidecar_pb2 as pb

# Turns a call that never ends into a failure; generous, never a measurement.
HANG_GUARD_SECONDS = 60


def order_connector(connector_id: str, url: str) -> dict[str, Any]:
    return {"id": connector_id, "status": "CONNECTOR_STATUS_LIVE", "urlTemplate": url}


def test_register_bumps_the_version_and_the_registry_reads_it_back(harness: Harness) -> None:
    connector = order_connector("py-registry", f"{harness.upstream}/vectors/x/{{{{n}}}}")
    with Client(harness.sidecar) as sidecar:
        first = sidecar.register_connector(connector)
        second = sidecar.register_connector(connector, expected_version=1)
        stored = sidecar.get_connector("py-registry")
        listed = [c.id for c in sidecar.list_connectors(status=pb.CONNECTOR_STATUS_LIVE)]
        deleted = sidecar.delete_connector("py-registry")
        with pytest.raises(SidecarError) as missing:
            sidecar.get_connector("py-registry")
    assert (first.created, first.connector.version) == (True, 1)
    assert (second.created, second.connector.version) == (False, 2)
    assert stored.url_template == connector["urlTemplate"]
    assert "py-registry" in listed
    assert deleted == 2
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert (missing.value.reason, missing.value.metadata) == (
        "CONNECTOR_NOT_FOUND",
        {"connector_id": "py-registry"},
    )


def test_validation_error_carries_the_field_violations(harness: Harness) -> None:
    with Client(harness.sidecar) as sidecar, pytest.raises(SidecarError) as refused:
        sidecar.register_connector(order_connector("Bad Id", "https://{{tenant}}.example.com/x"))
    error = refused.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert isinstance(error, grpc.RpcError)
    fields = {violation.field for violation in error.violations}
    assert {"connector.id", "connector.url_template"} <= fields
    assert all(isinstance(v, FieldViolation) and v.description for v in error.violations)
    assert error.reason == "INVALID_REQUEST"
    assert error.metadata["violations"] == str(len(error.violations))


def test_stale_expected_version_is_aborted(harness: Harness) -> None:
    connector = order_connector("py-conditional", f"{harness.upstream}/vectors/x/y")
    with Client(harness.sidecar) as sidecar, pytest.raises(SidecarError) as refused:
        sidecar.register_connector(connector, expected_version=7)
    assert refused.value.code() == grpc.StatusCode.ABORTED
    assert refused.value.violations == ()
    assert refused.value.reason == "VERSION_CONFLICT"
    assert refused.value.metadata["expected_version"] == "7"


def test_unix_socket_address(harness: Harness) -> None:
    connector = order_connector("py-unix", f"{harness.upstream}/vectors/x/y")
    with Client(harness.sidecar_unix) as sidecar:
        assert sidecar.register_connector(connector).connector.id == "py-unix"


def test_extract_variables_from_a_native_document(harness: Harness) -> None:
    document = {"order": {"status": "shipped", "items": [{"qty": 2}, {"qty": 1}]}}
    extractions = [
        {"variable": "status", "path": "order.status", "required": True},
        {"variable": "quantities", "path": "order.items[*].qty"},
        {"variable": "coupon", "path": "order.coupon", "required": True},
    ]
    with Client(harness.sidecar) as sidecar:
        extracted = sidecar.extract_variables(extractions, document)
    assert extracted.variables == {"status": "shipped", "quantities": [2, 1]}
    assert extracted.complete is False


def test_default_deadline_bounds_a_call_to_a_silent_server(harness: Harness) -> None:
    # Without the default deadline the call never ends: the worker's generous guard turns that
    # hang into a failure; elapsed time is not asserted (timing belongs in the benchmark).
    with Client(harness.silent, timeout=0.3) as sidecar, ThreadPoolExecutor(1) as worker:
        call = worker.submit(sidecar.get_connector, "anything")
        with pytest.raises(SidecarError) as expired:
            call.result(timeout=HANG_GUARD_SECONDS)
    assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_deadline_reaches_the_sidecar_before_a_slow_upstream(harness: Harness) -> None:
    node = {"connectorId": "py-slow", "branches": [{"target": "ok"}], "errorTarget": "agent"}
    with Client(harness.sidecar, timeout=1.0) as sidecar:
        sidecar.register_connector(order_connector("py-slow", f"{harness.upstream}/slow/x"))
        ending = reason_or_status(sidecar, node)
    # The sidecar keeps 20 ms of the caller's deadline to answer ERROR/TIMEOUT in time; on a busy
    # machine the client's own timer may fire first. Either way the call ends at the deadline: a
    # call without one would wait out the upstream's 5 s and answer REASON_BRANCH_MATCHED.
    assert ending in {"REASON_TIMEOUT", "DEADLINE_EXCEEDED"}


def reason_or_status(sidecar: Client, node: dict[str, Any]) -> str:
    try:
        return sidecar.evaluate_node(node, {}).reason_name
    except SidecarError as error:
        return error.code().name
