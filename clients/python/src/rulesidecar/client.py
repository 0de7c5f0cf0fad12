"""A thin client for rules-sidecar: plain dicts in and out, one default deadline, readable errors.

The generated stubs (`rulesidecar.v1`) are complete but clumsy where the contract carries JSON:
variables travel as `google.protobuf.Struct` and field violations hide in the status details. This
module converts at that edge and adds nothing else; every result keeps the generated message too.

    >>> from rulesidecar.client import Client, SidecarError
    >>> with Client("127.0.0.1:50051", timeout=2.0) as sidecar:       # or "unix:/run/sidecar.sock"
    ...     evaluation = sidecar.evaluate_node(node, {"order_number": "A-10023"})
    ...     print(evaluation.target, evaluation.variables["order_status"])
    show-status shipped

A sidecar that requires tokens or serves TLS (a shared, standalone one) takes them as keywords:

    >>> sidecar = Client("rules.internal:50051", token=TokenFile("/var/run/secrets/rules/token"),
    ...                  tls=TLS(ca_file="/etc/rules/ca.pem"))

Connectors and nodes are the generated messages, or dicts in their JSON form
(`{"connectorId": ..., "branches": [...]}`, as `grpcurl` and the README write them). In a dict,
an enum takes its short name, as the connectors file and the README write it (`"LIVE"`, `"GET"`,
`"EQUALS"`), or its full proto name (`"CONNECTOR_STATUS_LIVE"`). Numbers come back as `int` when
integral, else `float`, as the sidecar's own extraction rules do.

Every failure is a `SidecarError`: the sidecar's answers, and the mistakes the client catches
before sending anything (`ClientError`, a `ValueError` too: an unknown enum name, an unknown
field, a value that is not JSON, a token without TLS), which name the field like the sidecar's.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeAlias, TypeVar, cast

import grpc
from google.protobuf import json_format, struct_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from rulesidecar.v1 import rules_sidecar_pb2 as pb
from rulesidecar.v1 import rules_sidecar_pb2_grpc as pb_grpc

__all__ = [
    "TLS",
    "Client",
    "ClientError",
    "Evaluation",
    "Extracted",
    "FieldViolation",
    "JsonValue",
    "SidecarError",
    "TokenFile",
    "TokenSource",
]

JsonValue: TypeAlias = bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"] | None
DEFAULT_TIMEOUT_SECONDS = 5.0
_STATUS_DETAILS_KEY = "grpc-status-details-bin"
_LARGEST_EXACT_INTEGER = 2.0**53
_M = TypeVar("_M", bound=Message)


@dataclass(frozen=True)
class FieldViolation:
    """One invalid field of a request: its path (`connector.url_template`) and what is wrong."""

    field: str
    description: str


class SidecarError(grpc.RpcError):
    """A failed call, with `code()` and `details()` as on grpc's own errors.

    `violations` lists the fields an INVALID_ARGUMENT names (from its `google.rpc.BadRequest`);
    it is empty for other errors. `reason` and `metadata` come from the error's
    `google.rpc.ErrorInfo` (`"CONNECTOR_NOT_FOUND"`, `{"connector_id": "orders"}`; the README
    lists every reason); empty when the error has none, e.g. a deadline that ran out
    (`grpc.StatusCode.DEADLINE_EXCEEDED`).

        >>> try:
        ...     sidecar.register_connector({"id": "Bad Id"})
        ... except SidecarError as error:
        ...     print(error.code(), [v.field for v in error.violations])
        StatusCode.INVALID_ARGUMENT ['connector.id', 'connector.status', ...]
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        violations: Sequence[FieldViolation] = (),
        *,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self._code = code
        self._message = message
        self.violations = tuple(violations)
        self.reason = reason
        self.metadata = dict(metadata or {})

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._message

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> SidecarError:
        """Translate grpc's error (a grpc.Call as well), reading BadRequest and ErrorInfo from
        its trailers."""
        call: Any = error
        violations: list[FieldViolation] = []
        info = error_details_pb2.ErrorInfo()
        for key, value in call.trailing_metadata() or ():
            if key != _STATUS_DETAILS_KEY:
                continue
            for detail in status_pb2.Status.FromString(value).details:
                bad_request = error_details_pb2.BadRequest()
                if detail.Unpack(bad_request):
                    violations.extend(
                        FieldViolation(v.field, v.description) for v in bad_request.field_violations
                    )
                elif not info.reason:
                    detail.Unpack(info)
        return cls(
            call.code(),
            call.details() or "",
            violations,
            reason=info.reason,
            metadata=dict(info.metadata),
        )


