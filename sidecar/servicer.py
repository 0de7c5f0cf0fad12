"""The RPC handlers: translate at the edge (wire), do the work (registry, engine), translate back.

Handlers raise SidecarError subclasses and let `interceptors` turn them into statuses, so there is
exactly one place where errors become gRPC codes.
"""

from __future__ import annotations

import grpc
from rulesidecar.v1 import rules_sidecar_pb2 as pb
from rulesidecar.v1 import rules_sidecar_pb2_grpc as pb_grpc

from sidecar import model, wire
from sidecar.errors import FieldViolation, InvalidArgumentError, NotReadyError
from sidecar.registry import Registry

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["RulesSidecarService"].full_name


class RulesSidecarServicer(pb_grpc.RulesSidecarServiceServicer):
    """Implements rulesidecar.v1.RulesSidecarService."""

    def __init__(self) -> None:
        self._registry: Registry | None = None

    def attach_registry(self, registry: Registry) -> None:
        """Start answering registry calls (until then they answer UNAVAILABLE)."""
        self._registry = registry

    @property
    def registry(self) -> Registry:
        """The loaded registry, or NotReadyError while the sidecar is still starting."""
        if self._registry is None:
            raise NotReadyError("the sidecar is still loading its connectors; retry shortly")
        return self._registry

    async def RegisterConnector(
        self, request: pb.RegisterConnectorRequest, context: grpc.aio.ServicerContext
    ) -> pb.RegisterConnectorResponse:
        if not request.HasField("connector"):
            raise InvalidArgumentError([FieldViolation("connector", "required")])
        connector = wire.connector_from_proto(request.connector)
        expected = request.expected_version if request.HasField("expected_version") else None
        if expected is not None and expected < 0:
            raise InvalidArgumentError([FieldViolation("expected_version", "must be >= 0")])
        stored, created = await self.registry.register(connector, expected_version=expected)
        return pb.RegisterConnectorResponse(
            connector=wire.connector_to_proto(stored), created=created
        )

    async def GetConnector(
        self, request: pb.GetConnectorRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetConnectorResponse:
        _require_id(request.id)
        connector = self.registry.require(request.id)
        return pb.GetConnectorResponse(connector=wire.connector_to_proto(connector))

    async def ListConnectors(
        self, request: pb.ListConnectorsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListConnectorsResponse:
        status_name = wire.enum_from_proto(
            model.ConnectorStatus, pb.ConnectorStatus, request.status, "CONNECTOR_STATUS_"
        )
        if status_name is not None and status_name not in model.ConnectorStatus.__members__:
            raise InvalidArgumentError([FieldViolation("status", status_name)])
        page, next_token = self.registry.list_page(
            page_size=request.page_size,
            page_token=request.page_token,
            status=model.ConnectorStatus(status_name) if status_name else None,
        )
        return pb.ListConnectorsResponse(
            connectors=wire.connectors_to_proto(page), next_page_token=next_token
        )

    async def DeleteConnector(
        self, request: pb.DeleteConnectorRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteConnectorResponse:
        _require_id(request.id)
        expected = request.expected_version if request.HasField("expected_version") else None
        version = await self.registry.delete(request.id, expected_version=expected)
        return pb.DeleteConnectorResponse(deleted_version=version)

    async def EvaluateNode(
        self, request: pb.EvaluateNodeRequest, context: grpc.aio.ServicerContext
    ) -> pb.EvaluateNodeResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "EvaluateNode is not implemented yet")
        raise AssertionError("unreachable: abort raises")

    async def ExtractVariables(
        self, request: pb.ExtractVariablesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExtractVariablesResponse:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "ExtractVariables is not implemented yet"
        )
        raise AssertionError("unreachable: abort raises")


def _require_id(connector_id: str) -> None:
    if not connector_id:
        raise InvalidArgumentError([FieldViolation("id", "required")])
