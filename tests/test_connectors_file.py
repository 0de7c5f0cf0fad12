"""The connectors file: YAML or JSON in, read-only connectors out, every problem at its line.

Each file below is written with a known layout, and its line numbers are written beside it, so a
problem reported one line off fails the test.
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from sidecar.core.model import ConnectorSource, ConnectorStatus, HttpMethod
from sidecar.core.secrets import SecretBindings
from sidecar.errors import ConfigError
from sidecar.registry import load_connectors_file
from sidecar.settings import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
# The secrets of VALID_YAML, bound to their connectors' hosts (every secret must be bound).
BINDINGS = SecretBindings({"store_api_key": ["api.store.com"], "crm_token": ["crm.example.com"]})
PROBLEM = re.compile(r"(?P<path>.+?):(?P<line>\d+): (?P<field>\S+): (?P<message>.+)", re.DOTALL)

VALID_YAML = """\
# Two connectors, one per auth scheme.
connectors:
  - id: order-status
    display_name: Where is my order?
    status: LIVE
    url_template: https://api.store.com/orders/{{order_number}}
    headers:
      Accept: application/json
    auth:
      api_key: {name: X-API-Key, value_secret: store_api_key}
    timeout: 500ms

  - id: crm-contact-lookup
    status: DRAFT
    method: POST
    url_template: https://crm.example.com/api/v2/contacts/search
    body_template:
      filter: {email: "{{customer.email}}", limit: 10}
    auth:
      bearer: {token_secret: crm_token}
"""


def write(tmp_path: Path, text: str, name: str = "connectors.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path, bindings: SecretBindings = BINDINGS) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as caught:
        load_connectors_file(path, bindings=bindings)
    assert caught.value.problems, "a ConfigError must list its problems"
    return caught.value.problems


def located(path: Path, problems: tuple[str, ...]) -> list[tuple[int, str]]:
    """(line, field) of each problem, checking the `path:line: field: message` shape."""
    result = []
    for problem in problems:
        match = PROBLEM.fullmatch(problem)
        assert match, f"not `path:line: field: message`: {problem!r}"
        assert match["path"] == str(path)
        result.append((int(match["line"]), match["field"]))
    return result


# ---------------------------------------------------------------------------------------------
# Valid files
# ---------------------------------------------------------------------------------------------


def test_valid_yaml_file_gives_read_only_connectors_at_version_one(tmp_path):
    path = write(tmp_path, VALID_YAML)
    modified = datetime(2026, 2, 3, 4, 5, 6, tzinfo=UTC)
    os.utime(path, (modified.timestamp(), modified.timestamp()))

    order, crm = load_connectors_file(path, bindings=BINDINGS)

    assert (order.id, crm.id) == ("order-status", "crm-contact-lookup")
    for connector in (order, crm):
        assert connector.source is ConnectorSource.FILE
        assert connector.version == 1
        assert connector.update_time == modified
    assert order.status is ConnectorStatus.LIVE
    assert order.timeout == timedelta(milliseconds=500)
    assert order.headers == {"Accept": "application/json"}
    assert order.auth.api_key.value_secret == "store_api_key"
    assert crm.method is HttpMethod.POST
    assert crm.body_template == {"filter": {"email": "{{customer.email}}", "limit": 10}}


@pytest.mark.parametrize("indent", [None, 2], ids=["one-line", "indented"])
def test_valid_json_file_gives_the_same_connectors_as_yaml(tmp_path, indent):
    document = yaml.safe_load(VALID_YAML)
    path = write(tmp_path, json.dumps(document, indent=indent), "connectors.json")
    yaml_path = write(tmp_path, VALID_YAML)

    from_json = load_connectors_file(path, bindings=BINDINGS)
    from_yaml = load_connectors_file(yaml_path, bindings=BINDINGS)

    strip = {"update_time": None}
    assert [c.model_copy(update=strip) for c in from_json] == [
        c.model_copy(update=strip) for c in from_yaml
    ]


def test_valid_json_file_indented_with_tabs_is_accepted(tmp_path):
    document = yaml.safe_load(VALID_YAML)
    path = write(tmp_path, json.dumps(document, indent="\t"), "connectors.json")

    assert len(load_connectors_file(path, bindings=BINDINGS)) == 2


def test_a_file_that_says_connectors_empty_gives_none(tmp_path):
    assert load_connectors_file(write(tmp_path, "connectors: []\n"), bindings=BINDINGS) == ()


@pytest.mark.parametrize(
    "text",
    ["", "\n\n", "# nothing yet\n", "---\n"],
    ids=["empty", "blank-lines", "comment-only", "empty-document"],
)
def test_an_empty_file_is_refused_not_read_as_zero_connectors(tmp_path, text):
    # Issue 14: truncation is the first step of an in-place rewrite; zero connectors is said.
    path = write(tmp_path, text)

    (problem,) = problems_of(path)

    assert problem == (
        f"{path}:1: the file is empty (or half-written); a file with no connectors says so: "
        "`connectors: []`"
    )


def test_example_connectors_file_is_valid_with_the_example_settings():
    """`make run`'s pair: examples/sidecar.yaml binds every secret examples/connectors.yaml uses."""
    settings = Settings.load(config_file=REPO_ROOT / "examples" / "sidecar.yaml")
    connectors = load_connectors_file(
        REPO_ROOT / "examples" / "connectors.yaml",
        bindings=SecretBindings(settings.secret_hosts),
    )

    declared = yaml.safe_load((REPO_ROOT / "examples" / "connectors.yaml").read_text())
    assert [c.id for c in connectors] == [entry["id"] for entry in declared["connectors"]]
    assert all(c.source is ConnectorSource.FILE for c in connectors)