class ClientError(SidecarError, ValueError):
    """A mistake the client caught before sending anything: the request would have been wrong.

    `code()` is INVALID_ARGUMENT and `violations` name the field, as the sidecar's own answer
    would; it is a `ValueError` too, for code that catches that.

        >>> sidecar.register_connector({"id": "orders", "status": "ON"})
        Traceback (most recent call last):
        rulesidecar.client.ClientError: INVALID_ARGUMENT: connector.status: 'ON' is not a valid
        ConnectorStatus; use one of DRAFT, LIVE, DISABLED (or CONNECTOR_STATUS_DRAFT ...)
    """

    def __init__(self, message: str, violations: Sequence[FieldViolation] = ()) -> None:
        super().__init__(grpc.StatusCode.INVALID_ARGUMENT, message, violations)

    @classmethod
    def for_field(cls, field: str, description: str) -> ClientError:
        return cls(f"{field}: {description}", [FieldViolation(field, description)])


@dataclass(frozen=True)
class Evaluation:
    """EvaluateNode's verdict, with the extracted variables as plain Python values.

    `branch_index` is None unless a branch matched. `response` is the full generated message
    (extractions one by one, upstream latency, attempts, explanation).
    """

    outcome: pb.Outcome.ValueType
    reason: pb.Reason.ValueType
    target: str
    branch_index: int | None
    variables: dict[str, JsonValue]
    message: str
    http_status: int
    response: pb.EvaluateNodeResponse

    @property
    def outcome_name(self) -> str:
        """`OUTCOME_MATCHED`, `OUTCOME_NO_MATCH` or `OUTCOME_ERROR`."""
        return pb.Outcome.Name(self.outcome)

    @property
    def reason_name(self) -> str:
        """`REASON_BRANCH_MATCHED`, `REASON_TIMEOUT` ..."""
        return pb.Reason.Name(self.reason)


@dataclass(frozen=True)
class Extracted:
    """ExtractVariables' result: the values that succeeded, and whether every required one did."""

    variables: dict[str, JsonValue]
    complete: bool
    response: pb.ExtractVariablesResponse


class TokenFile:
    """A bearer token read from a file and read again when the file changes.

    For a token mounted from a Kubernetes Secret: the kubelet replaces the file when the Secret is
    rotated, and the next call sends the new token, without a restart. One `stat` per call; the
    file is read again when its inode, size or modification time changes. Surrounding whitespace
    (a trailing newline) is stripped.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None
        self._token = ""

    def __call__(self) -> str:
        stat = self.path.stat()
        seen = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if seen != self._seen:
                self._token = self.path.read_text(encoding="utf-8").strip()
                self._seen = seen
            return self._token


@dataclass(frozen=True)
class TLS:
    """How to reach a sidecar that serves TLS: the CA to trust, and a client certificate for mTLS.

    The CA as PEM bytes (`ca`) or a file (`ca_file`); neither trusts the system's roots. The client
    certificate chain and key likewise (`cert`/`cert_file`, `key`/`key_file`), for a sidecar with
    `tls_client_ca_file`. `server_name` overrides the name checked in the sidecar's certificate.
    """

    ca: bytes | None = None
    ca_file: str | os.PathLike[str] | None = None
    cert: bytes | None = None
    cert_file: str | os.PathLike[str] | None = None
    key: bytes | None = None
    key_file: str | os.PathLike[str] | None = None
    server_name: str | None = None

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """grpc's credentials for these settings (the files are read now)."""
        chain = _pem(self.cert, self.cert_file, "cert")
        key = _pem(self.key, self.key_file, "key")
        if (chain is None) != (key is None):
            raise ClientError("tls: a client certificate needs its key, and a key its certificate")
        return grpc.ssl_channel_credentials(_pem(self.ca, self.ca_file, "ca"), key, chain)


TokenSource: TypeAlias = str | Callable[[], str]


