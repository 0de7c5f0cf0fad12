"""OAuth2 client credentials over the real wire: register, read back, evaluate, refuse.

The token endpoint and the API are the loopback TokenServer (tests/support/token_server.py) on
real time; the in-process sidecar reads the client id and secret from its secrets_dir.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from rulesidecar.v1 import rules_sidecar_pb2 as pb

from tests.support.calls import RPC_TIMEOUT, evaluate, field_violations, register, verdict
from tests.support.loopback import HOST
from tests.support.sidecars import InProcessSidecar
from tests.support.token_server import API_PATH, TokenServer
from tests.support.upstreams import Upstream

CLIENT_ID = "e2e-client"
CLIENT_SECRET = "e2e-client-secret-5d2a"  # a test value, from the sidecar's secrets_dir
SECRET_HOSTS = {"crm_client_id": [HOST], "crm_client_secret": [HOST]}
CALLERS = 64


@pytest.fixture
def sidecar(sidecar_factory: Callable[..., InProcessSidecar], tmp_path: Path) -> InProcessSidecar:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "crm_client_id").write_text(CLIENT_ID, encoding="utf-8")
    (secrets / "crm_client_secret").write_text(CLIENT_SECRET, encoding="utf-8")
    return sidecar_factory(secrets_dir=secrets, secret_hosts=SECRET_HOSTS)


def oauth_auth(token_url: str, **fields: Any) -> dict[str, Any]:
    return {
        "oauth2_client_credentials": {
            "token_url": token_url,
            "client_id_secret": "crm_client_id",
            "client_secret_secret": "crm_client_secret",
            **fields,
        }
    }


def test_a_registered_oauth2_connector_reads_back_without_any_secret(
    sidecar: InProcessSidecar, upstream: Upstream
) -> None:
    tokens = TokenServer(upstream, CLIENT_ID, CLIENT_SECRET)
    auth = oauth_auth(
        tokens.token_url,
        scopes=["deals.read"],
        audience="https://api.crm.example",
        client_auth_method="CLIENT_AUTH_METHOD_CLIENT_SECRET_POST",
    )

    stored = register(sidecar.stub, "crm", tokens.api_url, auth=auth)
    read = sidecar.stub.GetConnector(pb.GetConnectorRequest(id="crm"), timeout=RPC_TIMEOUT)

    assert read.connector.auth == stored.auth
    oauth = read.connector.auth.oauth2_client_credentials
    assert (oauth.token_url, list(oauth.scopes), oauth.audience) == (
        tokens.token_url,
        ["deals.read"],
        "https://api.crm.example",
    )
    assert oauth.client_auth_method == pb.CLIENT_AUTH_METHOD_CLIENT_SECRET_POST
    assert CLIENT_SECRET not in str(read)
    assert tokens.fetches == 0  # registering fetches nothing


def test_64_concurrent_evaluations_over_the_wire_fetch_one_token(
    sidecar: InProcessSidecar, upstream: Upstream
) -> None:
    tokens = TokenServer(upstream, CLIENT_ID, CLIENT_SECRET, delay=0.05)
    register(sidecar.stub, "crm", tokens.api_url, auth=oauth_auth(tokens.token_url))

    with ThreadPoolExecutor(max_workers=CALLERS) as pool:
        answers = list(pool.map(lambda _: evaluate(sidecar.stub, "crm"), range(CALLERS)))

    assert {verdict(answer) for answer in answers} == {("OUTCOME_MATCHED", "REASON_BRANCH_MATCHED")}
    assert tokens.fetches == 1
    assert upstream.hits(API_PATH) == CALLERS


def test_a_failing_token_endpoint_answers_reason_auth_token_error(
    sidecar: InProcessSidecar, upstream: Upstream
) -> None:
    tokens = TokenServer(upstream, CLIENT_ID, "not-the-secret-the-sidecar-has")
    register(sidecar.stub, "crm", tokens.api_url, auth=oauth_auth(tokens.token_url))

    answer = evaluate(sidecar.stub, "crm", explain=True)

    assert verdict(answer) == ("OUTCOME_ERROR", "REASON_AUTH_TOKEN_ERROR")
    assert "answered 401 (invalid_client)" in answer.message
    assert answer.target == "error"
    assert upstream.hits(API_PATH) == 0


def test_an_invalid_oauth2_registration_names_the_field(
    sidecar: InProcessSidecar, upstream: Upstream
) -> None:
    auth = oauth_auth("https://login.example.com/{{tenant}}/token", scopes=["a b"])

    with pytest.raises(grpc.RpcError) as refused:
        register(sidecar.stub, "crm", upstream.url("/json"), auth=auth)

    prefix = "connector.auth.oauth2_client_credentials"
    assert set(field_violations(refused.value)) == {f"{prefix}.token_url", f"{prefix}.scopes[0]"}


def test_client_secrets_bound_to_the_api_host_only_are_refused_at_registration(
    sidecar: InProcessSidecar, upstream: Upstream
) -> None:
    # The secrets are bound to 127.0.0.1; a token endpoint elsewhere may not receive them.
    auth = oauth_auth("https://login.crm.example/oauth2/token")

    with pytest.raises(grpc.RpcError) as refused:
        register(sidecar.stub, "crm", upstream.url("/json"), auth=auth)

    described = field_violations(refused.value)["connector.auth"]
    assert "not to 'login.crm.example'" in described
