"""The edge between protobuf and the domain: messages <-> models, errors -> gRPC statuses.

Nothing else in the sidecar touches generated code except the servicer, which calls this module.
Enums cross by name (`CONNECTOR_STATUS_LIVE` <-> `ConnectorStatus.LIVE`), so the proto and the
model can never drift silently: a name missing on one side fails the round-trip tests.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import timedelta
from enum import StrEnum
from math import isfinite
from typing import Any, TypeVar

import grpc
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from pydantic import BaseModel, ValidationError
from rulesidecar.v1 import rules_sidecar_pb2 as pb

from sidecar.core import model
from sidecar.core.auth import mask_secrets, maskable_secrets
from sidecar.core.budget import MAX_OPERAND_VALUES
from sidecar.core.documents import MAX_JSON_DEPTH, nesting_depth
from sidecar.core.model.node import MAX_BRANCHES, MAX_CONDITIONS_PER_BRANCH, MAX_EXTRACTIONS
from sidecar.core.values import MAX_SAFE_INTEGER
from sidecar.errors import (
    ErrorCode,
    FieldViolation,
    InvalidArgumentError,
    SidecarError,
    clean_message,
    field_path,
)

E = TypeVar("E", bound=StrEnum)
M = TypeVar("M", bound=BaseModel)

STATUS_BY_ERROR_CODE: dict[ErrorCode, grpc.StatusCode] = {
    ErrorCode.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorCode.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    ErrorCode.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.VERSION_CONFLICT: grpc.StatusCode.ABORTED,
    ErrorCode.READ_ONLY: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.NOT_READY: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.OVERLOADED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.STORE: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.CONFIG: grpc.StatusCode.FAILED_PRECONDITION,
}
"""The one table from sidecar error codes to gRPC status codes."""

ERROR_DOMAIN = "rules-sidecar"
"""google.rpc.ErrorInfo.domain of every error: the product's name, the same for every API version
(a reason keeps its meaning across versions)."""

REASON_BY_ERROR_CODE: dict[ErrorCode, str] = {
    ErrorCode.INVALID_ARGUMENT: "INVALID_REQUEST",
    ErrorCode.UNAUTHENTICATED: "TOKEN_INVALID",
    ErrorCode.PERMISSION_DENIED: "ROLE_NOT_ALLOWED",
    ErrorCode.NOT_FOUND: "CONNECTOR_NOT_FOUND",
    ErrorCode.VERSION_CONFLICT: "VERSION_CONFLICT",
    ErrorCode.READ_ONLY: "CONNECTOR_READ_ONLY",
    ErrorCode.NOT_READY: "NOT_READY",
    ErrorCode.OVERLOADED: "OVERLOADED",
    ErrorCode.STORE: "STORE_UNAVAILABLE",
    ErrorCode.CONFIG: "CONFIG_INVALID",
}
"""google.rpc.ErrorInfo.reason per error code: the stable, UPPER_SNAKE cause a program switches on
(README, "Error details"). An unexpected failure answers INTERNAL with INTERNAL_REASON."""

INTERNAL_REASON = "INTERNAL_ERROR"

RETRY_DELAY_BY_ERROR_CODE: dict[ErrorCode, float] = {
    ErrorCode.OVERLOADED: 1.0,  # evaluations finish in milliseconds to seconds
    ErrorCode.NOT_READY: 1.0,  # the registry loads in well under a second
    ErrorCode.STORE: 5.0,  # an outage of the fleet's database: reconnecting takes a while
}
"""google.rpc.RetryInfo.retry_delay (seconds) for the errors a retry can fix: every
RESOURCE_EXHAUSTED and UNAVAILABLE the sidecar answers. Clients should add jitter."""

MAX_FIELD_VIOLATIONS = 20
VIOLATIONS_BUDGET_BYTES = 2048
MAX_VIOLATION_TEXT_CHARS = 200
MAX_MESSAGE_CHARS = 1024
"""Bounds on what an error sends. Trailers are bounded too (grpc's clients refuse more than 8 to
16 KiB of metadata, and answer RESOURCE_EXHAUSTED, which callers retry, instead of the error), and
the status travels twice (grpc-message, and base64 in grpc-status-details-bin): a capped message,
at most MAX_FIELD_VIOLATIONS violations in VIOLATIONS_BUDGET_BYTES plus one "and N more", each
text clipped to MAX_VIOLATION_TEXT_CHARS, keep the trailers near 5 KiB at most."""


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def rpc_status_of(error: SidecarError) -> grpc.Status:
    """The gRPC status for an error, with its details: a google.rpc.ErrorInfo always, a
    google.rpc.BadRequest for INVALID_ARGUMENT (capped, `capped_violations`), a
    google.rpc.RetryInfo when a retry can help."""
    code = STATUS_BY_ERROR_CODE[error.code]
    status = status_pb2.Status(
        code=getattr(code_pb2, code.name), message=_clip(error.message, MAX_MESSAGE_CHARS)
    )
    metadata = dict(error.metadata)
    if isinstance(error, InvalidArgumentError):
        if error.violations:
            metadata.setdefault("field", _clip(error.violations[0].field))
        metadata.setdefault("violations", str(len(error.violations)))
    reason = REASON_BY_ERROR_CODE.get(error.code, error.code.name)
    if isinstance(error, InvalidArgumentError) and error.reason is not None:
        reason = error.reason  # a work limit: EvaluateNode's outcome reason for the same limit
    status.details.add().Pack(
        error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata)
    )
    if isinstance(error, InvalidArgumentError):
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=violation.field, description=violation.description
                )
                for violation in capped_violations(error.violations)
            ]
        )
        status.details.add().Pack(bad_request)
    delay = RETRY_DELAY_BY_ERROR_CODE.get(error.code)
    if delay is not None:
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=_duration(delay)))
    return rpc_status.to_status(status)


def internal_status(message: str) -> grpc.Status:
    """INTERNAL for a failure nobody mapped (a bug), with its ErrorInfo; never a retry hint."""
    status = status_pb2.Status(code=code_pb2.INTERNAL, message=message)
    status.details.add().Pack(
        error_details_pb2.ErrorInfo(reason=INTERNAL_REASON, domain=ERROR_DOMAIN)
    )
    return rpc_status.to_status(status)


def capped_violations(violations: Sequence[FieldViolation]) -> list[FieldViolation]:
    """The violations that fit an error's trailers, each text clipped, then one "and N more"
    naming the first field left out (so a caller fixes what it sees and calls again).

    >>> many = [FieldViolation(f"node.branches[{i}].target", "too long") for i in range(30)]
    >>> capped = capped_violations(many)
    >>> len(capped), capped[-1].field, capped[-1].description[:40]
    (21, 'node.branches[20].target', 'and 10 more invalid fields from this one')
    """
    kept: list[FieldViolation] = []
    size = 0
    for index, violation in enumerate(violations):
        clipped = FieldViolation(_clip(violation.field), _clip(violation.description))
        size += len(clipped.field.encode()) + len(clipped.description.encode()) + 8
        if index == MAX_FIELD_VIOLATIONS or size > VIOLATIONS_BUDGET_BYTES:
            rest = len(violations) - index
            kept.append(
                FieldViolation(
                    clipped.field,
                    f"and {rest} more invalid fields from this one on "
                    "(the list is capped to fit the error)",
                )
            )
            break
        kept.append(clipped)
    return kept


def _clip(text: str, limit: int = MAX_VIOLATION_TEXT_CHARS) -> str:
    """`text`, cut to `limit` characters with "..." when longer: a field path may hold a caller's
    10,000-character header name."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validate(model_type: type[M], data: dict[str, Any], *, prefix: str) -> M:
    """Validate data into a model; InvalidArgumentError naming every bad field under `prefix`."""
    try:
        return model_type.model_validate(data)
    except ValidationError as exc:
        raise InvalidArgumentError(violations_of(exc, prefix=prefix)) from exc


