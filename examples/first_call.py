"""A first conversation with a running sidecar (`make run` in another terminal).

    .venv/bin/python examples/first_call.py [127.0.0.1:50051]

Lists the connectors loaded from examples/connectors.yaml, registers one through the API,
registers it again to show the version bump, and shows how a validation error reads.
"""

import sys

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from rulesidecar.v1 import rules_sidecar_pb2 as pb
from rulesidecar.v1 import rules_sidecar_pb2_grpc as pb_grpc

address = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"
with grpc.insecure_channel(address) as channel:
    sidecar = pb_grpc.RulesSidecarServiceStub(channel)

    for connector in sidecar.ListConnectors(pb.ListConnectorsRequest()).connectors:
        status = pb.ConnectorStatus.Name(connector.status)
        print(f"{connector.id:22} v{connector.version} {status:24} {connector.url_template}")

    definition = pb.Connector(
        id="subscription-tier",
        display_name="Look up a subscription tier",
        status=pb.CONNECTOR_STATUS_DRAFT,
        method=pb.HTTP_METHOD_GET,
        url_template="https://billing.example.com/v1/accounts/{{account_id}}",
        query={"fields": "tier,renewal_date"},
        auth=pb.Auth(bearer=pb.BearerAuth(token_secret="billing_token")),
        timeout=duration_pb2.Duration(seconds=3),
    )
    for _ in range(2):
        stored = sidecar.RegisterConnector(pb.RegisterConnectorRequest(connector=definition))
        print(f"registered {stored.connector.id} version {stored.connector.version}")

    bad = pb.Connector(id="Bad Id", url_template="https://{{tenant}}.example.com/x")
    try:
        sidecar.RegisterConnector(pb.RegisterConnectorRequest(connector=bad))
    except grpc.RpcError as error:
        print(f"{error.code().name}:")
        for detail in rpc_status.from_call(error).details:
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            for violation in bad_request.field_violations:
                print(f"  {violation.field}: {violation.description}")