class Client:
    """A connection to one sidecar. Every call gets `timeout` seconds unless it passes its own.

    `address` is `host:port` or `unix:/path/to/socket`. Use it as a context manager, or `close()`.

    `token` is sent as `authorization: Bearer <token>` on every call: a string, or a callable
    asked before each call (`TokenFile(path)` re-reads a mounted Secret). `tls` makes the
    connection TLS (mTLS with a client certificate). A token travels in plaintext only to a
    loopback address or a unix socket, unless `allow_token_without_tls` says the network is
    trusted (a service mesh that encrypts it); otherwise the constructor raises ClientError (a
    ValueError).
    """

    def __init__(
        self,
        address: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        token: TokenSource | None = None,
        tls: TLS | None = None,
        allow_token_without_tls: bool = False,
    ) -> None:
        tokens = None if token is None else _token_source(token)
        if tls is not None:
            credentials = tls.channel_credentials()
            if tokens is not None:
                credentials = grpc.composite_channel_credentials(
                    credentials, grpc.metadata_call_credentials(_BearerPlugin(tokens))
                )
            options = []
            if tls.server_name is not None:
                options.append(("grpc.ssl_target_name_override", tls.server_name))
            self._channel = grpc.secure_channel(address, credentials, options)
        else:
            if tokens is not None and not (allow_token_without_tls or _is_local(address)):
                raise ClientError(
                    f"a bearer token to {address} without TLS would cross the network in "
                    "plaintext: pass tls=TLS(...), or allow_token_without_tls=True if the "
                    "network is trusted"
                )
            self._channel = grpc.insecure_channel(address)
        channel: grpc.Channel = self._channel
        if tokens is not None and tls is None:
            channel = grpc.intercept_channel(channel, _BearerInterceptor(tokens))
        self._stub = pb_grpc.RulesSidecarServiceStub(channel)
        self.timeout = timeout

    def register_connector(
        self, connector: pb.Connector | Mapping[str, Any], *, expected_version: int | None = None
    ) -> pb.RegisterConnectorResponse:
        """Create or replace a connector; `expected_version` makes it conditional (ABORTED)."""
        request = pb.RegisterConnectorRequest(
            connector=_message(connector, pb.Connector, "connector"),
            expected_version=expected_version,
        )
        response: pb.RegisterConnectorResponse = self._call(
            self._stub.RegisterConnector, request, None
        )
        return response

    def get_connector(self, connector_id: str) -> pb.Connector:
        request = pb.GetConnectorRequest(id=connector_id)
        response: pb.GetConnectorResponse = self._call(self._stub.GetConnector, request, None)
        return response.connector

    def list_connectors(
        self, *, status: pb.ConnectorStatus.ValueType | str = pb.CONNECTOR_STATUS_UNSPECIFIED
    ) -> Iterator[pb.Connector]:
        """Every connector in id order (optionally of one status, `"LIVE"`), page by page."""
        request = pb.ListConnectorsRequest(
            status=pb.ConnectorStatus.ValueType(
                _enum(status, pb.ConnectorStatus.DESCRIPTOR, "status")
            )
        )
        while True:
            page: pb.ListConnectorsResponse = self._call(self._stub.ListConnectors, request, None)
            yield from page.connectors
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    def delete_connector(self, connector_id: str, *, expected_version: int | None = None) -> int:
        """Delete a connector; returns the version that was deleted."""
        request = pb.DeleteConnectorRequest(id=connector_id, expected_version=expected_version)
        response: pb.DeleteConnectorResponse = self._call(self._stub.DeleteConnector, request, None)
        return response.deleted_version

    def evaluate_node(
        self,
        node: pb.Node | Mapping[str, Any],
        variables: Mapping[str, Any] | None = None,
        *,
        explain: bool = False,
        mode: pb.EvaluationMode.ValueType | str = pb.EVALUATION_MODE_UNSPECIFIED,
        timeout: float | None = None,
    ) -> Evaluation:
        """Evaluate a node for one conversation whose variables are plain JSON-like values.

        `mode="TEST"` runs a DRAFT connector (`explain=True` adds the explanation)."""
        request = pb.EvaluateNodeRequest(
            node=_message(node, pb.Node, "node"),
            variables=_struct(variables),
            explain=explain,
            mode=pb.EvaluationMode.ValueType(_enum(mode, pb.EvaluationMode.DESCRIPTOR, "mode")),
        )
        response: pb.EvaluateNodeResponse = self._call(self._stub.EvaluateNode, request, timeout)
        return Evaluation(
            outcome=response.outcome,
            reason=response.reason,
            target=response.target,
            branch_index=response.branch_index if response.HasField("branch_index") else None,
            variables=_native_struct(response.variables),
            message=response.message,
            http_status=response.http_status,
            response=response,
        )

    def extract_variables(
        self, extractions: Sequence[pb.Extraction | Mapping[str, Any]], document: Any
    ) -> Extracted:
        """Apply extractions to a JSON document you already have (no HTTP call)."""
        request = pb.ExtractVariablesRequest(
            extractions=[
                _message(e, pb.Extraction, f"extractions[{i}]") for i, e in enumerate(extractions)
            ],
            json=_value(document),
        )
        response: pb.ExtractVariablesResponse = self._call(
            self._stub.ExtractVariables, request, None
        )
        return Extracted(_native_struct(response.variables), response.complete, response)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, method: Any, request: Message, timeout: float | None) -> Any:
        try:
            return method(request, timeout=self.timeout if timeout is None else timeout)
        except SidecarError:
            raise
        except grpc.RpcError as error:
            raise SidecarError.from_rpc_error(error) from error