def violations_of(exc: ValidationError, *, prefix: str) -> list[FieldViolation]:
    """One FieldViolation per pydantic error, with proto field paths."""
    return [
        FieldViolation(field_path((prefix, *error["loc"])), _describe(error))
        for error in exc.errors()
    ]


def _describe(error: Any) -> str:
    if error["type"] == "missing":
        return "required"
    return clean_message(str(error["msg"]))


# ---------------------------------------------------------------------------------------------
# Enums and values
# ---------------------------------------------------------------------------------------------


def enum_from_proto(enum_type: type[E], proto_enum: Any, number: int, prefix: str) -> str | None:
    """The model enum's value for a proto enum number; None for the UNSPECIFIED zero value."""
    if number == 0:
        return None
    try:
        name = proto_enum.Name(number).removeprefix(prefix)
    except ValueError:  # proto3 enums are open: a newer client may send a number we lack
        return f"unknown value {number}"
    return name if name in enum_type.__members__ else f"unknown value {number}"


def enum_to_proto(proto_enum: Any, value: StrEnum | None, prefix: str) -> Any:
    """The proto enum number for a model enum (0 for None)."""
    return 0 if value is None else proto_enum.Value(prefix + value.value)


def enum_numbers(proto_enum: Any, model_enum: type[E], prefix: str) -> dict[E, Any]:
    """Every member's proto enum number, looked up once (`enum_to_proto` per answer costs a
    name lookup each): a member missing on the proto side fails at import."""
    return {member: enum_to_proto(proto_enum, member, prefix) for member in model_enum}


def value_from_proto(value: struct_pb2.Value | struct_pb2.Struct, field: str) -> Any:
    """A Value (or Struct) as plain JSON data, integral doubles back to ints.

    NaN and infinities are refused with a violation naming `field`: JSON has no such numbers.
    """
    try:
        if isinstance(value, struct_pb2.Struct):
            return _plain_struct(value.fields)
        return _plain(value)
    except _NotFiniteError as exc:
        raise InvalidArgumentError(
            [FieldViolation(field, "numbers must be finite (no NaN or Infinity)")]
        ) from exc


def document_from_proto(
    value: struct_pb2.Value, field: str, *, roots: frozenset[str] | None
) -> tuple[Any, int]:
    """A document Value as plain data (as `value_from_proto`), and its size in bytes.

    `roots`, when given, are the only top-level fields the document's readers look at (every
    query a plain path, `status` or `carrier.name`): of an object, just those fields are read,
    the rest cannot change what the queries find. The whole document is still checked for
    NaN and infinities: its bytes are (`_MAY_HOLD_NON_FINITE`), and any that may hold one are
    read whole, which refuses it as before. Reading the order document of the benchmark
    whole costs 25 us, its two roots 2 us.
    """
    serialised = value.SerializeToString()  # the size, and the bytes to check
    if roots is None or _kind(value, "kind") != "struct_value" or _may_hold_non_finite(serialised):
        return value_from_proto(value, field), len(serialised)
    fields = value.struct_value.fields
    return {name: _plain(fields[name]) for name in roots if name in fields}, len(serialised)


