"""The RPC handlers: translate at the edge (wire), do the work (registry, engine), translate back.

Handlers raise SidecarError subclasses and let `interceptors` turn them into statuses, so there is
exactly one place where errors become gRPC codes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar
from urllib.parse import urlsplit

import grpc
from pydantic import BaseModel, ConfigDict, Field
from rulesidecar.v1 import rules_sidecar_pb2 as pb
from rulesidecar.v1 import rules_sidecar_pb2_grpc as pb_grpc

from sidecar.api import wire
from sidecar.core import model
from sidecar.core.documents import DocumentError, parse_document
from sidecar.core.engine import CompiledNode, Engine, compile_node
from sidecar.core.extraction import CompiledExtractions, compile_extractions, required_failures
from sidecar.core.model.node import MAX_EXTRACTIONS
from sidecar.core.secrets import SecretBindings
from sidecar.errors import FieldViolation, InvalidArgumentError, NotReadyError, OverloadedError
from sidecar.registry import Registry
from sidecar.telemetry.instruments import Telemetry

T = TypeVar("T")
_EVALUATION_MODES = frozenset(pb.EvaluationMode.values())
SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["RulesSidecarService"].full_name


class RulesSidecarServicer(pb_grpc.RulesSidecarServiceServicer):
    """Implements rulesidecar.v1.RulesSidecarService."""

    def __init__(
        self,
        *,
        max_concurrent_evaluations: int = 512,
        bindings: SecretBindings | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._telemetry = telemetry or Telemetry()
        self._registry: Registry | None = None
        self._engine: Engine | None = None
        self._nodes: CompiledCache[CompiledNode] = CompiledCache()
        self._extractions: CompiledCache[CompiledExtractions] = CompiledCache()
        self._bindings = bindings or SecretBindings({})
        self._evaluation_slots = max_concurrent_evaluations
        self._evaluations_in_flight = 0

    def attach(self, registry: Registry, engine: Engine) -> None:
        """Start answering (until then every call answers UNAVAILABLE)."""
        self._registry = registry
        self._engine = engine

    @property
    def evaluations_in_flight(self) -> int:
        """EvaluateNode calls being evaluated now (a metric)."""
        return self._evaluations_in_flight

    @property
    def registry(self) -> Registry:
        """The loaded registry, or NotReadyError while the sidecar is still starting."""
        if self._registry is None:
            raise NotReadyError("the sidecar is still loading its connectors; retry shortly")
        return self._registry

    @property
    def engine(self) -> Engine:
        """The evaluation engine, or NotReadyError while the sidecar is still starting."""
        if self._engine is None:
            raise NotReadyError("the sidecar is still loading its connectors; retry shortly")
        return self._engine

    async def RegisterConnector(
        self,
        request: pb.RegisterConnectorRequest,
        context: grpc.aio.ServicerContext[
            pb.RegisterConnectorRequest, pb.RegisterConnectorResponse
        ],
    ) -> pb.RegisterConnectorResponse:
        if not request.HasField("connector"):
            raise InvalidArgumentError([FieldViolation("connector", "required")])
        connector = wire.connector_from_proto(request.connector)
        host = urlsplit(connector.url_template).hostname or ""
        refused = self._bindings.violations(connector.secret_names(), host)
        if refused:
            raise InvalidArgumentError(
                [FieldViolation("connector.auth", problem) for problem in refused]
            )
        expected = request.expected_version if request.HasField("expected_version") else None
        if expected is not None and expected < 0:
            raise InvalidArgumentError([FieldViolation("expected_version", "must be >= 0")])
        stored, created = await self.registry.register(connector, expected_version=expected)
        return pb.RegisterConnectorResponse(
            connector=wire.connector_to_proto(stored), created=created
        )

    async def GetConnector(
        self,
        request: pb.GetConnectorRequest,
        context: grpc.aio.ServicerContext[pb.GetConnectorRequest, pb.GetConnectorResponse],
    ) -> pb.GetConnectorResponse:
        _require_id(request.id)
        connector = self.registry.require(request.id)
        return pb.GetConnectorResponse(connector=wire.connector_to_proto(connector))

    async def ListConnectors(
        self,
        request: pb.ListConnectorsRequest,
        context: grpc.aio.ServicerContext[pb.ListConnectorsRequest, pb.ListConnectorsResponse],
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
        self,
        request: pb.DeleteConnectorRequest,
        context: grpc.aio.ServicerContext[pb.DeleteConnectorRequest, pb.DeleteConnectorResponse],
    ) -> pb.DeleteConnectorResponse:
        _require_id(request.id)
        expected = request.expected_version if request.HasField("expected_version") else None
        version = await self.registry.delete(request.id, expected_version=expected)
        return pb.DeleteConnectorResponse(deleted_version=version)

    async def EvaluateNode(
        self,
        request: pb.EvaluateNodeRequest,
        context: grpc.aio.ServicerContext[pb.EvaluateNodeRequest, pb.EvaluateNodeResponse],
    ) -> pb.EvaluateNodeResponse:
        if not request.HasField("node"):
            raise InvalidArgumentError([FieldViolation("node", "required")])
        if request.mode not in _EVALUATION_MODES:
            raise InvalidArgumentError([FieldViolation("mode", "unknown evaluation mode")])
        node = request.node
        compiled = self._nodes.get(
            node.SerializeToString(deterministic=True), lambda: _compile_node_message(node)
        )
        variables = wire.variables_from_proto(request.variables)
        if self._evaluations_in_flight >= self._evaluation_slots:
            raise OverloadedError(
                f"{self._evaluations_in_flight} evaluations are in progress, the most this "
                "sidecar accepts at once; retry with backoff"
            )
        self._evaluations_in_flight += 1
        try:
            # The INTERNAL span, the evaluations counter and the evaluation's log line.
            with self._telemetry.evaluation(compiled.node) as evaluation:
                outcome = await self.engine.evaluate(
                    compiled,
                    variables,
                    explain=request.explain,
                    allow_draft=request.mode == pb.EVALUATION_MODE_TEST,
                    time_remaining=context.time_remaining(),
                )
                evaluation.record(outcome)
        finally:
            self._evaluations_in_flight -= 1
        return wire.outcome_to_proto(outcome)

    async def ExtractVariables(
        self,
        request: pb.ExtractVariablesRequest,
        context: grpc.aio.ServicerContext[pb.ExtractVariablesRequest, pb.ExtractVariablesResponse],
    ) -> pb.ExtractVariablesResponse:
        key = pb.ExtractVariablesRequest(extractions=request.extractions).SerializeToString(
            deterministic=True
        )
        compiled = self._extractions.get(
            key, lambda: _compile_extraction_messages(request.extractions)
        )
        document_kind = request.WhichOneof("document")
        if document_kind is None:
            raise InvalidArgumentError([FieldViolation("document", "set json or raw_json")])
        if document_kind == "json":
            document = wire.value_from_proto(request.json, "json")
        else:
            try:
                document = parse_document(request.raw_json)
            except DocumentError as exc:
                raise InvalidArgumentError([FieldViolation("raw_json", str(exc))]) from exc
        variables, results = compiled.apply(document, has_document=True)
        response = pb.ExtractVariablesResponse(
            extractions=wire.extraction_results_to_proto(results),
            complete=not required_failures(results),
        )
        response.variables.CopyFrom(wire.struct_of(variables))
        return response


class _ExtractionsInput(BaseModel):
    """Validates ExtractVariables' extractions, with field paths `extractions[i]...`."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    extractions: tuple[model.Extraction, ...] = Field(max_length=MAX_EXTRACTIONS)