# ---------------------------------------------------------------------------------------------
# File-level problems
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "{}\n",
        "items: []\n",
        "- id: a\n",
        "just text\n",
        "connectors:\n",
        "connectors: {id: a}\n",
        "connectors: 5\n",
    ],
    ids=["empty-mapping", "other-key", "list", "scalar", "null", "mapping", "number"],
)
def test_file_without_a_connectors_list_is_refused(tmp_path, text):
    path = write(tmp_path, text)

    (problem,) = problems_of(path)

    assert problem == f"{path}:1: the file must be a mapping with a `connectors` list"


def test_unknown_top_level_key_is_refused(tmp_path):
    path = write(tmp_path, "connectors: []\nconnector_defaults: {timeout: 2s}\n")

    (problem,) = problems_of(path)

    assert problem.startswith(f"{path}:")
    assert problem.startswith(f"{path}:2:")
    assert "unknown top-level key 'connector_defaults'" in problem
    assert "only `connectors` is allowed" in problem


def test_unknown_top_level_key_is_reported_at_its_line(tmp_path):
    path = write(
        tmp_path,
        "# line 1\n"
        "connectors:\n"  # 2
        "  - id: a\n"  # 3
        "    status: LIVE\n"  # 4
        "    url_template: https://a.example/x\n"  # 5
        "defaults: {}\n",  # 6
    )

    (problem,) = problems_of(path)

    assert problem.startswith(f"{path}:6: ")


def test_yaml_syntax_error_names_the_file_and_the_line(tmp_path):
    path = write(
        tmp_path,
        "connectors:\n"  # 1
        "  - id: a\n"  # 2
        "    status: LIVE\n"  # 3
        "    url_template: https://a.example/x: y\n",  # 4: a second `: ` in a plain scalar
    )

    with pytest.raises(ConfigError) as caught:
        load_connectors_file(path, bindings=BINDINGS)

    assert str(path) in caught.value.message
    (problem,) = caught.value.problems
    assert problem.startswith(str(path))
    assert problem.startswith(f"{path}:4: ")


def test_yaml_syntax_error_is_reported_as_path_line_message(tmp_path):
    path = write(tmp_path, 'connectors:\n  - id: a\n    status: "LIVE\n')

    (problem,) = problems_of(path)

    assert re.match(rf"{re.escape(str(path))}:\d+: ", problem)
    assert "<unicode string>" not in problem


def _missing(tmp_path: Path) -> Path:
    return tmp_path / "absent.yaml"


def _directory(tmp_path: Path) -> Path:
    return tmp_path


def _latin1(tmp_path: Path) -> Path:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"connectors: []  # caf\xe9\n")
    return path


@pytest.mark.parametrize(
    ("make", "reason"),
    [(_missing, "No such file"), (_directory, "Is a directory"), (_latin1, "utf-8")],
    ids=["missing", "directory", "not-utf-8"],
)
def test_unreadable_file_is_a_config_error_naming_it(tmp_path, make, reason):
    path = make(tmp_path)

    with pytest.raises(ConfigError) as caught:
        load_connectors_file(path, bindings=BINDINGS)

    assert caught.value.message.startswith(f"cannot read connectors file {path}")
    assert reason in caught.value.message