def _token_source(token: TokenSource) -> Callable[[], str]:
    if isinstance(token, str):
        return lambda: token
    return token


def _bearer(tokens: Callable[[], str]) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {tokens()}"),)


class _BearerPlugin(grpc.AuthMetadataPlugin):
    """Call credentials over TLS: grpc sends them only on a secure connection."""

    def __init__(self, tokens: Callable[[], str]) -> None:
        self._tokens = tokens

    def __call__(
        self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback
    ) -> None:
        try:
            metadata = _bearer(self._tokens)
        except Exception as exc:  # the provider failed: the call fails with its message
            callback((), exc)
        else:
            callback(metadata, None)


class _BearerCallDetails(grpc.ClientCallDetails):
    def __init__(
        self, details: grpc.ClientCallDetails, metadata: tuple[tuple[str, str | bytes], ...]
    ) -> None:
        self.method = details.method
        self.timeout = details.timeout
        self.metadata = metadata
        self.credentials = details.credentials
        self.wait_for_ready = getattr(details, "wait_for_ready", None)
        self.compression = getattr(details, "compression", None)


class _BearerInterceptor(grpc.UnaryUnaryClientInterceptor):
    """The token on a plaintext connection (loopback, a unix socket, or allowed explicitly),
    where grpc's call credentials are refused."""

    def __init__(self, tokens: Callable[[], str]) -> None:
        self._tokens = tokens

    def intercept_unary_unary(
        self, continuation: Any, client_call_details: grpc.ClientCallDetails, request: Any
    ) -> Any:
        try:
            bearer = _bearer(self._tokens)
        except Exception as exc:  # as grpc answers when call credentials fail over TLS
            raise SidecarError(
                grpc.StatusCode.UNAVAILABLE, f"cannot get the bearer token: {exc}"
            ) from exc
        metadata = (*(client_call_details.metadata or ()), *bearer)
        return continuation(_BearerCallDetails(client_call_details, metadata), request)


def _is_local(address: str) -> bool:
    """A unix socket or a loopback address (`127.0.0.1:50051`, `localhost:50051`, `[::1]:50051`)."""
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    host = address.removeprefix("dns:///").removeprefix("ipv4:").removeprefix("ipv6:")
    host = host.rpartition(":")[0] or host
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _pem(value: bytes | None, path: str | os.PathLike[str] | None, name: str) -> bytes | None:
    if value is not None and path is not None:
        raise ClientError(f"tls: give {name} (PEM bytes) or {name}_file, not both")
    if path is None:
        return value
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ClientError.for_field(
            f"tls.{name}_file", f"cannot read {os.fspath(path)}: {exc.strerror or exc}"
        ) from exc


