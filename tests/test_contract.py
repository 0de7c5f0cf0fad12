"""The contract cannot break by accident, and says what each field a caller sends is.

1. `scripts/check-breaking` (run by `make proto-lint`, so in CI) passes on the working tree and
   fails, naming the field, on scratch copies with a deliberate breaking change: the control that
   proves the check sees one.
2. Every field of every message a caller sends (the RPCs' request types and everything reachable
   from them) carries google.api.field_behavior; the output-only fields are exactly those the
   sidecar ignores on input.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from google.api import field_behavior_pb2
from google.protobuf import duration_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from rulesidecar.v1 import rules_sidecar_pb2 as pb

from sidecar.api import wire
from sidecar.errors import InvalidArgumentError

REPO = Path(__file__).resolve().parent.parent
PROTO = REPO / "proto"
BUF = PROTO / "node_modules" / ".bin" / "buf"
CHECK_BREAKING = REPO / "scripts" / "check-breaking"
CONTRACT = Path("rulesidecar") / "v1" / "rules_sidecar.proto"


@pytest.fixture
def buf() -> Path:
    """buf, installed by scripts/bootstrap; its absence fails in CI (where `make test` sets up)."""
    if not BUF.is_file():
        reason = "buf is not installed: run scripts/bootstrap (make setup) first"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return BUF


def check_breaking(proto_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHECK_BREAKING), str(proto_dir)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@pytest.fixture
def scratch_proto(tmp_path: Path) -> Path:
    """A copy of proto/ (workspace, contract, vendored googleapis, release images) to break."""
    scratch = tmp_path / "proto"
    scratch.mkdir()
    shutil.copy(PROTO / "buf.yaml", scratch)
    for tree in ("rulesidecar", "third_party", "releases"):
        shutil.copytree(PROTO / tree, scratch / tree)
    return scratch


def test_the_contract_keeps_the_last_release(buf: Path) -> None:
    result = check_breaking(PROTO)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "no breaking change against v0.1.0" in result.stdout


@pytest.mark.parametrize(
    ("before", "after", "complaint"),
    [
        pytest.param(
            "int64 max_response_bytes = 11",
            "int64 max_response_bytes = 21",
            'Previously present field "11" with name "max_response_bytes"',
            id="renumbered-field",
        ),
        pytest.param(
            "  // HTTP attempts made (0 when nothing was sent).\n  int32 attempts = 10;\n",
            "",
            'Previously present field "10" with name "attempts"',
            id="deleted-field",
        ),
        pytest.param(
            "string url_template = 5",
            "string url = 5",
            'changed name from "url_template" to "url"',
            id="renamed-field",
        ),
        pytest.param(
            "int32 page_size = 1",
            "int64 page_size = 1",
            'changed type from "int32" to "int64"',
            id="retyped-field",
        ),
        pytest.param(
            "REASON_CIRCUIT_OPEN = 16;",
            "REASON_BREAKER_OPEN = 16;",
            'changed name from "REASON_CIRCUIT_OPEN" to "REASON_BREAKER_OPEN"',
            id="renamed-enum-value",
        ),
    ],
)
def test_a_breaking_change_fails_the_check(
    buf: Path, scratch_proto: Path, before: str, after: str, complaint: str
) -> None:
    contract = scratch_proto / CONTRACT
    text = contract.read_text()
    assert text.count(before) == 1, f"the scratch edit no longer applies: {before!r}"
    contract.write_text(text.replace(before, after))

    result = check_breaking(scratch_proto)

    assert result.returncode == 1, result.stdout + result.stderr
    assert complaint in result.stdout
    assert "the contract breaks v0.1.0" in result.stderr


def test_an_added_field_is_not_breaking(buf: Path, scratch_proto: Path) -> None:
    contract = scratch_proto / CONTRACT
    text = contract.read_text()
    contract.write_text(
        text.replace(
            "  bool disable_trace_propagation = 18",
            "  // A new field.\n  string added = 99;\n  bool disable_trace_propagation = 18",
        )
    )

    result = check_breaking(scratch_proto)

    assert result.returncode == 0, result.stdout + result.stderr


def _sent_by_callers() -> Iterator[Descriptor]:
    """Every message type a caller sends: the request types and what they reach (not google.*)."""
    seen: set[str] = set()
    pending = [
        method.input_type
        for method in pb.DESCRIPTOR.services_by_name["RulesSidecarService"].methods
    ]
    while pending:
        message = pending.pop()
        if message.full_name in seen or not message.full_name.startswith("rulesidecar."):
            continue
        seen.add(message.full_name)
        yield message
        pending.extend(
            field.message_type
            for field in message.fields
            if field.message_type is not None and not field.message_type.GetOptions().map_entry
        )


def _behaviour(field: FieldDescriptor) -> list[int]:
    return list(field.GetOptions().Extensions[field_behavior_pb2.field_behavior])


def test_every_field_a_caller_sends_has_a_field_behavior() -> None:
    sent = list(_sent_by_callers())
    unannotated = [
        field.full_name for message in sent for field in message.fields if not _behaviour(field)
    ]

    assert {message.name for message in sent} >= {"Connector", "Node", "Condition", "Extraction"}
    assert unannotated == []


def test_output_only_fields_are_the_ones_registration_ignores() -> None:
    output_only = {
        field.full_name
        for message in _sent_by_callers()
        for field in message.fields
        if field_behavior_pb2.OUTPUT_ONLY in _behaviour(field)
    }

    assert output_only == {
        "rulesidecar.v1.Connector.version",
        "rulesidecar.v1.Connector.update_time",
        "rulesidecar.v1.Connector.source",
    }


@pytest.mark.parametrize(
    "field",
    [
        "rulesidecar.v1.Connector.id",
        "rulesidecar.v1.Connector.status",
        "rulesidecar.v1.Connector.url_template",
        "rulesidecar.v1.RegisterConnectorRequest.connector",
        "rulesidecar.v1.GetConnectorRequest.id",
        "rulesidecar.v1.DeleteConnectorRequest.id",
        "rulesidecar.v1.EvaluateNodeRequest.node",
        "rulesidecar.v1.Node.connector_id",
        "rulesidecar.v1.Condition.subject",
        "rulesidecar.v1.Condition.operator",
        "rulesidecar.v1.Extraction.variable",
        "rulesidecar.v1.Extraction.path",
    ],
)
def test_required_fields_are_marked_required(field: str) -> None:
    message_name, _, field_name = field.rpartition(".")
    message = pb.DESCRIPTOR.message_types_by_name[message_name.removeprefix("rulesidecar.v1.")]

    assert _behaviour(message.fields_by_name[field_name]) == [field_behavior_pb2.REQUIRED]


# A valid message per kind the wire validates; every REQUIRED field is set in one of them.
SAMPLES: list[tuple[str, Any, Callable[[Any], object]]] = [
    *(
        (
            "connector",
            pb.Connector(
                id="orders",
                status=pb.CONNECTOR_STATUS_LIVE,
                url_template="https://api.example.com/orders",
                auth=auth,
                cache=pb.CachePolicy(ttl=duration_pb2.Duration(seconds=60)),
            ),
            wire.connector_from_proto,
        )
        for auth in (
            pb.Auth(bearer=pb.BearerAuth(token_secret="token")),
            pb.Auth(api_key=pb.ApiKeyAuth(name="X-Key", value_secret="key")),
            pb.Auth(basic=pb.BasicAuth(username_secret="user", password_secret="password")),
            pb.Auth(
                oauth2_client_credentials=pb.OAuth2ClientCredentialsAuth(
                    token_url="https://login.example.com/oauth2/token",
                    client_id_secret="client_id",
                    client_secret_secret="client_secret",
                )
            ),
        )
    ),
    (
        "node",
        pb.Node(
            connector_id="orders",
            branches=[
                pb.Branch(
                    target="ok",
                    conditions=[
                        pb.Condition(
                            subject=pb.Subject(kind=pb.SUBJECT_KIND_STATUS),
                            operator=pb.OPERATOR_EXISTS,
                        )
                    ],
                )
            ],
            extractions=[pb.Extraction(variable="total", path="order.total")],
        ),
        wire.node_from_proto,
    ),
]


def _required_set_in(message: Any, path: str) -> Iterator[tuple[str, Any, str]]:
    """(dotted path, the message holding it, field name) of every REQUIRED field set."""
    for field, value in message.ListFields():
        dotted = f"{path}.{field.name}"
        if field_behavior_pb2.REQUIRED in _behaviour(field):
            yield dotted, message, field.name
        if field.message_type is not None and field.message_type.full_name.startswith(
            "rulesidecar"
        ):
            if field.is_repeated:
                for index, item in enumerate(value):
                    yield from _required_set_in(item, f"{dotted}[{index}]")
            else:
                yield from _required_set_in(value, dotted)


def _required_cases() -> list[Any]:
    """One case per REQUIRED field path (the connector's own fields once, not per auth)."""
    cases: dict[str, Any] = {}
    for prefix, sample, validate in SAMPLES:
        for index, (dotted, _, _) in enumerate(_required_set_in(sample, prefix)):
            cases.setdefault(
                dotted, pytest.param(sample, validate, prefix, index, dotted, id=dotted)
            )
    return list(cases.values())


def test_the_samples_are_valid_and_set_every_required_field_of_their_messages() -> None:
    covered = set()
    for prefix, sample, validate in SAMPLES:
        validate(sample)
        covered |= {
            f"{holder.DESCRIPTOR.full_name}.{name}"
            for _, holder, name in _required_set_in(sample, prefix)
        }
    reachable = {
        field.full_name
        for message in _sent_by_callers()
        for field in message.fields
        if field_behavior_pb2.REQUIRED in _behaviour(field)
        and not message.name.endswith("Request")  # checked by the servicer, tested in e2e
    }

    assert covered == reachable


@pytest.mark.parametrize(("sample", "validate", "prefix", "index", "dotted"), _required_cases())
def test_a_required_field_left_unset_is_refused_naming_it(
    sample: Any, validate: Callable[[Any], object], prefix: str, index: int, dotted: str
) -> None:
    broken = type(sample)()
    broken.CopyFrom(sample)
    _, holder, name = list(_required_set_in(broken, prefix))[index]
    holder.ClearField(name)

    with pytest.raises(InvalidArgumentError) as refused:
        validate(broken)

    (violation,) = refused.value.violations
    assert violation.field.startswith(dotted), violation