# ---------------------------------------------------------------------------------------------
# Connector problems, each at its line
# ---------------------------------------------------------------------------------------------

MANY_PROBLEMS = """\
# comment                                             line 1
connectors:
  - id: good
    status: LIVE
    url_template: https://a.example/x

  - id: Bad Id
    status: LIVE
    url_template: https://{{host}}/x
    headers:
      Authorization: literal
      X-Ok: "a\\nb"
    timeout: 31s
    version: 3
  - just a string
  - id: good
    status: LIVE
    url_template: https://a.example/y
  - id: no-status
    url_template: https://a.example/y
    auth:
      api_key:
        name: X-Key
        value_secret: "../x"
"""


def test_every_problem_is_reported_at_its_own_line(tmp_path):
    path = write(tmp_path, MANY_PROBLEMS)

    problems = problems_of(path)

    assert sorted(located(path, problems)) == [
        (7, "connectors[1].id"),
        (9, "connectors[1].url_template"),
        (11, 'connectors[1].headers["Authorization"]'),
        (12, 'connectors[1].headers["X-Ok"]'),
        (13, "connectors[1].timeout"),
        (14, "connectors[1].version"),
        (15, "connectors[2]"),
        (16, "connectors[3].id"),
        (19, "connectors[4].status"),
        (24, "connectors[4].auth.api_key.value_secret"),
    ]


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ("connectors[1].id", "must be a slug"),
        ("connectors[1].url_template", "placeholders are not allowed in the scheme, host"),
        ('connectors[1].headers["Authorization"]', "carries a credential"),
        ("connectors[1].timeout", "at most 30s"),
        ("connectors[1].version", "output-only; remove it"),
        ("connectors[2]", "each connector must be a mapping"),
        ("connectors[3].id", "duplicate id 'good' (also connectors[0])"),
        ("connectors[4].status", "Field required"),
        ("connectors[4].auth.api_key.value_secret", "it names a secret"),
    ],
)
def test_each_problem_says_what_is_wrong(tmp_path, field, message):
    path = write(tmp_path, MANY_PROBLEMS)

    by_field = {PROBLEM.fullmatch(p)["field"]: p for p in problems_of(path)}

    assert message in by_field[field]
    assert "Value error" not in by_field[field]


def test_config_error_message_counts_the_problems(tmp_path):
    path = write(tmp_path, MANY_PROBLEMS)

    with pytest.raises(ConfigError) as caught:
        load_connectors_file(path, bindings=BINDINGS)

    assert caught.value.message == f"{path}: 10 problem(s)"


@pytest.mark.parametrize("field", ["version", "update_time", "source"])
def test_output_only_field_is_refused_at_its_line(tmp_path, field):
    path = write(
        tmp_path,
        "connectors:\n"  # 1
        "  - id: a\n"  # 2
        "    status: LIVE\n"  # 3
        "    url_template: https://a.example/x\n"  # 4
        f"    {field}: 2\n",  # 5
    )

    (problem,) = problems_of(path)

    assert problem == f"{path}:5: connectors[0].{field}: output-only; remove it"


def test_duplicate_id_is_reported_at_the_second_occurrence(tmp_path):
    entry = "  - id: {id}\n    status: LIVE\n    url_template: https://a.example/x\n"
    path = write(
        tmp_path,
        "connectors:\n"  # 1
        + entry.format(id="a")  # 2-4
        + entry.format(id="b")  # 5-7
        + entry.format(id="a"),  # 8-10
    )

    (problem,) = problems_of(path)

    assert problem == f"{path}:8: connectors[2].id: duplicate id 'a' (also connectors[0])"


def test_missing_field_is_reported_at_the_start_of_its_connector(tmp_path):
    path = write(
        tmp_path,
        "connectors:\n"  # 1
        "  - id: a\n"  # 2
        "    status: LIVE\n"  # 3
        "    url_template: https://a.example/x\n"  # 4
        "  -\n"  # 5
        "    id: b\n"  # 6
        "    url_template: https://a.example/y\n",  # 7
    )

    (problem,) = problems_of(path)

    assert problem == f"{path}:6: connectors[1].status: Field required"