_NON_FINITE_TAIL = re.compile(rb"[\xf0-\xff][\x7f\xff]")
"""The last two bytes of every NaN and infinity as a protobuf double (8 bytes, little-endian):
the exponent's 11 bits, all ones, are the low 7 bits of the last byte and the high 4 of the one
before. Bytes without this pair hold no such number, whatever their tags look like."""


def _may_hold_non_finite(serialised: bytes) -> bool:
    """Whether a double in `serialised` may be NaN or infinite (rarely a false alarm)."""
    if b"\x7f" not in serialised and b"\xff" not in serialised:  # memchr: most documents
        return False
    return _NON_FINITE_TAIL.search(serialised) is not None


# Walking the fields directly is several times faster than json_format.MessageToDict, and this
# runs on every call (EvaluateNode's variables, ExtractVariables' json document: 30 us for 1 KB).
# The loops below are shaped by measurement: a map iterated by key (its items() is a Python
# generator), WhichOneof unbound, strings and numbers handled inline (no call per leaf).
_kind = struct_pb2.Value.WhichOneof


def _plain(value: struct_pb2.Value) -> Any:
    """One Value as plain data."""
    kind = _kind(value, "kind")
    if kind == "struct_value":
        return _plain_struct(value.struct_value.fields)
    if kind == "list_value":
        return _plain_list(value.list_value.values)
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        return _plain_number(value.number_value)
    if kind == "bool_value":
        return value.bool_value
    return None


def _plain_struct(fields: Any) -> dict[str, Any]:
    plain: dict[str, Any] = {}
    for key in fields:
        item = fields[key]
        kind = _kind(item, "kind")
        if kind == "string_value":
            plain[key] = item.string_value
        elif kind == "number_value":
            number = item.number_value
            if not isfinite(number):
                raise _NotFiniteError
            integral = number.is_integer() and abs(number) < MAX_SAFE_INTEGER
            plain[key] = int(number) if integral else number
        else:
            plain[key] = _plain(item)
    return plain


def _plain_list(values: Any) -> list[Any]:
    plain: list[Any] = []
    append = plain.append
    for item in values:
        if _kind(item, "kind") == "string_value":
            append(item.string_value)
        else:
            append(_plain(item))
    return plain


def _plain_number(number: float) -> float | int:
    if not isfinite(number):
        raise _NotFiniteError
    return int(number) if number.is_integer() and abs(number) < MAX_SAFE_INTEGER else number


class _NotFiniteError(ValueError):
    """NaN or an infinity in a Value."""


def value_to_proto(data: Any) -> struct_pb2.Value:
    """Plain JSON data as a google.protobuf.Value (see `_fill`)."""
    value = struct_pb2.Value()
    _fill(value, data)
    return value


def _fill(value: struct_pb2.Value, data: Any) -> None:
    """Set one Value from plain data, in place (faster than json_format.ParseDict, on every
    answer).

    Integers beyond a double's range become their decimal text: upstreams may send such
    integers (valid JSON); a Struct number is a double, and converting them would fail the
    whole answer. An empty dict or list is an empty struct or list at every level, the top
    included: a Value with no kind set reads as null in every client, and `{}` is not null.
    """
    _fill_nested(value, data)


def _fill_scalar(value: struct_pb2.Value, data: Any) -> None:
    if isinstance(data, str):
        value.string_value = data
    elif data is None:
        value.null_value = struct_pb2.NULL_VALUE
    elif isinstance(data, bool):
        value.bool_value = data
    elif isinstance(data, int):
        if abs(data) > _LARGEST_DOUBLE:
            value.string_value = str(data)
        else:
            value.number_value = data
    elif isinstance(data, float):
        value.number_value = data
    else:
        value.string_value = str(data)


def _fill_struct(struct: struct_pb2.Struct, data: dict[str, Any]) -> None:
    """The entries of `data` added to `struct`, in one walk (Struct.update would need a copy
    made safe first)."""
    fields = struct.fields
    for key, item in data.items():
        _fill_nested(fields[key], item)


def _fill_list(values: struct_pb2.ListValue, data: list[Any] | tuple[Any, ...]) -> None:
    add = values.values.add
    for item in data:
        _fill_nested(add(), item)


def _fill_nested(value: struct_pb2.Value, data: Any) -> None:
    if type(data) is str:  # most values: text, set without the isinstance chain below
        value.string_value = data
    elif isinstance(data, dict):
        struct = value.struct_value
        struct.SetInParent()
        _fill_struct(struct, data)
    elif isinstance(data, list | tuple):
        values = value.list_value
        values.SetInParent()
        _fill_list(values, data)
    else:
        _fill_scalar(value, data)


_LARGEST_DOUBLE = 1.7976931348623157e308  # beyond it an int cannot be a double (`_fill`)


# ---------------------------------------------------------------------------------------------
# Connectors
# ---------------------------------------------------------------------------------------------


def connector_from_proto(message: pb.Connector, *, prefix: str = "connector") -> model.Connector:
    """Validate a Connector message into the model; output-only fields are ignored."""
    data: dict[str, Any] = {
        "id": message.id,
        "display_name": message.display_name,
        "url_template": message.url_template,
        "headers": dict(message.headers),
        "query": dict(message.query),
    }
    status = enum_from_proto(
        model.ConnectorStatus, pb.ConnectorStatus, message.status, "CONNECTOR_STATUS_"
    )
    if status is not None:
        data["status"] = status
    method = enum_from_proto(model.HttpMethod, pb.HttpMethod, message.method, "HTTP_METHOD_")
    if method is not None:
        data["method"] = method
    if message.HasField("body_template"):
        data["body_template"] = value_from_proto(message.body_template, f"{prefix}.body_template")
    if message.HasField("auth"):
        data["auth"] = _auth_from_proto(message.auth)
    if message.HasField("timeout"):
        data["timeout"] = _timedelta(message.timeout, f"{prefix}.timeout")
    if message.max_response_bytes:
        data["max_response_bytes"] = message.max_response_bytes
    data["allowed_hosts"] = list(message.allowed_hosts)
    data["follow_redirects"] = message.follow_redirects
    data["idempotency_key_header"] = message.idempotency_key_header
    data["disable_trace_propagation"] = message.disable_trace_propagation
    if message.HasField("cache"):
        data["cache"] = _cache_from_proto(message.cache, f"{prefix}.cache")
    return validate(model.Connector, data, prefix=prefix)