def _message(value: _M | Mapping[str, Any], message_type: type[_M], field: str) -> _M:
    """The generated message as is, or a dict in its JSON form (short enum names allowed)."""
    if not isinstance(value, Mapping):
        if not isinstance(value, message_type):
            raise ClientError.for_field(
                field,
                f"expected a {message_type.DESCRIPTOR.name} message or a dict, "
                f"not {type(value).__name__}",
            )
        return value
    descriptor = cast(Descriptor, message_type.DESCRIPTOR)  # the upb type is the same at run time
    document = _full_enum_names(value, descriptor, field)
    try:
        return json_format.ParseDict(document, message_type())
    except json_format.ParseError as exc:
        # "Message type "rulesidecar.v1.Node" has no field named "brnches" at "Node"..."
        raise ClientError.for_field(field, str(exc).splitlines()[0]) from exc


def _full_enum_names(value: Mapping[str, Any], descriptor: Descriptor, path: str) -> dict[str, Any]:
    """A copy of a message's JSON form with every enum's short name (`LIVE`) made full
    (`CONNECTOR_STATUS_LIVE`), which is the only spelling json_format reads; an unknown name is a
    ClientError that names the field and the valid names. Unknown fields are left to ParseDict."""
    document = dict(value)
    for key, item in value.items():
        field = descriptor.fields_by_camelcase_name.get(key) or descriptor.fields_by_name.get(key)
        if field is None or item is None:
            continue
        field_path = f"{path}.{field.name}"
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            if isinstance(item, Mapping):
                document[key] = {
                    k: _full_names_in(v, value_field, f"{field_path}[{json.dumps(str(k))}]")
                    for k, v in item.items()
                }
        elif field.is_repeated and isinstance(item, list):
            document[key] = [
                _full_names_in(v, field, f"{field_path}[{i}]") for i, v in enumerate(item)
            ]
        else:
            document[key] = _full_names_in(item, field, field_path)
    return document


def _full_names_in(item: Any, field: FieldDescriptor, path: str) -> Any:
    """One value of `field` with its enum names made full, recursing into messages."""
    if field.enum_type is not None and isinstance(item, str):
        return _enum_name(item, field.enum_type, path)
    message_type = field.message_type
    if (
        message_type is not None
        and isinstance(item, Mapping)
        and not message_type.full_name.startswith("google.protobuf.")  # Struct, Value, Duration
    ):
        return _full_enum_names(item, message_type, path)
    return item


def _enum(value: int | str, descriptor: EnumDescriptor, field: str) -> int:
    """An enum keyword argument: its number, or its short or full name."""
    if isinstance(value, str):
        return descriptor.values_by_name[_enum_name(value, descriptor, field)].number
    return value


def _enum_name(name: str, descriptor: EnumDescriptor, field: str) -> str:
    """The full name of an enum value given by its short name (`LIVE`) or its full one."""
    prefix = descriptor.values_by_number[0].name.removesuffix("UNSPECIFIED")
    if name in descriptor.values_by_name:
        return name
    if prefix + name in descriptor.values_by_name:
        return prefix + name
    valid = [v.name.removeprefix(prefix) for v in descriptor.values if v.number != 0]
    raise ClientError.for_field(
        field,
        f"{name!r} is not a valid {descriptor.name}; use one of {', '.join(valid)} "
        f"(or {prefix}{valid[0]} ...)",
    )


def _struct(variables: Mapping[str, Any] | None) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    try:
        struct.update(dict(variables or {}))
    except (TypeError, ValueError) as exc:
        raise ClientError.for_field(
            "variables",
            f"the values must be JSON-like (str, number, bool, None, list, dict): {exc}",
        ) from exc
    return struct


def _value(document: Any) -> struct_pb2.Value:
    try:
        return json_format.ParseDict(document, struct_pb2.Value())
    except json_format.ParseError as exc:
        raise ClientError.for_field("json", f"the document must be JSON-like: {exc}") from exc


def _native_struct(struct: struct_pb2.Struct) -> dict[str, JsonValue]:
    return {name: _native(value) for name, value in struct.fields.items()}


def _native(value: struct_pb2.Value) -> JsonValue:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = value.number_value
        exact = math.isfinite(number) and number.is_integer()
        return int(number) if exact and abs(number) <= _LARGEST_EXACT_INTEGER else number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return _native_struct(value.struct_value)
    if kind == "list_value":
        return [_native(item) for item in value.list_value.values]
    return None