def test_problems_in_a_json_file_are_reported_at_their_lines(tmp_path):
    path = write(
        tmp_path,
        "{\n"  # 1
        '  "connectors": [\n'  # 2
        "    {\n"  # 3
        '      "id": "a",\n'  # 4
        '      "status": "LIVE",\n'  # 5
        '      "url_template": "ftp://a.example/x",\n'  # 6
        '      "headers": {"Cookie": "x"}\n'  # 7
        "    }\n"  # 8
        "  ]\n"  # 9
        "}\n",
        "connectors.json",
    )

    assert sorted(located(path, problems_of(path))) == [
        (6, "connectors[0].url_template"),
        (7, 'connectors[0].headers["Cookie"]'),
    ]


def test_one_bad_connector_refuses_the_whole_file(tmp_path):
    path = write(tmp_path, VALID_YAML + "  - id: broken\n    status: LIVE\n")

    (problem,) = problems_of(path)

    assert problem == f"{path}:21: connectors[2].url_template: Field required"


# ---------------------------------------------------------------------------------------------
# Secrets bound to hosts: the rule RegisterConnector applies
# ---------------------------------------------------------------------------------------------


def test_a_secret_bound_to_another_host_is_refused_at_its_auth_line(tmp_path):
    path = write(tmp_path, VALID_YAML)
    bindings = SecretBindings(
        {"store_api_key": ["api.payments.example"], "crm_token": ["crm.example.com"]}
    )

    (problem,) = problems_of(path, bindings)

    assert problem == (
        f"{path}:10: connectors[0].auth: connector 'order-status': secret 'store_api_key' may "
        "only be sent to api.payments.example, not to 'api.store.com' (the secret_hosts setting)"
    )


def test_a_secret_bound_to_no_host_is_refused_naming_the_setting(tmp_path):
    path = write(tmp_path, VALID_YAML)
    bindings = SecretBindings({"store_api_key": ["api.store.com"]})

    (problem,) = problems_of(path, bindings)

    assert problem.startswith(
        f"{path}:20: connectors[1].auth: connector 'crm-contact-lookup': secret 'crm_token' is "
        "bound to no host: add it to the secret_hosts setting, e.g. secret_hosts: {crm_token: "
        "[crm.example.com]}"
    )


def test_unbound_secrets_load_when_the_development_opt_out_is_on(tmp_path):
    path = write(tmp_path, VALID_YAML)

    connectors = load_connectors_file(path, bindings=SecretBindings({}, allow_unbound=True))

    assert len(connectors) == 2


def test_secrets_bound_to_their_connectors_hosts_load(tmp_path):
    path = write(tmp_path, VALID_YAML)
    bindings = SecretBindings({"store_api_key": ["*.store.com"], "crm_token": ["crm.example.com"]})

    connectors = load_connectors_file(path, bindings=bindings)

    assert [connector.id for connector in connectors] == ["order-status", "crm-contact-lookup"]


# ---------------------------------------------------------------------------------------------
# Query and header values are text: scalars are taken as written
# ---------------------------------------------------------------------------------------------

SCALARS_YAML = """\
connectors:
  - id: search
    status: LIVE
    url_template: https://api.store.com/search
    query:
      limit: 10
      page: 010
      ratio: 1.50
      verbose: yes
      at: 12:30
      term: "{{term}}"
    headers:
      X-Retry: 3
      X-Debug: false
"""


def test_numbers_and_bools_in_query_and_headers_are_taken_as_written(tmp_path):
    (connector,) = load_connectors_file(write(tmp_path, SCALARS_YAML), bindings=BINDINGS)

    assert connector.query == {
        "limit": "10",
        "page": "010",
        "ratio": "1.50",
        "verbose": "yes",
        "at": "12:30",
        "term": "{{term}}",
    }
    assert connector.headers == {"X-Retry": "3", "X-Debug": "false"}


def test_numbers_in_a_json_file_query_are_taken_as_written(tmp_path):
    document = {
        "connectors": [
            {
                "id": "search",
                "status": "LIVE",
                "url_template": "https://api.store.com/search",
                "query": {"limit": 10, "ratio": 0.5, "all": True},
            }
        ]
    }
    path = write(tmp_path, json.dumps(document), "connectors.json")

    (connector,) = load_connectors_file(path, bindings=BINDINGS)

    assert connector.query == {"limit": "10", "ratio": "0.5", "all": "true"}


def test_an_empty_query_value_is_still_refused_at_its_line(tmp_path):
    path = write(tmp_path, SCALARS_YAML.replace("limit: 10", "limit:"))

    (problem,) = problems_of(path)

    assert problem == f'{path}:6: connectors[0].query["limit"]: Input should be a valid string'
