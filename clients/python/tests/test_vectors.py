"""clients/testdata/vectors.json through the Python client: the same cases every client runs."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import Harness, load_vectors
from rulesidecar.client import Client

CASES = load_vectors()


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_vector(harness: Harness, case: dict[str, Any]) -> None:
    connector = json.loads(json.dumps(case["connector"]).replace("${UPSTREAM}", harness.upstream))
    expect = case["expect"]
    with Client(harness.sidecar) as sidecar:
        sidecar.register_connector(connector)
        evaluation = sidecar.evaluate_node(
            case["node"], case["variables"], mode=case.get("mode", "EVALUATION_MODE_UNSPECIFIED")
        )
    assert evaluation.outcome_name == expect["outcome"], evaluation.message
    assert evaluation.reason_name == expect["reason"], evaluation.message
    assert evaluation.target == expect["target"]
    assert evaluation.branch_index == expect["branch_index"]
    assert evaluation.http_status == expect["http_status"]
    assert evaluation.variables == expect["variables"]
