"""The Grafana dashboard (deploy/grafana) and the Prometheus rules (deploy/prometheus) against a
real scrape.

A `rules-sidecar serve` process with its Prometheus endpoint on loopback serves traffic that
produces every kind of point the dashboard and the rules read: a MATCHED, a NO_MATCH and an
ERROR evaluation, retries, an open circuit breaker and a CIRCUIT_OPEN answer, RPC errors
(NOT_FOUND, INVALID_ARGUMENT). Its /metrics text is then read, and every metric name and label
that a panel, a template variable or a rule expression names must be in it (a recording rule's
name counts as known for the rules that read it). `promtool check rules` and `promtool test
rules` run when promtool is installed (scripts/check-monitoring installs it; `make
check-monitoring`).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from rulesidecar.v1 import rules_sidecar_pb2 as pb

from tests.support.calls import RPC_TIMEOUT, evaluate_request, register
from tests.support.loopback import LOOPBACK_ENVIRONMENT
from tests.support.sidecars import SidecarProcess, SidecarProcesses, free_loopback_port
from tests.support.upstreams import Upstream

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "deploy" / "grafana" / "rules-sidecar-dashboard.json"
RULES = REPO / "deploy" / "prometheus" / "rules-sidecar-rules.yaml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "tests"
PROMTOOL = next(
    (
        str(candidate)
        for candidate in (REPO / ".tools" / "go" / "bin" / "promtool", shutil.which("promtool"))
        if candidate and Path(candidate).is_file()
    ),
    None,
)
# Labels Prometheus adds to every scraped series, and the bucket bound of a histogram.
TARGET_LABELS = frozenset({"job", "instance", "le"})
PROMQL_WORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "inf", "nan", "by", "without", "on", "ignoring"}
)

pytestmark = pytest.mark.process


# ---------------------------------------------------------------------------------------------
# A scrape of a sidecar that served traffic
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scrape:
    """The samples of one GET /metrics: name -> the label sets seen with it."""

    text: str
    labels: dict[str, list[dict[str, str]]]

    @classmethod
    def of(cls, text: str) -> Scrape:
        labels: dict[str, list[dict[str, str]]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels.setdefault(sample.name, []).append(dict(sample.labels))
        return cls(text, labels)

    def values(self, name: str, **match: str) -> list[float]:
        """Values of the samples of `name` whose labels include `match`."""
        found = []
        for family in text_string_to_metric_families(self.text):
            for sample in family.samples:
                if sample.name == name and match.items() <= sample.labels.items():
                    found.append(sample.value)
        return found


@pytest.fixture(scope="module")
def scrape(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scrape]:
    upstream = Upstream()
    processes = SidecarProcesses(tmp_path_factory.mktemp("monitoring"))
    try:
        port = free_loopback_port()
        sidecar = processes.start(
            env={
                "RULES_SIDECAR_METRICS_PROMETHEUS_PORT": str(port),
                "RULES_SIDECAR_RETRIES": "1",
                "RULES_SIDECAR_BREAKER_FAILURE_THRESHOLD": "2",
                "RULES_SIDECAR_BREAKER_COOLDOWN_SECONDS": "600",
                **LOOPBACK_ENVIRONMENT,
            }
        )
        serve_traffic(sidecar, upstream)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            yield Scrape.of(response.read().decode())
    finally:
        processes.close()
        upstream.close()


def serve_traffic(sidecar: SidecarProcess, upstream: Upstream) -> None:
    stub = sidecar.stub
    upstream.respond("/ok", json={"status": "shipped"})
    upstream.respond("/gone", status=404, json={"error": "no such order"})
    upstream.respond("/busy", status=503, json={"busy": True})
    for connector, path in (("orders", "/ok"), ("returns", "/gone"), ("stock", "/busy")):
        register(stub, connector, upstream.url(path))

    def outcome(connector: str) -> tuple[str, str]:
        answer = stub.EvaluateNode(evaluate_request(connector), timeout=RPC_TIMEOUT)
        return pb.Outcome.Name(answer.outcome), pb.Reason.Name(answer.reason)

    assert outcome("orders") == ("OUTCOME_MATCHED", "REASON_BRANCH_MATCHED")
    assert outcome("returns") == ("OUTCOME_NO_MATCH", "REASON_NO_BRANCH_MATCHED")
    # Two failed attempts (one retry) open the origin's breaker (threshold 2) ...
    assert outcome("stock") == ("OUTCOME_ERROR", "REASON_UPSTREAM_ERROR")
    # ... which then refuses the next call without sending it.
    assert outcome("stock") == ("OUTCOME_ERROR", "REASON_CIRCUIT_OPEN")
    assert outcome("not-registered") == ("OUTCOME_ERROR", "REASON_CONNECTOR_NOT_FOUND")
    for call, request, code in (
        (stub.GetConnector, pb.GetConnectorRequest(id="nope"), grpc.StatusCode.NOT_FOUND),
        (stub.EvaluateNode, pb.EvaluateNodeRequest(), grpc.StatusCode.INVALID_ARGUMENT),
    ):
        with pytest.raises(grpc.RpcError) as raised:
            call(request, timeout=RPC_TIMEOUT)
        assert raised.value.code() is code


def test_the_scrape_holds_the_traffic_it_was_given(scrape: Scrape) -> None:
    """The scrape the other tests read is the traffic above, not an empty endpoint."""
    evaluations = {
        (labels["rules_sidecar_connector_id"], labels["rules_sidecar_reason"])
        for labels in scrape.labels["rules_sidecar_evaluations_total"]
    }
    assert evaluations == {
        ("orders", "BRANCH_MATCHED"),
        ("returns", "NO_BRANCH_MATCHED"),
        ("stock", "UPSTREAM_ERROR"),
        ("stock", "CIRCUIT_OPEN"),
        ("_OTHER", "CONNECTOR_NOT_FOUND"),
    }
    assert scrape.values("rules_sidecar_egress_breaker_state") == [2.0]  # open
    assert scrape.values("rules_sidecar_egress_retries_total", rules_sidecar_connector_id="stock")
    codes = {
        (labels["rpc_method"], labels["rpc_grpc_status_code"])
        for labels in scrape.labels["rpc_server_call_duration_seconds_count"]
    }
    assert codes == {
        ("RegisterConnector", "0"),
        ("EvaluateNode", "0"),
        ("GetConnector", "5"),  # NOT_FOUND
        ("EvaluateNode", "3"),  # INVALID_ARGUMENT
    }
    assert scrape.values(
        "http_client_request_duration_seconds_count",
        rules_sidecar_connector_id="stock",
        http_response_status_code="503",
        error_type="503",
    ) == [2.0]


# ---------------------------------------------------------------------------------------------
# What the dashboard and the rules name
# ---------------------------------------------------------------------------------------------


def dashboard_expressions() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable of the dashboard."""
    dashboard = json.loads(DASHBOARD.read_text())
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r}", target["expr"]))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", text)
            assert match, f"variable {variable['name']}: {text}"
            found.append((f"variable {variable['name']!r}", f"sum by ({match[2]}) ({match[1]})"))
    return found


