"""Hot reload over the real wire: a `rules-sidecar serve` process fed by kubelet-style volumes.

The connectors file and the secrets directory are laid out exactly as Kubernetes mounts a
ConfigMap and a Secret (tests/configmap_volume.py) and updated the way the kubelet does it, by
swapping the `..data` link. The sidecar is pointed at `dir/connectors.yaml`, the visible link.
Every wait polls the sidecar with a deadline; nothing asserts how long a reload took.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from google.protobuf import json_format
from grpc_health.v1 import health_pb2
from rulesidecar.v1 import rules_sidecar_pb2 as pb

from sidecar.server import CONNECTORS_FILE_HEALTH_SERVICE
from tests.support.configmap_volume import ConfigMapVolume
from tests.support.loopback import LOOPBACK_ENVIRONMENT
from tests.support.sidecars import SidecarProcess
from tests.support.upstreams import ORDER_API_KEY, Upstream

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
RPC_TIMEOUT = 5.0
RELOAD_DEADLINE_SECONDS = 15.0
SECRET_NAME = "store_api_key"
CONNECTORS = "connectors.yaml"


def orders_connector(connector_id: str, upstream: Upstream, **fields: Any) -> dict[str, Any]:
    return {
        "id": connector_id,
        "status": "LIVE",
        "url_template": upstream.url("/orders/{{order_number}}"),
        "auth": {"api_key": {"name": "X-API-Key", "value_secret": SECRET_NAME}},
        **fields,
    }


def connectors_yaml(*definitions: dict[str, Any]) -> str:
    return yaml.safe_dump({"connectors": list(definitions)})


def error_messages(log: str) -> list[str]:
    """The ERROR records of the sidecar's log, whether JSON lines (the default) or text."""
    messages = []
    for line in log.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            if " ERROR " in line:
                messages.append(line)
            continue
        if isinstance(record, dict) and record.get("level") == "ERROR":
            messages.append(str(record.get("message")))
    return messages


@dataclass
class Pod:
    """A sidecar process with its connectors ConfigMap and its Secret, as mounted in a pod."""

    sidecar: SidecarProcess
    connectors: ConfigMapVolume
    secrets: ConfigMapVolume
    upstream: Upstream

    def publish_connectors(self, *definitions: dict[str, Any]) -> None:
        self.connectors.write({CONNECTORS: connectors_yaml(*definitions)})

    def evaluate(self, connector_id: str) -> pb.EvaluateNodeResponse:
        node = {
            "connector_id": connector_id,
            "else_target": "else",
            "error_target": "error",
            "branches": [
                {
                    "target": "found",
                    "conditions": [
                        {
                            "subject": {"kind": "SUBJECT_KIND_STATUS"},
                            "operator": "OPERATOR_EQUALS",
                            "operand": 200,
                        }
                    ],
                }
            ],
        }
        request = json_format.ParseDict(
            {"node": node, "variables": {"order_number": "A-10023"}}, pb.EvaluateNodeRequest()
        )
        response: pb.EvaluateNodeResponse = self.sidecar.stub.EvaluateNode(
            request, timeout=RPC_TIMEOUT
        )
        return response

    def target(self, connector_id: str) -> str:
        return self.evaluate(connector_id).target

    def version(self, connector_id: str) -> int:
        request = pb.GetConnectorRequest(id=connector_id)
        return int(self.sidecar.stub.GetConnector(request, timeout=RPC_TIMEOUT).connector.version)

    def wait_for(self, what: str, condition: Callable[[], bool]) -> None:
        """Poll `condition` until it holds; fail with the sidecar's log after the deadline."""
        deadline = time.monotonic() + RELOAD_DEADLINE_SECONDS
        while not condition():
            if time.monotonic() > deadline:
                pytest.fail(f"{what}: not seen in time\n{self.sidecar.stderr_text()}")
            time.sleep(0.05)