def _cache_from_proto(cache: pb.CachePolicy, field: str) -> dict[str, Any]:
    data: dict[str, Any] = {
        "ignore_cache_control": cache.ignore_cache_control,
        "idempotent_lookup": cache.idempotent_lookup,
    }
    if cache.HasField("ttl"):  # unset stays missing, so the answer says "required"
        data["ttl"] = _timedelta(cache.ttl, f"{field}.ttl")
    for window in ("stale_while_revalidate", "stale_if_error"):
        if cache.HasField(window):
            data[window] = _timedelta(getattr(cache, window), f"{field}.{window}")
    if cache.max_entry_bytes:
        data["max_entry_bytes"] = cache.max_entry_bytes
    return data


def _cache_to_proto(cache: model.CachePolicy) -> pb.CachePolicy:
    return pb.CachePolicy(
        ttl=_duration(cache.ttl.total_seconds()),
        stale_while_revalidate=_duration(cache.stale_while_revalidate.total_seconds()),
        stale_if_error=_duration(cache.stale_if_error.total_seconds()),
        max_entry_bytes=cache.max_entry_bytes,
        ignore_cache_control=cache.ignore_cache_control,
        idempotent_lookup=cache.idempotent_lookup,
    )


def _timedelta(duration: duration_pb2.Duration, field: str) -> timedelta:
    """A Duration as a timedelta; one beyond what a timedelta holds (10^15 s) or with
    nanos out of range is refused naming the field, instead of an OverflowError."""
    if not -_NANOS_PER_SECOND < duration.nanos < _NANOS_PER_SECOND or (
        abs(duration.seconds) > _LONGEST_DURATION_SECONDS
    ):
        raise InvalidArgumentError(
            [FieldViolation(field, "not a valid duration (seconds or nanos out of range)")]
        )
    return duration.ToTimedelta()


_NANOS_PER_SECOND = 1_000_000_000
_LONGEST_DURATION_SECONDS = 315_576_000_000  # google.protobuf.Duration's documented range


def _auth_from_proto(auth: pb.Auth) -> dict[str, Any]:
    scheme = auth.WhichOneof("scheme")
    if scheme == "bearer":
        return {"bearer": {"token_secret": auth.bearer.token_secret}}
    if scheme == "api_key":
        location = enum_from_proto(
            model.ApiKeyLocation, pb.ApiKeyLocation, auth.api_key.location, "API_KEY_LOCATION_"
        )
        api_key: dict[str, Any] = {
            "name": auth.api_key.name,
            "value_secret": auth.api_key.value_secret,
        }
        if location is not None:
            api_key["location"] = location
        return {"api_key": api_key}
    if scheme == "basic":
        return {
            "basic": {
                "username_secret": auth.basic.username_secret,
                "password_secret": auth.basic.password_secret,
            }
        }
    if scheme == "oauth2_client_credentials":
        oauth = auth.oauth2_client_credentials
        data: dict[str, Any] = {
            "token_url": oauth.token_url,
            "client_id_secret": oauth.client_id_secret,
            "client_secret_secret": oauth.client_secret_secret,
            "scopes": list(oauth.scopes),
            "audience": oauth.audience,
        }
        method = enum_from_proto(
            model.ClientAuthMethod,
            pb.ClientAuthMethod,
            oauth.client_auth_method,
            "CLIENT_AUTH_METHOD_",
        )
        if method is not None:
            data["client_auth_method"] = method
        return {"oauth2_client_credentials": data}
    return {}


def connector_to_proto(connector: model.Connector) -> pb.Connector:
    """The model as a Connector message, output-only fields included. Holds no secret values."""
    message = pb.Connector(
        id=connector.id,
        display_name=connector.display_name,
        status=enum_to_proto(pb.ConnectorStatus, connector.status, "CONNECTOR_STATUS_"),
        method=enum_to_proto(pb.HttpMethod, connector.method, "HTTP_METHOD_"),
        url_template=connector.url_template,
        headers=connector.headers,
        query=connector.query,
        max_response_bytes=connector.max_response_bytes,
        version=connector.version,
        source=enum_to_proto(pb.ConnectorSource, connector.source, "CONNECTOR_SOURCE_"),
        timeout=_duration(connector.timeout.total_seconds()),
        allowed_hosts=connector.allowed_hosts,
        follow_redirects=connector.follow_redirects,
        idempotency_key_header=connector.idempotency_key_header,
        disable_trace_propagation=connector.disable_trace_propagation,
    )
    if connector.body_template is not None:
        message.body_template.CopyFrom(value_to_proto(connector.body_template))
    if connector.auth is not None:
        message.auth.CopyFrom(_auth_to_proto(connector.auth))
    if connector.cache is not None:
        message.cache.CopyFrom(_cache_to_proto(connector.cache))
    if connector.update_time is not None:
        stamp = timestamp_pb2.Timestamp()
        stamp.FromDatetime(connector.update_time)
        message.update_time.CopyFrom(stamp)
    return message