def rule_expressions() -> tuple[list[tuple[str, str]], set[str]]:
    """(where, PromQL) of every rule, and the names the recording rules define."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    found, recorded = [], set()
    for group in groups:
        for rule in group["rules"]:
            name = rule.get("record") or rule["alert"]
            found.append((f"rule {name}", rule["expr"]))
            if "record" in rule:
                recorded.add(rule["record"])
    return found, recorded


@dataclass(frozen=True)
class Named:
    """The metric names of one PromQL expression, and the labels it matches or groups by."""

    metrics: frozenset[str]
    selectors: tuple[tuple[str, str], ...]  # (metric, label) of every matcher
    grouping: frozenset[str]  # labels of by (...) / on (...) / without (...)


def names_in(expression: str) -> Named:
    """A small PromQL reader: enough for selectors, functions, aggregations and binary ops."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expression)  # string literals
    text = re.sub(r"\$\{?\w+\}?", "", text)  # Grafana variables ($__rate_interval, ${job})
    selectors = []
    for metric, matchers in re.findall(r"([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}", text):
        for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers):
            selectors.append((metric, label))
    grouping: set[str] = set()
    for clause in re.findall(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", text
    ):
        grouping.update(label.strip() for label in clause.split(",") if label.strip())
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\{[^}]*\}", " ", text)  # matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges
    text = re.sub(r"\boffset\s+\w+", " ", text)
    metrics = {
        word
        for word in re.findall(r"(?<![\w.])([a-zA-Z_:][\w:]*)\b(?!\s*\()", text)
        if word.lower() not in PROMQL_WORDS
    }
    return Named(frozenset(metrics), tuple(selectors), frozenset(grouping))


