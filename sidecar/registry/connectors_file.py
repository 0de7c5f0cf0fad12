"""The declarative connectors file (YAML or JSON): GitOps and Kubernetes ConfigMaps.

Same schema as the API (field names of `sidecar.core.model.Connector`, enums without their proto
prefix). Every problem is reported with its location, `file:line: connectors[0].url_template:
why`, so `rules-sidecar validate` can list them all at once. A connector that would carry a secret
to a host the `secret_hosts` setting does not bind it to (or a secret with no binding) is one of
those problems: the file obeys the same rule as RegisterConnector. Query and header values are
text: a YAML scalar there that reads as a number or a bool (`limit: 10`) is taken as written.

A file is read consistently: its bytes and stat are taken twice, SETTLE_SECONDS apart, and must
agree (retried a few times), so a file rewritten in place (not swapped as a ConfigMap is) is never
taken half-written. An empty file (or one with only comments) is refused, not read as zero
connectors: truncation is the first step of every in-place rewrite, and zero connectors must be
said (`connectors: []`).

    connectors:
      - id: order-status
        status: LIVE
        url_template: https://api.store.com/orders/{{order_number}}
        auth: {api_key: {name: X-API-Key, value_secret: store_api_key}}
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from sidecar.core.model import Connector, ConnectorSource
from sidecar.core.secrets import SecretBindings
from sidecar.errors import ConfigError, clean_message, field_path
from sidecar.registry.registry import secret_host_refusals

OUTPUT_ONLY_FIELDS = ("version", "update_time", "source")
SETTLE_SECONDS = 0.02
READ_ATTEMPTS = 5


def load_connectors_file(path: Path, *, bindings: SecretBindings) -> tuple[Connector, ...]:
    """Parse and validate a connectors file; ConfigError listing every problem with its line."""
    try:
        text = read_settled(path).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read connectors file {path}: {exc}") from exc
    if path.suffix.lower() == ".json":
        # JSON is parsed as YAML (for line numbers), but YAML refuses tab indentation; in valid
        # JSON a raw tab can only be whitespace, so this changes neither meaning nor lines.
        text = text.replace("\t", " ")
    try:
        root_node = yaml.compose(text, Loader=yaml.SafeLoader)
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML/JSON", [f"{path}:{line}: {problem}"]) from exc

    if document is None:
        raise ConfigError(
            f"{path}: invalid connectors file",
            [
                f"{path}:1: the file is empty (or half-written); a file with no connectors "
                "says so: `connectors: []`"
            ],
        )
    if not isinstance(document, dict) or not isinstance(document.get("connectors"), list):
        raise ConfigError(
            f"{path}: invalid connectors file",
            [f"{path}:1: the file must be a mapping with a `connectors` list"],
        )
    extra_keys = sorted(set(document) - {"connectors"}, key=str)
    if extra_keys:
        raise ConfigError(
            f"{path}: invalid connectors file",
            [
                f"{path}:{_line_of(root_node, (key,))}: unknown top-level key {key!r}; "
                "only `connectors` is allowed"
                for key in extra_keys
            ],
        )

    modified = datetime.fromtimestamp(path.stat().st_mtime, tz=UTC)
    problems: list[str] = []
    connectors: list[Connector] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(document["connectors"]):
        location = ("connectors", index)
        if not isinstance(raw, dict):
            problems.append(_problem(path, root_node, location, "each connector must be a mapping"))
            continue
        for name in OUTPUT_ONLY_FIELDS:
            if name in raw:
                problems.append(
                    _problem(path, root_node, (*location, name), "output-only; remove it")
                )
        definition = {k: v for k, v in raw.items() if k not in OUTPUT_ONLY_FIELDS}
        _take_values_as_written(definition, _node_at(root_node, location))
        try:
            connector = Connector.model_validate(definition)
        except ValidationError as exc:
            for error in exc.errors():
                problems.append(_problem(path, root_node, (*location, *error["loc"]), error["msg"]))
            continue
        if connector.id in seen:
            problems.append(
                _problem(
                    path,
                    root_node,
                    (*location, "id"),
                    f"duplicate id {connector.id!r} (also connectors[{seen[connector.id]}])",
                )
            )
            continue
        seen[connector.id] = index
        for refused in secret_host_refusals(connector, bindings):
            named = (
                refused if "secret_hosts" in refused else f"{refused} (the secret_hosts setting)"
            )
            problems.append(
                _problem(
                    path,
                    root_node,
                    (*location, "auth"),
                    f"connector {connector.id!r}: {named}",
                )
            )
        connectors.append(
            connector.model_copy(
                update={"version": 1, "update_time": modified, "source": ConnectorSource.FILE}
            )
        )
    if problems:
        raise ConfigError(f"{path}: {len(problems)} problem(s)", problems)
    return tuple(connectors)


def read_settled(path: Path) -> bytes:
    """The file's bytes once two reads SETTLE_SECONDS apart agree (bytes and stat); OSError
    (a ConfigError to the caller) if the file is still changing after READ_ATTEMPTS."""
    for attempt in range(READ_ATTEMPTS):
        before = _stat_stamp(path)
        data = path.read_bytes()
        time.sleep(SETTLE_SECONDS * (attempt + 1))
        if _stat_stamp(path) == before and path.read_bytes() == data:
            return data
    raise OSError(f"the file kept changing while it was read ({READ_ATTEMPTS} attempts)")


def _stat_stamp(path: Path) -> tuple[int, int, int, int]:
    info = os.stat(path)
    return info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns


def _take_values_as_written(definition: dict[Any, Any], connector: yaml.Node | None) -> None:
    """Query and header values are text, but YAML reads `limit: 10` as a number, `on: yes` as
    a bool and `at: 12:30` as 750: such a scalar is taken as written in the file (`010` stays
    `010`), rather than refused as "not a valid string" or turned into another spelling."""
    for field in ("query", "headers"):
        values = definition.get(field)
        mapping = _node_at(connector, (field,))
        if not isinstance(values, dict) or not isinstance(mapping, yaml.MappingNode):
            continue
        written = {key.value: value for key, value in mapping.value}
        definition[field] = {
            name: written[str(name)].value
            if isinstance(value, int | float)
            and isinstance(written.get(str(name)), yaml.ScalarNode)
            else value
            for name, value in values.items()
        }


def _node_at(node: yaml.Node | None, location: Sequence[Any]) -> yaml.Node | None:
    """The node at the location path, or None where the document has none."""
    for part in location:
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            node = node.value[part] if part < len(node.value) else None
        else:
            return None
    return node


def _problem(path: Path, root: yaml.Node | None, location: Sequence[Any], message: str) -> str:
    line = _line_of(root, location)
    return f"{path}:{line}: {field_path(location)}: {clean_message(message)}"


def _line_of(node: yaml.Node | None, location: Sequence[Any]) -> int:
    """1-based line of the deepest node on the location path that exists in the document."""
    line = 1 if node is None else node.start_mark.line + 1
    for part in location:
        child = None
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if k.value == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            child = node.value[part] if part < len(node.value) else None
        if child is None:
            break
        node = child
        line = node.start_mark.line + 1
    return line