def _auth_to_proto(auth: model.Auth) -> pb.Auth:
    if auth.bearer is not None:
        return pb.Auth(bearer=pb.BearerAuth(token_secret=auth.bearer.token_secret))
    if auth.api_key is not None:
        return pb.Auth(
            api_key=pb.ApiKeyAuth(
                name=auth.api_key.name,
                location=enum_to_proto(
                    pb.ApiKeyLocation, auth.api_key.location, "API_KEY_LOCATION_"
                ),
                value_secret=auth.api_key.value_secret,
            )
        )
    if auth.basic is not None:
        return pb.Auth(
            basic=pb.BasicAuth(
                username_secret=auth.basic.username_secret,
                password_secret=auth.basic.password_secret,
            )
        )
    oauth = auth.oauth2_client_credentials
    assert oauth is not None
    return pb.Auth(
        oauth2_client_credentials=pb.OAuth2ClientCredentialsAuth(
            token_url=oauth.token_url,
            client_id_secret=oauth.client_id_secret,
            client_secret_secret=oauth.client_secret_secret,
            scopes=oauth.scopes,
            audience=oauth.audience,
            client_auth_method=enum_to_proto(
                pb.ClientAuthMethod, oauth.client_auth_method, "CLIENT_AUTH_METHOD_"
            ),
        )
    )


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


def connectors_to_proto(connectors: Sequence[model.Connector]) -> list[pb.Connector]:
    """Many connectors as messages."""
    return [connector_to_proto(connector) for connector in connectors]


# ---------------------------------------------------------------------------------------------
# Nodes, variables and outcomes
# ---------------------------------------------------------------------------------------------