def problems_of(
    expressions: Iterable[tuple[str, str]], scrape: Scrape, recorded: set[str]
) -> list[str]:
    """What an expression names that the scrape does not have."""
    problems = []
    for where, expression in expressions:
        named = names_in(expression)
        if not named.metrics:
            problems.append(f"{where}: names no metric: {expression}")
        labels_seen = set(TARGET_LABELS)
        for metric in named.metrics:
            if metric in recorded:
                labels_seen.update(("job", "rules_sidecar_connector_id", "rpc_method"))
            elif metric not in scrape.labels:
                problems.append(f"{where}: {metric} is not in the scrape")
            else:
                labels_seen.update(label for seen in scrape.labels[metric] for label in seen)
        for metric, label in named.selectors:
            known = {label for seen in scrape.labels.get(metric, ()) for label in seen}
            if metric in scrape.labels and label not in known | TARGET_LABELS:
                problems.append(f"{where}: {metric} has no label {label}")
        for label in sorted(named.grouping - labels_seen):
            problems.append(f"{where}: groups by {label}, which none of its metrics has")
    return problems


def test_every_metric_and_label_of_the_dashboard_is_in_a_real_scrape(scrape: Scrape) -> None:
    expressions = dashboard_expressions()
    assert len(expressions) >= 20

    assert problems_of(expressions, scrape, recorded=set()) == []


def test_every_metric_and_label_of_the_rules_is_in_a_real_scrape(scrape: Scrape) -> None:
    expressions, recorded = rule_expressions()
    assert "rules_sidecar_connector:evaluation_errors:ratio_rate1h" in recorded

    assert problems_of(expressions, scrape, recorded) == []


def test_the_checker_sees_a_misspelt_metric_and_a_wrong_label(scrape: Scrape) -> None:
    """Control: the checks above can fail."""
    expressions = [
        ("typo", "sum(rate(rules_sidecar_evaluation_total[5m]))"),
        ("label", 'sum(rate(rules_sidecar_evaluations_total{connector="orders"}[5m]))'),
        ("grouping", "sum by (connector) (rate(rules_sidecar_evaluations_total[5m]))"),
        (
            "fine",
            "histogram_quantile(0.99, sum by (le) (rate(rpc_server_call_duration_seconds_bucket"
            '{rpc_method="EvaluateNode"}[$__rate_interval])))',
        ),
    ]

    assert problems_of(expressions, scrape, recorded=set()) == [
        "typo: rules_sidecar_evaluation_total is not in the scrape",
        "label: rules_sidecar_evaluations_total has no label connector",
        "grouping: groups by connector, which none of its metrics has",
    ]


@pytest.mark.parametrize(
    ("expression", "metrics", "grouping"),
    [
        (
            'sum by (a, b) (rate(x_total{c="d", e=~"f|g"}[5m])) / on (a) y',
            {"x_total", "y"},
            {"a", "b"},
        ),
        (
            "histogram_quantile(0.9, sum by (le) (rate(h_bucket[$__rate_interval])))",
            {"h_bucket"},
            {"le"},
        ),
        ("x > bool 2 and y offset 5m unless z", {"x", "y", "z"}, set()),
        ('max by (server_address) (s{job=~"$job"}) == 2', {"s"}, {"server_address"}),
    ],
)
def test_the_promql_reader_finds_metrics_and_grouping_labels(
    expression: str, metrics: set[str], grouping: set[str]
) -> None:
    named = names_in(expression)

    assert (set(named.metrics), set(named.grouping)) == (metrics, grouping)


# ---------------------------------------------------------------------------------------------
# promtool
# ---------------------------------------------------------------------------------------------


def promtool(*arguments: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *arguments], capture_output=True, text=True, check=False, timeout=120
    )


needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed: run scripts/check-monitoring first"
)


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    result = promtool("check", "rules", str(RULES))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_the_alerts_fire_on_the_series_their_unit_tests_give(tmp_path: Path) -> None:
    result = promtool("test", "rules", *map(str, sorted(RULE_TESTS.glob("*.yaml"))))
    assert result.returncode == 0, result.stdout + result.stderr
    # Control: a budget ten times larger (10% instead of 1%) no longer pages at 20% errors.
    loose = tmp_path / "rules-sidecar-rules.yaml"
    loose.write_text(RULES.read_text().replace("(14.4 * 0.01)", "(14.4 * 0.1)"))
    tests = tmp_path / "tests"
    tests.mkdir()
    for test in RULE_TESTS.glob("*.yaml"):
        (tests / test.name).write_text(test.read_text())
    result = promtool("test", "rules", *map(str, sorted(tests.glob("*.yaml"))))
    assert result.returncode != 0
    assert "RulesSidecarConnectorErrorBudgetBurnFast" in result.stdout + result.stderr
