"""The RPC handlers: translate at the edge (wire), do the work (registry, engine), translate back.

Handlers raise SidecarError subclasses and let `interceptors` turn them into statuses, so there is
exactly one place where errors become gRPC codes.

The servicer is built complete, once the registry has loaded; until then `ServiceGate` stands in
its place on the server and answers every call UNAVAILABLE (health says NOT_SERVING meanwhile).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from functools import partial
from typing import Any

import grpc
from google.protobuf.message import Message
from pydantic import BaseModel, ConfigDict, Field
from rulesidecar.v1 import rules_sidecar_pb2 as pb
from rulesidecar.v1 import rules_sidecar_pb2_grpc as pb_grpc

from sidecar.api import wire
from sidecar.api.interceptors import OFF_LOOP_PARSE_BYTES, handlers_of, received_bytes
from sidecar.core import model
from sidecar.core.budget import (
    AnswerTooLargeError,
    BudgetExhaustedError,
    LimitExceededError,
    WorkLimits,
)
from sidecar.core.compiled_cache import CompiledCache
from sidecar.core.documents import DocumentError, parse_document
from sidecar.core.engine import CompiledNode, Engine, compile_node, compiled_size
from sidecar.core.extraction import CompiledExtractions, compile_extractions
from sidecar.core.model.node import MAX_EXTRACTIONS
from sidecar.errors import FieldViolation, InvalidArgumentError, NotReadyError, OverloadedError
from sidecar.registry import Registry
from sidecar.registry.registry import page_token_after
from sidecar.telemetry.instruments import Telemetry

_EVALUATION_MODES = frozenset(pb.EvaluationMode.values())
DEFAULT_MESSAGE_LIMIT = 4 * 1024 * 1024  # grpc's own default; the server passes its setting
# Requests larger than this are translated and compiled in a worker thread (issue 14: a 3.5 MiB
# node held the event loop for seconds), as they were parsed in one.
OFF_LOOP_REQUEST_BYTES = OFF_LOOP_PARSE_BYTES
SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["RulesSidecarService"].full_name


# Answers whose values may take more than this are built (and measured) in a worker thread: a
# 4 MiB answer is ~200,000 values filled one by one, 100 ms and more on the event loop.
OFF_LOOP_ANSWER_BYTES = 64 * 1024
# With explain, each condition may show a value of up to max_explain_value_bytes (4 KiB): more
# conditions than this may make a large answer.
OFF_LOOP_EXPLAINED_CONDITIONS = 16


def _large_answer(
    results: Sequence[model.ExtractionResult], conditions: int = 0, explain: bool = False
) -> bool:
    """Whether an answer may be large enough to be built off the event loop: its extracted
    values' sizes were measured where they were made (`value_bytes`)."""
    if explain and conditions > OFF_LOOP_EXPLAINED_CONDITIONS:
        return True
    return sum(result.value_bytes for result in results) > OFF_LOOP_ANSWER_BYTES


def _request_bytes(request: Message) -> int:
    """The request's size on the wire: as the guard received it, or measured (a direct call)."""
    size = received_bytes.get()
    return request.ByteSize() if size < 0 else size


