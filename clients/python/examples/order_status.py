"""Register an order-status connector, evaluate a "Where is my order?" node, print the verdict.

With `make run` and `.venv/bin/python examples/demo_order_api.py` running (repository root):

    .venv/bin/python clients/python/examples/order_status.py [sidecar address] [order API URL]

With RULES_SIDECAR_TOKEN_FILE set (as deploy/examples/chat-backend sets it), sends that file's
token, read again when the file changes.
"""

from __future__ import annotations

import os
import sys

from rulesidecar.client import Client, SidecarError, TokenFile


def main() -> None:
    address = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"
    order_api = sys.argv[2] if len(sys.argv) > 2 else "http://127.0.0.1:8081"
    token_file = os.environ.get("RULES_SIDECAR_TOKEN_FILE")
    token = TokenFile(token_file) if token_file else None
    with Client(address, timeout=5.0, token=token) as sidecar:
        registered = sidecar.register_connector(
            {
                "id": "order-status-example",
                "displayName": "Where is my order? (client example)",
                "status": "CONNECTOR_STATUS_LIVE",
                "urlTemplate": order_api + "/orders/{{order_number}}",
                "auth": {"apiKey": {"name": "X-API-Key", "valueSecret": "demo_store_api_key"}},
            }
        )
        print(f"registered {registered.connector.id} version {registered.connector.version}")

        node = {
            "id": "where-is-my-order",
            "connectorId": "order-status-example",
            "branches": [
                {
                    "target": "show-status",
                    "conditions": [
                        {
                            "subject": {"kind": "SUBJECT_KIND_STATUS"},
                            "operator": "OPERATOR_STATUS_CLASS",
                            "operand": "2xx",
                        }
                    ],
                }
            ],
            "elseTarget": "ask-for-the-number-again",
            "errorTarget": "hand-off-to-an-agent",
            "extractions": [{"variable": "order_status", "path": "status", "required": True}],
        }
        for order in ("A-10023", "Z-1"):
            evaluation = sidecar.evaluate_node(node, {"order_number": order})
            branch = -1 if evaluation.branch_index is None else evaluation.branch_index
            status = evaluation.variables.get("order_status", "<nil>")
            print(
                f"order {order}: {evaluation.outcome_name} branch={branch} "
                f"target={evaluation.target} order_status={status}"
            )

        try:
            sidecar.register_connector({"id": "Bad Id"})
        except SidecarError as error:
            print(f"invalid connector: {error.code().name}")
            for violation in error.violations:
                print(f"  {violation.field}: {violation.description}")


if __name__ == "__main__":
    main()