class CompiledCache(Generic[T]):
    """Compiled forms by the bytes of the message they came from: a repeat costs one lookup.

    Backends send the same few nodes and extraction lists over and over; validating and
    compiling them (pydantic, JMESPath, RE2) on every call would dominate the hot path.
    Bounded, least recently used out. Only successful compilations are kept.
    """

    def __init__(self, limit: int = 1024) -> None:
        self._limit = limit
        self._entries: OrderedDict[bytes, T] = OrderedDict()

    def get(self, key: bytes, build: Callable[[], T]) -> T:
        """The cached value for key, or build() (which may raise) on first sight."""
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
            return found
        built = self._entries[key] = build()
        if len(self._entries) > self._limit:
            self._entries.popitem(last=False)
        return built


def _compile_node_message(node: pb.Node) -> CompiledNode:
    try:
        return compile_node(wire.node_from_proto(node))
    except InvalidArgumentError as error:
        raise InvalidArgumentError(
            [
                FieldViolation(_under_node(violation.field), violation.description)
                for violation in error.violations
            ]
        ) from error


def _compile_extraction_messages(extractions: Sequence[pb.Extraction]) -> CompiledExtractions:
    data = {"extractions": wire.extractions_data(extractions, "extractions")}
    return compile_extractions(wire.validate(_ExtractionsInput, data, prefix="").extractions)


def _under_node(field: str) -> str:
    """Violations from compiling are relative to the node; those from validation already say so."""
    return field if field.startswith("node") else f"node.{field}"


def _require_id(connector_id: str) -> None:
    if not connector_id:
        raise InvalidArgumentError([FieldViolation("id", "required")])