@pytest.fixture
def pod(sidecar_process: Callable[..., SidecarProcess], upstream: Upstream, tmp_path: Path) -> Pod:
    connectors = ConfigMapVolume(tmp_path / "connectors")
    connectors_file = connectors.write(
        {CONNECTORS: connectors_yaml(orders_connector("order-status", upstream))}
    )[CONNECTORS]
    secrets = ConfigMapVolume(tmp_path / "secrets")
    secrets.write({SECRET_NAME: ORDER_API_KEY + "\n"})
    sidecar = sidecar_process(
        args=["--connectors-file", str(connectors_file), "--secrets-dir", str(secrets.directory)],
        env={
            # Faster than the 1 s default, to keep the suite quick; the mechanism is the same.
            "RULES_SIDECAR_CONNECTORS_RELOAD_SECONDS": "0.2",
            # The test upstream is plain http on loopback, which the egress guard refuses unless
            # the operator opens it, as here.
            **LOOPBACK_ENVIRONMENT,
        },
    )
    return Pod(sidecar, connectors, secrets, upstream)


def test_new_connector_answers_after_the_data_link_swap(pod):
    assert pod.target("order-status") == "found"
    assert pod.evaluate("loyalty-points").reason == pb.REASON_CONNECTOR_NOT_FOUND

    pod.publish_connectors(
        orders_connector("order-status", pod.upstream),
        orders_connector("loyalty-points", pod.upstream),
    )
    pod.wait_for("the new connector", lambda: pod.target("loyalty-points") == "found")

    assert pod.version("order-status") == 1  # unchanged content keeps its version
    assert pod.version("loyalty-points") == 1
    assert "reloaded connectors file" in pod.sidecar.stderr_text()
    assert pod.sidecar.terminate() == 0


def test_changed_connector_gets_a_new_version_and_a_removed_one_disappears(pod):
    pod.publish_connectors(
        orders_connector("order-status", pod.upstream, display_name="Where is my order?")
    )
    pod.wait_for("version 2", lambda: pod.version("order-status") == 2)
    pod.publish_connectors(orders_connector("refunds", pod.upstream))
    pod.wait_for("the removal", lambda: pod.target("order-status") == "error")
    assert pod.evaluate("order-status").reason == pb.REASON_CONNECTOR_NOT_FOUND
    assert pod.target("refunds") == "found"


def test_invalid_file_keeps_the_old_set_and_the_failure_is_visible(pod):
    def file_health() -> int:
        return pod.sidecar.health_status(CONNECTORS_FILE_HEALTH_SERVICE)

    pod.wait_for("ConnectorsFile SERVING", lambda: file_health() == SERVING)
    broken = orders_connector("loyalty-points", pod.upstream, timeout="2 fortnights")
    pod.publish_connectors(orders_connector("order-status", pod.upstream), broken)

    pod.wait_for("ConnectorsFile NOT_SERVING", lambda: file_health() == NOT_SERVING)
    # The pod stays in service: readiness ("" and the service) is untouched, the old set answers.
    assert pod.sidecar.health_status("") == SERVING
    assert pod.sidecar.health_status("rulesidecar.v1.RulesSidecarService") == SERVING
    assert pod.target("order-status") == "found"
    assert pod.evaluate("loyalty-points").reason == pb.REASON_CONNECTOR_NOT_FOUND
    errors = error_messages(pod.sidecar.stderr_text())
    assert len(errors) == 1
    assert "keeping the last good set" in errors[0]
    assert "connectors[1].timeout" in errors[0]

    pod.publish_connectors(orders_connector("order-status", pod.upstream))
    pod.wait_for("ConnectorsFile SERVING again", lambda: file_health() == SERVING)


def test_rotated_secret_is_used_after_the_secret_volume_swap(pod):
    pod.secrets.write({SECRET_NAME: "an-old-revoked-key\n"})
    pod.wait_for("the old key", lambda: pod.evaluate("order-status").http_status == 401)
    pod.secrets.write({SECRET_NAME: ORDER_API_KEY + "\n"})
    pod.wait_for("the rotated key", lambda: pod.target("order-status") == "found")
    assert pod.upstream.last("/orders/").header("X-API-Key") == ORDER_API_KEY


def test_sidecar_without_a_reachable_connectors_file_keeps_serving_the_last_good_set(pod):
    (pod.connectors.directory / CONNECTORS).unlink()
    pod.wait_for(
        "ConnectorsFile NOT_SERVING",
        lambda: pod.sidecar.health_status(CONNECTORS_FILE_HEALTH_SERVICE) == NOT_SERVING,
    )
    assert pod.target("order-status") == "found"
    with pytest.raises(grpc.RpcError) as raised:
        pod.sidecar.health_status("rulesidecar.v1.NoSuchService")
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
