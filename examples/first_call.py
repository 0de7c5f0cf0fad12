"""A first conversation with a running sidecar (`make run` in another terminal).

    .venv/bin/python examples/first_call.py [127.0.0.1:50051]

Starts the demo order API (examples/demo_order_api.py) on 127.0.0.1:8081, then asks the sidecar
to evaluate a "Where is my order?" node for three visitors: a shipped order (MATCHED, with the
status extracted), an unknown order (NO_MATCH: the API answers 404) and a visitor who gave no
order number (ERROR: MISSING_VARIABLE, nothing sent). Finally it shows a validation error.
"""

from __future__ import annotations

import sys
import threading
import time

import grpc
from aiohttp import web
from demo_order_api import ADDRESS, application
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from rulesidecar.v1 import rules_sidecar_pb2 as pb
from rulesidecar.v1 import rules_sidecar_pb2_grpc as pb_grpc

NODE = json_format.ParseDict(
    {
        "id": "where-is-my-order",
        "connector_id": "demo-order-status",
        "branches": [
            {
                "target": "show-status",
                "conditions": [
                    {
                        "subject": {"kind": "SUBJECT_KIND_STATUS"},
                        "operator": "OPERATOR_STATUS_CLASS",
                        "operand": "2xx",
                    },
                    {
                        "subject": {"kind": "SUBJECT_KIND_BODY", "path": "status"},
                        "operator": "OPERATOR_IS_NOT_EMPTY",
                    },
                ],
            }
        ],
        "else_target": "ask-for-the-number-again",
        "error_target": "hand-off-to-an-agent",
        "extractions": [
            {"variable": "order_status", "path": "status", "required": True},
            {"variable": "carrier", "path": "carrier", "default_value": "not yet assigned"},
        ],
    },
    pb.Node(),
)


def start_demo_api() -> None:
    def run() -> None:
        web.run_app(
            application(), host=ADDRESS[0], port=ADDRESS[1], print=None, handle_signals=False
        )

    threading.Thread(target=run, daemon=True).start()
    time.sleep(0.5)


def main() -> None:
    address = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"
    start_demo_api()
    with grpc.insecure_channel(address) as channel:
        sidecar = pb_grpc.RulesSidecarServiceStub(channel)
        for visitor in ({"order_number": "A-10023"}, {"order_number": "Z-1"}, {}):
            request = pb.EvaluateNodeRequest(node=NODE)
            request.variables.update(visitor)
            answer = sidecar.EvaluateNode(request, timeout=5)
            print(
                f"{visitor!s:30} -> {pb.Outcome.Name(answer.outcome):16} "
                f"{pb.Reason.Name(answer.reason):26} target={answer.target} "
                f"http={answer.http_status} variables={json_format.MessageToDict(answer.variables)}"
            )

        bad = pb.Connector(id="Bad Id", url_template="https://{{tenant}}.example.com/x")
        try:
            sidecar.RegisterConnector(pb.RegisterConnectorRequest(connector=bad))
        except grpc.RpcError as error:
            print(f"RegisterConnector -> {error.code().name}")
            for detail in rpc_status.from_call(error).details:
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                for violation in bad_request.field_violations:
                    print(f"  {violation.field}: {violation.description}")


if __name__ == "__main__":
    main()
