"""A first conversation with a running sidecar (`make run` in another terminal).

    .venv/bin/python examples/first_call.py [127.0.0.1:50051]

Starts the demo order API (examples/demo_order_api.py) on 127.0.0.1:8081, or reuses it when it
already answers there (a second run, or `python examples/demo_order_api.py` in another
terminal), then asks the sidecar to evaluate a "Where is my order?" node for three visitors: a
shipped order (MATCHED, with the status extracted), an unknown order (NO_MATCH: the API answers
404) and a visitor who gave no order number (ERROR: MISSING_VARIABLE, nothing sent). Finally it
shows a validation error.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import urllib.request

import grpc
from aiohttp import web
from demo_order_api import ADDRESS, API_KEY, application
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


DEMO_API = f"http://{ADDRESS[0]}:{ADDRESS[1]}"


def demo_api_is_running() -> bool:
    """Whether the demo order API already answers on ADDRESS (it knows order A-10023)."""
    url = f"{DEMO_API}/orders/A-10023"  # a fixed http URL: no file: or custom scheme
    request = urllib.request.Request(url, headers={"X-API-Key": API_KEY})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=2) as answer:  # noqa: S310
            return bool(json.load(answer).get("order_number") == "A-10023")
    except (OSError, ValueError):  # refused, an HTTP error, or not this API's JSON
        return False


def start_demo_api() -> None:
    """Serve the demo API from a background thread; return once it listens, or exit saying
    why it cannot."""
    listening = threading.Event()
    failures: list[OSError] = []

    def run() -> None:
        loop = asyncio.new_event_loop()
        runner = web.AppRunner(application())
        try:
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.TCPSite(runner, *ADDRESS).start())
        except OSError as exc:
            failures.append(exc)
            return
        finally:
            listening.set()
        loop.run_forever()

    threading.Thread(target=run, daemon=True).start()
    listening.wait(10)
    if failures:
        sys.exit(
            f"first_call: cannot start the demo order API on {DEMO_API} "
            f"({failures[0].strerror}), and what answers there is not the demo API: stop "
            "whatever uses that port and run this again"
        )


def main() -> None:
    address = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"
    if demo_api_is_running():
        print(f"the demo order API already answers on {DEMO_API}: using it")
    else:
        start_demo_api()
    with grpc.insecure_channel(address) as channel:
        sidecar = pb_grpc.RulesSidecarServiceStub(channel)
        for visitor in ({"order_number": "A-10023"}, {"order_number": "Z-1"}, {}):
            request = pb.EvaluateNodeRequest(node=NODE)
            request.variables.update(visitor)
            try:
                answer = sidecar.EvaluateNode(request, timeout=5)
            except grpc.RpcError as error:
                if error.code() is not grpc.StatusCode.UNAVAILABLE:
                    raise
                sys.exit(
                    f"first_call: no sidecar answers on {address} ({error.details()}): start "
                    "one with `make run` in another terminal, then run this again"
                )
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