class RulesSidecarServicer(pb_grpc.RulesSidecarServiceServicer):
    """Implements rulesidecar.v1.RulesSidecarService."""

    def __init__(
        self,
        registry: Registry,
        engine: Engine,
        *,
        telemetry: Telemetry,
        max_concurrent_evaluations: int,
        message_limit: int = DEFAULT_MESSAGE_LIMIT,
        max_cache_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self._registry = registry
        self._engine = engine
        self._telemetry = telemetry
        # Sized from the message bytes each was compiled from (key and size alike).
        self._nodes: CompiledCache[bytes, CompiledNode] = CompiledCache(
            limit=1024, max_bytes=max_cache_bytes
        )
        self._extractions: CompiledCache[bytes, CompiledExtractions] = CompiledCache(
            limit=1024, max_bytes=max_cache_bytes
        )
        self._evaluation_slots = max_concurrent_evaluations
        self._evaluations_in_flight = 0
        self._message_limit = message_limit  # answers are kept within what grpc will send

    @property
    def evaluations_in_flight(self) -> int:
        """EvaluateNode calls being evaluated now (a metric)."""
        return self._evaluations_in_flight

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
        expected = request.expected_version if request.HasField("expected_version") else None
        if expected is not None and expected < 0:
            raise InvalidArgumentError([FieldViolation("expected_version", "must be >= 0")])
        stored, created = await self._registry.register(connector, expected_version=expected)
        return pb.RegisterConnectorResponse(
            connector=wire.connector_to_proto(stored), created=created
        )

    async def GetConnector(
        self,
        request: pb.GetConnectorRequest,
        context: grpc.aio.ServicerContext[pb.GetConnectorRequest, pb.GetConnectorResponse],
    ) -> pb.GetConnectorResponse:
        _require_id(request.id)
        connector = self._registry.require(request.id)
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
        page, next_token = self._registry.list_page(
            page_size=request.page_size,
            page_token=request.page_token,
            status=model.ConnectorStatus(status_name) if status_name else None,
        )
        return _page_within(page, next_token, self._message_limit)

    async def DeleteConnector(
        self,
        request: pb.DeleteConnectorRequest,
        context: grpc.aio.ServicerContext[pb.DeleteConnectorRequest, pb.DeleteConnectorResponse],
    ) -> pb.DeleteConnectorResponse:
        _require_id(request.id)
        expected = request.expected_version if request.HasField("expected_version") else None
        if expected is not None and expected < 0:
            raise InvalidArgumentError([FieldViolation("expected_version", "must be >= 0")])
        version = await self._registry.delete(request.id, expected_version=expected)
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
        if _request_bytes(request) > OFF_LOOP_REQUEST_BYTES:
            # Translating and compiling megabytes takes seconds: not on the event loop.
            compiled, variables = await asyncio.to_thread(self._evaluation_input, request)
        else:
            key = request.node.SerializeToString(deterministic=True)
            cached = self._nodes.cached(key)
            if cached is None:  # compiling (64 large regexes: seconds) happens in a worker
                compiled, variables = await asyncio.to_thread(self._evaluation_input, request, key)
            else:
                compiled, variables = cached, wire.variables_from_proto(request.variables)
        if self._evaluations_in_flight >= self._evaluation_slots:
            raise OverloadedError(
                f"{self._evaluations_in_flight} evaluations are in progress, the most this "
                "sidecar accepts at once; retry with backoff",
                metadata={"max_concurrent_evaluations": str(self._evaluation_slots)},
            )
        # The slot is released only once the work stopped: a cancelled call's engine cancels
        # its budget and waits for its worker before the cancellation reaches this finally.
        self._evaluations_in_flight += 1
        try:
            # The INTERNAL span, the evaluations counter and the evaluation's log line.
            with self._telemetry.evaluation(compiled.node) as evaluation:
                outcome = await self._engine.evaluate(
                    compiled,
                    variables,
                    explain=request.explain,
                    allow_draft=request.mode == pb.EVALUATION_MODE_TEST,
                    time_remaining=context.time_remaining(),
                )
                error_target, limit = compiled.node.error_target, self._message_limit
                if _large_answer(outcome.extractions, compiled.conditions, request.explain):
                    outcome, response = await asyncio.to_thread(
                        partial(
                            wire.evaluate_answer,
                            outcome,
                            error_target=error_target,
                            message_limit=limit,
                        )
                    )
                else:  # called as it is: a partial with keywords costs more than the call
                    outcome, response = wire.evaluate_answer(
                        outcome, error_target=error_target, message_limit=limit
                    )
                evaluation.record(outcome)
        finally:
            self._evaluations_in_flight -= 1
        return response

    async def ExtractVariables(
        self,
        request: pb.ExtractVariablesRequest,
        context: grpc.aio.ServicerContext[pb.ExtractVariablesRequest, pb.ExtractVariablesResponse],
    ) -> pb.ExtractVariablesResponse:
        if _request_bytes(request) > OFF_LOOP_REQUEST_BYTES:
            extractions, document, document_bytes = await asyncio.to_thread(
                self._extraction_input, request
            )
        else:
            key = _extractions_key(request)  # serialised once, for the lookup and the cache
            cached = self._extractions.cached(key)
            if cached is None:  # compiling (pydantic, JMESPath) happens in a worker
                extractions, document, document_bytes = await asyncio.to_thread(
                    self._extraction_input, request, key
                )
            else:
                extractions = cached
                document, document_bytes = _document_of(request, extractions.roots)
        try:
            variables, results = await self._engine.extract(
                extractions,
                document,
                document_bytes=document_bytes,
                time_remaining=context.time_remaining(),
            )
        except (BudgetExhaustedError, LimitExceededError, AnswerTooLargeError) as stopped:
            if isinstance(stopped, BudgetExhaustedError) and self._engine.stopping:
                # Stopped by the drain, not by the caller's input: UNAVAILABLE, so the caller
                # retries (on another replica), where INVALID_ARGUMENT would tell it not to.
                raise NotReadyError(f"{stopped.message}; retry") from None
            # No outcome to carry the reason: the error's ErrorInfo does (LIMIT_EXCEEDED,
            # BUDGET_EXHAUSTED or ANSWER_TOO_LARGE, as EvaluateNode's outcomes would say).
            raise InvalidArgumentError(
                [FieldViolation("extractions", stopped.message)], reason=stopped.reason.value
            ) from None
        limit = self._message_limit
        if _large_answer(results):
            return await asyncio.to_thread(
                partial(wire.extract_answer, variables, results, message_limit=limit)
            )
        return wire.extract_answer(variables, results, message_limit=limit)

    def _evaluation_input(
        self, request: pb.EvaluateNodeRequest, key: bytes | None = None
    ) -> tuple[CompiledNode, dict[str, Any]]:
        """The compiled node (cached by `key`, its bytes) and the variables, from the messages."""
        key = request.node.SerializeToString(deterministic=True) if key is None else key
        compiled = self._nodes.get(
            key,
            lambda: _compile_node_message(request.node, self._engine.limits),
            size=compiled_size(len(key)),
        )
        return compiled, wire.variables_from_proto(request.variables)

    def _extraction_input(
        self, request: pb.ExtractVariablesRequest, key: bytes | None = None
    ) -> tuple[CompiledExtractions, Any, int]:
        """The compiled extractions (cached by `key`, the extractions' bytes), the document and
        its size in bytes."""
        key = _extractions_key(request) if key is None else key
        extractions = self._extractions.get(
            key,
            lambda: _compile_extraction_messages(request.extractions, self._engine.limits),
            size=compiled_size(len(key)),
        )
        document, size = _document_of(request, extractions.roots)
        return extractions, document, size


def _document_of(
    request: pb.ExtractVariablesRequest, roots: frozenset[str] | None
) -> tuple[Any, int]:
    """ExtractVariables' document as plain data, and its size in bytes; of a json Value, only
    the `roots` the queries read, when they say what those are (plain paths)."""
    document_kind = request.WhichOneof("document")
    if document_kind is None:
        raise InvalidArgumentError([FieldViolation("document", "set json or raw_json")])
    if document_kind == "json":
        return wire.document_from_proto(request.json, "json", roots=roots)
    try:
        document = parse_document(request.raw_json)
    except DocumentError as exc:
        raise InvalidArgumentError([FieldViolation("raw_json", str(exc))]) from exc
    return document, len(request.raw_json)


def _page_within(
    page: Sequence[model.Connector], next_token: str, message_limit: int
) -> pb.ListConnectorsResponse:
    """The page, cut short where it would outgrow the message limit (the next token resumes
    there): a page is counted in connectors and in bytes, as connectors can be megabytes each.
    At least one connector is answered, so paging always moves on."""
    response = pb.ListConnectorsResponse()
    room = message_limit - _PAGE_TOKEN_ROOM
    for index, connector in enumerate(page):
        message = wire.connector_to_proto(connector)
        # A repeated field costs its message, a tag byte and the length's varint (<= 5 bytes).
        cost = message.ByteSize() + 6
        if index > 0 and cost > room:
            response.next_page_token = page_token_after(page[index - 1].id)
            return response
        response.connectors.append(message)
        room -= cost
    response.next_page_token = next_token
    return response


_PAGE_TOKEN_ROOM = 1024  # a page token (a base64 connector id) and its framing fit in this


class ServiceGate(grpc.GenericRpcHandler):
    """RulesSidecarService on the server: closed (UNAVAILABLE) until `open` hands it a servicer.

    The server answers health (NOT_SERVING) before the store and the connectors file are loaded,
    but a servicer needs the registry they fill; the gate holds the servicer's place meanwhile,
    so the servicer is built complete, once, with nothing in it that can still be missing.
    """

    def __init__(self) -> None:
        self._handlers: tuple[grpc.GenericRpcHandler, ...] = ()
        self._not_ready = _refusal(LOADING)

    def waiting_for(self, reason: str) -> None:
        """Say why calls are refused while closed (the store is unreachable, retrying)."""
        self._not_ready = _refusal(reason)

    def open(self, servicer: RulesSidecarServicer) -> None:
        """Route calls to `servicer` from now on."""
        self._handlers = handlers_of(pb_grpc.add_RulesSidecarServiceServicer_to_server, servicer)

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        """The servicer's handler for this call, a refusal while closed, None for other services."""
        method: str = handler_call_details.method
        if not method.startswith(f"/{SERVICE_NAME}/"):
            return None
        if not self._handlers:
            return self._not_ready
        for handler in self._handlers:
            found = handler.service(handler_call_details)
            if found is not None:
                return found
        return None


LOADING = "the sidecar is still loading its connectors; retry shortly"


def _refusal(reason: str) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler refusing every call UNAVAILABLE with `reason`; request bytes are never parsed."""

    async def refuse_while_loading(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        raise NotReadyError(reason)

    return grpc.unary_unary_rpc_method_handler(refuse_while_loading)


class _ExtractionsInput(BaseModel):
    """Validates ExtractVariables' extractions, with field paths `extractions[i]...`."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    extractions: tuple[model.Extraction, ...] = Field(max_length=MAX_EXTRACTIONS)


def _compile_node_message(node: pb.Node, limits: WorkLimits) -> CompiledNode:
    try:
        validated = wire.node_from_proto(node, max_operand_values=limits.max_operand_values)
        return compile_node(validated, limits=limits)
    except InvalidArgumentError as error:
        raise InvalidArgumentError(
            [
                FieldViolation(_under_node(violation.field), violation.description)
                for violation in error.violations
            ]
        ) from error


def _compile_extraction_messages(
    extractions: Sequence[pb.Extraction], limits: WorkLimits
) -> CompiledExtractions:
    values = wire.OperandValues(limits.max_operand_values)
    data = wire.extractions_data(extractions, "extractions", values)
    return compile_extractions(wire.validate_extractions(_ExtractionsInput, data).extractions)


def _extractions_key(request: pb.ExtractVariablesRequest) -> bytes:
    """What compiled extractions are cached by: the bytes of the extractions alone."""
    return pb.ExtractVariablesRequest(extractions=request.extractions).SerializeToString(
        deterministic=True
    )


def _under_node(field: str) -> str:
    """Violations from compiling are relative to the node; those from validation already say so."""
    return field if field.startswith("node") else f"node.{field}"


def _require_id(connector_id: str) -> None:
    if not connector_id:
        raise InvalidArgumentError([FieldViolation("id", "required")])