class OperandValues:
    """Reads operands and default values as plain data, counting their JSON values (each
    scalar, list and object counts one) against `max_operand_values`.

    The model validates a node in one pydantic call, which holds the GIL (and so the event
    loop) for as long as it takes: 230 ms for an operand of a million empty lists, which fits
    in a 4 MiB message. The count stops the read at the limit, before any validation.
    """

    __slots__ = ("_left", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._left = limit

    def read(self, value: struct_pb2.Value, field: str) -> Any:
        """`value` as plain data (as `value_from_proto`), or a violation on `field` once the
        count passes the limit."""
        try:
            return self._counted(value)
        except _TooManyValuesError:
            raise InvalidArgumentError(
                [
                    FieldViolation(
                        field,
                        f"operands and default values may hold at most {self.limit} JSON values "
                        "in all (max_operand_values)",
                    )
                ]
            ) from None
        except _NotFiniteError as exc:
            raise InvalidArgumentError(
                [FieldViolation(field, "numbers must be finite (no NaN or Infinity)")]
            ) from exc

    def _counted(self, value: struct_pb2.Value) -> Any:
        """As `_plain`, counting; a container's items are counted at once, before its walk."""
        kind = value.WhichOneof("kind")
        if kind == "struct_value":
            fields = value.struct_value.fields
            self._take(1 + len(fields))
            return {key: self._item(item) for key, item in fields.items()}
        if kind == "list_value":
            items = value.list_value.values
            self._take(1 + len(items))
            return [self._item(item) for item in items]
        self._take(1)
        return _plain(value)

    def _item(self, value: struct_pb2.Value) -> Any:
        """An item already counted: scalars as `_plain` reads them, containers counted."""
        kind = value.WhichOneof("kind")
        if kind == "string_value":
            return value.string_value
        if kind == "struct_value" or kind == "list_value":
            self._left += 1  # counted with its container, and again by _counted
            return self._counted(value)
        return _plain(value)

    def _take(self, count: int) -> None:
        self._left -= count
        if self._left < 0:
            raise _TooManyValuesError


class _TooManyValuesError(ValueError):
    """More JSON values than `OperandValues` allows."""


def node_from_proto(
    message: pb.Node, *, max_operand_values: int = MAX_OPERAND_VALUES
) -> model.Node:
    """Validate a Node message into the model (field paths under `node.`); its operands and
    default values may hold `max_operand_values` JSON values in all.

    Validated in pieces: each branch (at most 64 conditions), then the node of validated
    branches (pydantic takes a model instance as it is); an operand that is a container is not
    walked again (`_condition_in_pieces`). One pydantic call holds the GIL, and so the event
    loop, for as long as it runs: the whole of a node of 4,096 conditions took 30-130 ms in
    one call (gen-2 collections inside it included); a branch takes a 64th of that. The model
    is the one a whole validation gives (tests/security compares them).
    """
    return validate_in_pieces(node_data(message, OperandValues(max_operand_values)))


def node_data(message: pb.Node, values: OperandValues) -> dict[str, Any]:
    """A Node message as model data, its operands counted in `values`."""
    return {
        "id": message.id,
        "connector_id": message.connector_id,
        "branches": [
            _branch_data(branch, f"node.branches[{index}]", values)
            for index, branch in enumerate(message.branches)
        ],
        "else_target": message.else_target,
        "error_target": message.error_target,
        "extractions": extractions_data(message.extractions, "node.extractions", values),
    }


def validate_in_pieces(data: dict[str, Any]) -> model.Node:
    """`model.Node` from `node_data`, validated branch by branch (see node_from_proto).

    A list over its length limit is not validated item by item: its items are left to stand-ins,
    and the node's validation reports the length, as a whole validation does.
    """
    violations: list[FieldViolation] = []
    branches: list[Any] = data["branches"]
    if len(branches) <= MAX_BRANCHES:
        branches = [
            _branch_in_pieces(branch, ("node", "branches", index), violations)
            for index, branch in enumerate(branches)
        ]
    else:
        branches = [_STAND_IN_BRANCH] * len(branches)
    extractions = extractions_in_pieces(data["extractions"], ("node", "extractions"), violations)
    node = _piece(
        model.Node,
        {**data, "branches": branches, "extractions": extractions},
        ("node",),
        violations,
    )
    if violations or node is None:
        raise InvalidArgumentError(violations)
    return node


def validate_extractions(model_type: type[M], extractions: list[Any]) -> M:
    """`model_type` (a model of one `extractions` field) from `extractions`, as
    `extractions_data` reads them, each one with a container default validated in pieces
    (`extractions_in_pieces`); the same model, or the same violations, as one validation of
    the whole."""
    violations: list[FieldViolation] = []
    pieces = extractions_in_pieces(extractions, ("extractions",), violations)
    try:
        validated = validate(model_type, {"extractions": pieces}, prefix="")
    except InvalidArgumentError as error:
        raise InvalidArgumentError([*violations, *error.violations]) from None
    if violations:
        raise InvalidArgumentError(violations)
    return validated


def extractions_in_pieces(
    extractions: list[Any], location: tuple[Any, ...], violations: list[FieldViolation]
) -> list[Any]:
    """Extractions whose default value is a container, each validated with no default and then
    given it (or a stand-in, its violations added at `location`); the others as they are.

    As with operands (`_condition_in_pieces`): the default was read by OperandValues, so it is
    plain JSON already, and pydantic would only walk and copy it, in one call that holds the
    GIL (12-33 ms for 100,000 values). Any default is valid JSON, so the violations are the
    ones a whole validation reports. Over the length limit, the list is left to the model.
    """
    if len(extractions) > MAX_EXTRACTIONS:
        return extractions
    pieces: list[Any] = []
    for index, data in enumerate(extractions):
        default = data.get("default_value")
        if not isinstance(default, list | dict):
            pieces.append(data)
            continue
        checked = _piece(
            model.Extraction, {**data, "default_value": None}, (*location, index), violations
        )
        pieces.append(
            _STAND_IN_EXTRACTION
            if checked is None
            else checked.model_copy(update={"default_value": default})
        )
    return pieces


def _branch_in_pieces(
    data: dict[str, Any], location: tuple[Any, ...], violations: list[FieldViolation]
) -> model.Branch:
    conditions: list[Any] = data.get("conditions", [])
    if len(conditions) > MAX_CONDITIONS_PER_BRANCH:
        conditions = [_STAND_IN_CONDITION] * len(conditions)
    else:
        conditions = [
            _condition_in_pieces(condition, (*location, "conditions", index), violations)
            for index, condition in enumerate(conditions)
        ]
    branch = _piece(model.Branch, {**data, "conditions": conditions}, location, violations)
    return branch or _STAND_IN_BRANCH


def _condition_in_pieces(
    data: dict[str, Any], location: tuple[Any, ...], violations: list[FieldViolation]
) -> Any:
    """A condition whose operand is a container, validated with an empty container in its
    place and then given its operand (or a stand-in, its violations added); others as they are.

    The operand was read by OperandValues, so it is plain JSON already: pydantic would only walk
    and copy it, in one call (12-33 ms for the bench's 99,000 strings). The empty container is
    accepted or refused by every operator as the operand is, with the same message: `[]` for a
    list not of two items, `[[], []]` for a pair holding a container, `{}` for an object (a pair
    of scalars is small, and validated as it is).
    """
    operand = data.get("operand")
    if isinstance(operand, dict):
        empty: Any = {}
    elif isinstance(operand, list) and len(operand) != 2:
        empty = []
    elif isinstance(operand, list) and any(isinstance(item, list | dict) for item in operand):
        empty = [[], []]
    else:
        return data
    checked = _piece(model.Condition, {**data, "operand": empty}, location, violations)
    if checked is None:
        return _STAND_IN_CONDITION
    return checked.model_copy(update={"operand": operand})


def _piece(
    model_type: type[M],
    data: dict[str, Any],
    location: tuple[Any, ...],
    violations: list[FieldViolation],
) -> M | None:
    """One piece validated, or None with its violations (at `location`) added."""
    try:
        return model_type.model_validate(data)
    except ValidationError as exc:
        violations.extend(
            FieldViolation(field_path((*location, *error["loc"])), _describe(error))
            for error in exc.errors()
        )
        return None


# Valid pieces standing in for invalid ones (or for the items of an over-long list), so that
# what contains them reports its own violations only; the node is then refused anyway.
_STAND_IN_CONDITION = model.Condition(
    subject=model.Subject(kind=model.SubjectKind.STATUS), operator=model.Operator.EXISTS
)
_STAND_IN_BRANCH = model.Branch(target="")
_STAND_IN_EXTRACTION = model.Extraction(variable="stand_in", path="@")


def _branch_data(branch: pb.Branch, field: str, values: OperandValues) -> dict[str, Any]:
    data: dict[str, Any] = {
        "target": branch.target,
        "conditions": [
            _condition_data(condition, f"{field}.conditions[{index}]", values)
            for index, condition in enumerate(branch.conditions)
        ],
    }
    combinator = enum_from_proto(model.Combinator, pb.Combinator, branch.combinator, "COMBINATOR_")
    if combinator is not None:
        data["combinator"] = combinator
    return data


def _condition_data(condition: pb.Condition, field: str, values: OperandValues) -> dict[str, Any]:
    subject: dict[str, Any] = {"path": condition.subject.path}
    kind = enum_from_proto(
        model.SubjectKind, pb.SubjectKind, condition.subject.kind, "SUBJECT_KIND_"
    )
    if kind is not None:
        subject["kind"] = kind
    data: dict[str, Any] = {"subject": subject, "ignore_case": condition.ignore_case}
    operator = enum_from_proto(model.Operator, pb.Operator, condition.operator, "OPERATOR_")
    if operator is not None:
        data["operator"] = operator
    if condition.HasField("operand"):
        data["operand"] = values.read(condition.operand, f"{field}.operand")
    quantifier = enum_from_proto(
        model.Quantifier, pb.Quantifier, condition.quantifier, "QUANTIFIER_"
    )
    if quantifier is not None:
        data["quantifier"] = quantifier
    return data


def extractions_data(
    extractions: Sequence[pb.Extraction], field: str, values: OperandValues
) -> list[dict[str, Any]]:
    """Extraction messages as model data (validated by the caller's model); default values
    are counted in `values`."""
    result = []
    for index, extraction in enumerate(extractions):
        data: dict[str, Any] = {
            "variable": extraction.variable,
            "path": extraction.path,
            "required": extraction.required,
        }
        if extraction.HasField("default_value"):
            data["default_value"] = values.read(
                extraction.default_value, f"{field}[{index}].default_value"
            )
        cast = enum_from_proto(model.CastType, pb.CastType, extraction.cast, "CAST_TYPE_")
        if cast is not None:
            data["cast"] = cast
        result.append(data)
    return result


def variables_from_proto(variables: struct_pb2.Struct) -> dict[str, Any]:
    """The conversation's variables as plain data (integral doubles read back as ints)."""
    data: dict[str, Any] = value_from_proto(variables, "variables")
    return data


def evaluate_answer(
    outcome: model.Outcome, *, error_target: str, message_limit: int
) -> tuple[model.Outcome, pb.EvaluateNodeResponse]:
    """The outcome as it is answered, and its response; secrets the request carried masked.

    An outcome the wire cannot carry (a value nested deeper than MAX_JSON_DEPTH, which protobuf
    decoders refuse, or a response over the gRPC message limit, which grpc refuses to send) is
    answered as ERROR / ANSWER_TOO_LARGE saying why, with the exchange's figures kept: never an
    INTERNAL or RESOURCE_EXHAUSTED status after the upstream was called.
    """
    problem = _too_deep(outcome)  # masking changes no depth
    if problem is None:
        outcome, response, size = _masked_answer(outcome)
        if size <= message_limit:
            return outcome, response
        problem = (
            f"the answer would be {size} bytes, over the {message_limit}-byte gRPC message limit "
            "(max_message_bytes); extract less, or ask without explain"
        )
    refused = model.Outcome(
        model.OutcomeKind.ERROR,
        model.Reason.ANSWER_TOO_LARGE,
        error_target,
        message=problem,
        http_status=outcome.http_status,
        upstream_latency_seconds=outcome.upstream_latency_seconds,
        attempts=outcome.attempts,
        connector_version=outcome.connector_version,
    )
    return refused, outcome_to_proto(refused)


def _masked_answer(outcome: model.Outcome) -> tuple[model.Outcome, pb.EvaluateNodeResponse, int]:
    """The outcome with the request's secrets masked, its response and the response's size.

    Nearly no answer echoes a secret, and walking every outcome to mask it cost more than
    building the answer. So the response is built first and its bytes searched for each
    secret's UTF-8 bytes: protobuf writes every text verbatim as UTF-8 (fields, Struct keys and
    values, map entries), and every text of an Outcome is in its response, so an answer without
    them is exactly what masking would leave unchanged (tests/test_wire.py checks this against
    `mask_secrets` on generated outcomes). Only an answer holding one is masked and built again.
    A secret without a UTF-8 form (a lone surrogate, as an environment variable may hold) could
    not be in an answer's text unmasked: such an outcome is masked first, as it always was.
    The bytes cost nothing extra: protobuf's ByteSize serialises the message all the same.
    """
    secrets = maskable_secrets(outcome.secret_values) if outcome.secret_values else ()
    needles = _utf8(secrets)
    if needles is None:
        outcome = mask_secrets(outcome, secrets)
    response = outcome_to_proto(outcome)
    answer = response.SerializeToString()
    for needle in needles or ():
        if needle in answer:
            outcome = mask_secrets(outcome, secrets)
            response = outcome_to_proto(outcome)
            return outcome, response, response.ByteSize()
    return outcome, response, len(answer)


def _utf8(secrets: Sequence[str]) -> list[bytes] | None:
    """Each secret's UTF-8 bytes; None when one has none (it holds a lone surrogate)."""
    try:
        return [secret.encode() for secret in secrets]
    except UnicodeEncodeError:
        return None


def _too_deep(outcome: model.Outcome) -> str | None:
    """What in the outcome nests deeper than an answer can carry, or None."""
    for result in outcome.extractions:
        if result.succeeded and _too_deep_value(result.value):
            return f"extraction {result.variable!r} {_DEEPER}"
    explanation = outcome.explanation
    for branch in explanation.branches if explanation is not None else ():
        for index, condition in enumerate(branch.conditions):
            if _too_deep_value(condition.subject_value):
                return f"branches[{branch.index}].conditions[{index}]'s subject value {_DEEPER}"
    return None


def _too_deep_value(value: Any) -> bool:
    """Whether `value` nests deeper than an answer can carry (a scalar never does: no walk)."""
    return isinstance(value, dict | list | tuple) and nesting_depth(value) > MAX_JSON_DEPTH


_TOO_LARGE = model.Reason.ANSWER_TOO_LARGE.value  # an enum's .value is a Python descriptor
_DEEPER = (
    f"yields a value nested deeper than {MAX_JSON_DEPTH} levels, more than an answer can carry "
    "(protobuf's nesting limit)"
)


def extract_answer(
    variables: dict[str, Any],
    results: Sequence[model.ExtractionResult],
    *,
    message_limit: int,
) -> pb.ExtractVariablesResponse:
    """The ExtractVariables response, or InvalidArgumentError when the wire cannot carry it.

    The same bounds as `evaluate_answer`: the caller's own extractions built the value, so the
    refusal names the extraction (or the whole set, for size) instead of failing in transit,
    with the ErrorInfo reason ANSWER_TOO_LARGE.
    """
    response = pb.ExtractVariablesResponse()
    messages = response.extractions
    complete = True  # no required extraction failed (`required_failures`)
    # `add_extraction_results` and the depth check in one walk (a microsecond of ~25 a call).
    for index, result in enumerate(results):
        message = _result_message(messages, result)
        if result.succeeded:
            value = result.value
            if _too_deep_value(value):
                raise InvalidArgumentError(
                    [FieldViolation(f"extractions[{index}]", _DEEPER)], reason=_TOO_LARGE
                )
            _fill_nested(message.value, value)
        elif result.required:
            complete = False
    response.complete = complete
    variables_message = response.variables
    variables_message.SetInParent()  # present even when empty, as it always was
    _fill_struct(variables_message, variables)
    size = response.ByteSize()
    if size > message_limit:
        raise InvalidArgumentError(
            [
                FieldViolation(
                    "extractions",
                    f"the answer would be {size} bytes, over the {message_limit}-byte gRPC "
                    "message limit (max_message_bytes); extract less",
                )
            ],
            reason=_TOO_LARGE,
        )
    return response


_OUTCOME_NUMBERS = enum_numbers(pb.Outcome, model.OutcomeKind, "OUTCOME_")
_REASON_NUMBERS = enum_numbers(pb.Reason, model.Reason, "REASON_")
_CACHE_STATUS_NUMBERS = enum_numbers(pb.CacheStatus, model.CacheStatus, "CACHE_STATUS_")
_EXTRACTION_STATUS_NUMBERS = enum_numbers(
    pb.ExtractionStatus, model.ExtractionStatus, "EXTRACTION_STATUS_"
)


def outcome_to_proto(outcome: model.Outcome) -> pb.EvaluateNodeResponse:
    """An Outcome as the EvaluateNode response, filled in place (no message built to be copied:
    this runs on every answer)."""
    response = pb.EvaluateNodeResponse(
        outcome=_OUTCOME_NUMBERS[outcome.kind],
        reason=_REASON_NUMBERS[outcome.reason],
        message=outcome.message,
        target=outcome.target,
        http_status=outcome.http_status,
        attempts=outcome.attempts,
        connector_version=outcome.connector_version,
    )
    response.upstream_latency.FromNanoseconds(round(outcome.upstream_latency_seconds * 1e9))
    add_extraction_results(response.extractions, outcome.extractions)
    if outcome.branch_index is not None:
        response.branch_index = outcome.branch_index
    if outcome.variables:
        _fill_struct(response.variables, outcome.variables)
    if outcome.explanation is not None:
        response.explanation.CopyFrom(_explanation_to_proto(outcome.explanation))
    if outcome.cache_status is not None:
        response.cache_status = _CACHE_STATUS_NUMBERS[outcome.cache_status]
        response.cache_age.FromNanoseconds(round(outcome.cache_age_seconds * 1e9))
    return response


def add_extraction_results(messages: Any, results: Sequence[model.ExtractionResult]) -> None:
    """Per-extraction results, failures included, appended in place to a repeated
    ExtractionResult field (of an EvaluateNode or ExtractVariables response)."""
    for result in results:
        message = _result_message(messages, result)
        if result.succeeded:
            _fill(message.value, result.value)


def _result_message(messages: Any, result: model.ExtractionResult) -> Any:
    """One ExtractionResult message appended to `messages`, its value left to the caller."""
    return messages.add(
        variable=result.variable,
        status=_EXTRACTION_STATUS_NUMBERS[result.status],
        required=result.required,
        message=result.message,
    )


def _explanation_to_proto(explanation: model.Explanation) -> pb.Explanation:
    message = pb.Explanation(notes=list(explanation.notes))
    if explanation.request is not None:
        request = explanation.request
        message.request.CopyFrom(
            pb.RenderedRequest(
                method=request.method, url=request.url, headers=request.headers, body=request.body
            )
        )
    for branch in explanation.branches:
        branch_message = message.branches.add(
            index=branch.index,
            target=branch.target,
            evaluated=branch.evaluated,
            matched=branch.matched,
        )
        for condition in branch.conditions:
            condition_message = branch_message.conditions.add(
                subject=pb.Subject(
                    kind=enum_to_proto(pb.SubjectKind, condition.subject.kind, "SUBJECT_KIND_"),
                    path=condition.subject.path,
                ),
                operator=enum_to_proto(pb.Operator, condition.operator, "OPERATOR_"),
                subject_present=condition.subject_present,
                result=condition.result,
                note=condition.note,
            )
            if condition.operand is not None:
                condition_message.operand.CopyFrom(value_to_proto(condition.operand))
            condition_message.subject_value.CopyFrom(value_to_proto(condition.subject_value))
    return message
