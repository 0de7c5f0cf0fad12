"""OAuth2 client credentials (sidecar.core.oauth, sidecar.egress.oauth) against a real token server.

Every test drives the real engine, the real egress and the real token cache against a loopback
token endpoint and API (tests/support/token_server.py) that count their calls; the cache and the
servers share a FakeClock, so expiries are crossed without sleeping. The jitter is fixed at its
largest refresh-ahead (1.0) so the schedule is known.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from sidecar.api import wire
from sidecar.core import oauth
from sidecar.core.auth import MASK, binding_refusals, mask_secrets
from sidecar.core.engine import Engine, compile_node
from sidecar.core.model import (
    CacheStatus,
    ClientAuthMethod,
    Connector,
    Node,
    Outcome,
    OutcomeKind,
    Reason,
)
from sidecar.core.oauth import ClientCredentials, TokenCache
from sidecar.core.secrets import SecretBindings, SecretStore
from sidecar.egress import Egress, EgressLimits
from sidecar.egress.cache import ResponseCache
from sidecar.egress.oauth import TokenEndpoint
from sidecar.errors import InvalidArgumentError
from tests.support.conditions import condition
from tests.support.loopback import HOST, LOOPBACK_POLICY
from tests.support.token_server import API_PATH, TOKEN_PATH, FakeClock, TokenServer
from tests.support.upstreams import Upstream

T = TypeVar("T")
CLIENT_ID = "crm-client-7"
CLIENT_SECRET = "client-secret-canary-4b1d"
SECRET_ENV = {
    "RULES_SECRET_CRM_CLIENT_ID": CLIENT_ID,
    "RULES_SECRET_CRM_CLIENT_SECRET": CLIENT_SECRET,
}
BOUND_TO_LOOPBACK = SecretBindings({"crm_client_id": [HOST], "crm_client_secret": [HOST]})
NODE = compile_node(
    Node.model_validate(
        {
            "connector_id": "crm",
            "branches": [{"target": "ok", "conditions": [condition("EQUALS", 200, kind="STATUS")]}],
            "else_target": "else",
            "error_target": "error",
        }
    )
)
CALLERS = 64


def oauth_connector(token_url: str, api_url: str, **auth: Any) -> Connector:
    return Connector.model_validate(
        {
            "id": "crm",
            "status": "LIVE",
            "url_template": api_url,
            "version": 1,
            "auth": {
                "oauth2_client_credentials": {
                    "token_url": token_url,
                    "client_id_secret": "crm_client_id",
                    "client_secret_secret": "crm_client_secret",
                    **auth,
                }
            },
        }
    )


@dataclass
class Rig:
    """The real engine, egress and token cache, wired as the composition root wires them."""

    server: TokenServer
    clock: FakeClock
    engine: Engine
    tokens: TokenCache

    async def call(self, *, explain: bool = False) -> Outcome:
        return await self.engine.evaluate(NODE, {}, explain=explain)

    async def burst(self, callers: int = CALLERS) -> list[Outcome]:
        return await asyncio.gather(*(self.call() for _ in range(callers)))

    def used_token(self) -> str:
        """The token the API last received."""
        header = self.server.upstream.last(API_PATH).header("Authorization") or ""
        return header.removeprefix("Bearer ")


@pytest.fixture
def token_server(module_upstream: Upstream) -> Iterator[TokenServer]:
    module_upstream.reset()
    yield TokenServer(module_upstream, CLIENT_ID, CLIENT_SECRET, clock=FakeClock())
    module_upstream.reset()


def run(
    server: TokenServer,
    scenario: Callable[[Rig], Awaitable[T]],
    *,
    bindings: SecretBindings = BOUND_TO_LOOPBACK,
    **auth: Any,
) -> T:
    """Run `scenario` with a fresh rig in a fresh event loop; everything is closed after."""
    clock = server.clock
    assert isinstance(clock, FakeClock)
    api_url = auth.pop("api_url", server.api_url)
    connector = oauth_connector(auth.pop("token_url", server.token_url), api_url, **auth)

    async def main() -> T:
        egress = Egress(LOOPBACK_POLICY, EgressLimits(retries=0))
        tokens = TokenCache(TokenEndpoint(egress.send).fetch, clock=clock, jitter=lambda: 1.0)
        secrets = SecretStore(directory=None, environ=SECRET_ENV, env_prefix="RULES_SECRET_")
        engine = Engine({"crm": connector}, secrets, egress.send, bindings=bindings, tokens=tokens)
        try:
            return await scenario(Rig(server, clock, engine, tokens))
        finally:
            await tokens.aclose()
            await egress.aclose()

    return asyncio.run(main())


def kinds(outcomes: list[Outcome]) -> set[tuple[OutcomeKind, Reason]]:
    return {(outcome.kind, outcome.reason) for outcome in outcomes}


MATCHED = {(OutcomeKind.MATCHED, Reason.BRANCH_MATCHED)}


# ---------------------------------------------------------------------------------------------
# The grant and the header
# ---------------------------------------------------------------------------------------------


def test_a_token_is_fetched_with_basic_client_auth_and_sent_as_bearer(token_server):
    outcome = run(
        token_server, lambda rig: rig.call(), scopes=["deals.read", "deals.write"], audience="crm"
    )

    assert (outcome.kind, outcome.reason) == (OutcomeKind.MATCHED, Reason.BRANCH_MATCHED)
    assert token_server.fetches == 1
    grant = token_server.requests[0]
    assert grant.authorization.startswith("Basic ")
    assert (grant.client_id, grant.client_secret) == (CLIENT_ID, CLIENT_SECRET)
    assert grant.form == {
        "grant_type": "client_credentials",
        "scope": "deals.read deals.write",
        "audience": "crm",
    }
    api = token_server.upstream.last(API_PATH)
    assert api.header("Authorization") == f"Bearer {token_server.issued[0]}"


def test_client_secret_post_sends_the_client_in_the_form_and_no_authorization(token_server):
    outcome = run(token_server, lambda rig: rig.call(), client_auth_method="CLIENT_SECRET_POST")

    assert outcome.kind is OutcomeKind.MATCHED
    grant = token_server.requests[0]
    assert grant.authorization == ""
    assert grant.form["client_id"] == CLIENT_ID
    assert grant.form["client_secret"] == CLIENT_SECRET


def test_a_token_is_reused_by_later_calls_until_its_refresh_is_due(token_server):
    async def scenario(rig: Rig) -> list[Outcome]:
        outcomes = []
        for _ in range(20):
            outcomes.append(await rig.call())
            rig.clock.advance(1.0)  # 20s of a 60s token: well before the refresh is due
        return outcomes

    outcomes = run(token_server, scenario)

    assert kinds(outcomes) == MATCHED
    assert token_server.fetches == 1
    assert token_server.api_calls == 20


# ---------------------------------------------------------------------------------------------
# One fetch per expiry, never an expired token
# ---------------------------------------------------------------------------------------------


def test_64_concurrent_callers_across_expiries_cause_one_fetch_per_expiry(token_server):
    token_server.delay = 0.05  # the fetch is still in flight when the other callers arrive

    async def scenario(rig: Rig) -> list[int]:
        fetches = []
        for _ in range(3):
            outcomes = await rig.burst()
            assert kinds(outcomes) == MATCHED
            fetches.append(rig.server.fetches)
            rig.clock.advance(token_server.expires_in)  # every token issued so far expires
        return fetches

    fetches = run(token_server, scenario)

    print(f"token fetches after each burst of {CALLERS} callers: {fetches}")
    assert fetches == [1, 2, 3]
    assert token_server.api_calls == 3 * CALLERS
    assert token_server.api_refusals == 0  # no caller ever sent an expired token


def test_a_token_past_its_margin_is_never_used_even_if_not_yet_expired(token_server):
    async def scenario(rig: Rig) -> tuple[str, str]:
        await rig.call()
        first = rig.used_token()
        rig.clock.advance(token_server.expires_in - oauth.EXPIRY_MARGIN / 2)  # 5s left on it
        await rig.call()
        return first, rig.used_token()

    first, second = run(token_server, scenario)

    assert first != second
    assert token_server.fetches == 2
    assert token_server.api_refusals == 0


def test_refresh_ahead_of_expiry_keeps_serving_the_current_token_meanwhile(token_server):
    # expires_in 60: usable until 54s, refresh due from 54 - min(60, 60/5) = 42s.
    async def scenario(rig: Rig) -> list[str]:
        used = []
        await rig.call()
        used.append(rig.used_token())
        rig.clock.advance(45.0)
        await rig.call()  # answered with the current token; the refresh runs behind it
        used.append(rig.used_token())
        rig.clock.advance(10.0)  # past the first token's margin
        await rig.call()
        used.append(rig.used_token())
        return used

    used = run(token_server, scenario)

    first, second = token_server.issued
    assert used == [first, first, second]
    assert token_server.fetches == 2


def test_without_expires_in_the_token_lives_the_default_lifetime(token_server):
    token_server.send_expires_in = False
    token_server.expires_in = 3600.0  # what the server really allows; it does not say so

    async def scenario(rig: Rig) -> int:
        await rig.call()
        rig.clock.advance(oauth.DEFAULT_LIFETIME / 2)
        await rig.call()
        fetched_before_default = rig.server.fetches
        rig.clock.advance(oauth.DEFAULT_LIFETIME)
        await rig.call()
        return fetched_before_default

    fetched_before_default = run(token_server, scenario)

    assert fetched_before_default == 1
    assert token_server.fetches == 2


# ---------------------------------------------------------------------------------------------
# 401: one refresh, one retry
# ---------------------------------------------------------------------------------------------


def test_a_401_forces_one_refresh_and_one_retry(token_server):
    async def scenario(rig: Rig) -> Outcome:
        await rig.call()
        rig.server.revoke_all()  # the API no longer accepts the cached, unexpired token
        return await rig.call()

    outcome = run(token_server, scenario)

    assert (outcome.kind, outcome.reason) == (OutcomeKind.MATCHED, Reason.BRANCH_MATCHED)
    assert outcome.attempts == 2
    assert token_server.fetches == 2
    assert token_server.api_calls == 3
    assert token_server.api_refusals == 1


def test_a_second_401_is_answered_as_it_is_never_retried_again(token_server):
    token_server.upstream.respond(API_PATH, status=401, json={"error": "invalid_token"})

    outcome = run(token_server, lambda rig: rig.call())

    assert (outcome.kind, outcome.reason, outcome.http_status) == (
        OutcomeKind.NO_MATCH,
        Reason.NO_BRANCH_MATCHED,
        401,
    )
    assert outcome.attempts == 2
    assert token_server.fetches == 2
    assert token_server.upstream.hits(API_PATH) == 2


def test_64_concurrent_401s_of_one_revoked_token_cause_one_refresh(token_server):
    token_server.delay = 0.05

    async def scenario(rig: Rig) -> list[Outcome]:
        await rig.call()
        rig.server.revoke_all()
        return await rig.burst()

    outcomes = run(token_server, scenario)

    assert kinds(outcomes) == MATCHED
    assert token_server.fetches == 2
    assert token_server.api_refusals == CALLERS


# ---------------------------------------------------------------------------------------------
# A failing token endpoint
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        pytest.param(lambda s: setattr(s, "fail_with", 503), "answered 503", id="503"),
        pytest.param(
            lambda s: setattr(s, "client_secret", "rotated"),
            "answered 401 (invalid_client)",
            id="wrong-secret",
        ),
        pytest.param(
            lambda s: s.upstream.respond(TOKEN_PATH, body=b"<html>login</html>"),
            "without JSON",
            id="not-json",
        ),
        pytest.param(
            lambda s: s.upstream.respond(TOKEN_PATH, json={"token_type": "Bearer"}),
            "without an access_token",
            id="no-token",
        ),
        pytest.param(
            lambda s: s.upstream.respond(TOKEN_PATH, json={"access_token": "a b\n"}),
            "cannot be sent in a header",
            id="token-with-a-newline",
        ),
        pytest.param(
            lambda s: s.upstream.respond(
                TOKEN_PATH, json={"access_token": "t", "token_type": "mac"}
            ),
            "only Bearer",
            id="not-bearer",
        ),
    ],
)
def test_a_failing_token_endpoint_answers_auth_token_error(token_server, setup, expected):
    setup(token_server)

    outcome = run(token_server, lambda rig: rig.call(explain=True))

    assert (outcome.kind, outcome.reason) == (OutcomeKind.ERROR, Reason.AUTH_TOKEN_ERROR)
    assert outcome.target == "error"
    assert token_server.token_url in outcome.message
    assert expected in outcome.message
    assert token_server.upstream.hits(API_PATH) == 0
    assert CLIENT_SECRET not in repr(outcome)


def test_a_token_url_the_egress_guard_refuses_answers_auth_token_error(token_server):
    blocked = "http://127.0.0.2/oauth/token"  # not in the loopback allow-list: no socket opened
    bindings = SecretBindings({"crm_client_id": ["127.0.0.2"], "crm_client_secret": ["127.0.0.2"]})

    outcome = run(token_server, lambda rig: rig.call(), token_url=blocked, bindings=bindings)

    assert outcome.reason is Reason.AUTH_TOKEN_ERROR
    assert "BLOCKED_DESTINATION" in outcome.message
    assert token_server.upstream.requests == []


def test_a_failure_is_held_briefly_instead_of_fetched_again_by_every_caller(token_server):
    token_server.fail_with = 500

    async def scenario(rig: Rig) -> list[Outcome]:
        outcomes = [await rig.call() for _ in range(10)]
        outcomes += await rig.burst()
        rig.clock.advance(oauth.FAILURE_HOLD_FIRST)
        rig.server.fail_with = None
        outcomes.append(await rig.call())
        return outcomes

    outcomes = run(token_server, scenario)

    assert kinds(outcomes[:-1]) == {(OutcomeKind.ERROR, Reason.AUTH_TOKEN_ERROR)}
    assert outcomes[-1].kind is OutcomeKind.MATCHED
    assert token_server.fetches == 2


def test_a_caller_whose_budget_ends_first_leaves_the_fetch_to_the_others(token_server):
    token_server.delay = 0.5

    async def scenario(rig: Rig) -> tuple[Outcome, Outcome]:
        hurried = await rig.engine.evaluate(NODE, {}, time_remaining=0.2)
        patient = await rig.call()  # the fetch the first caller started went on, and served
        return hurried, patient

    hurried, patient = run(token_server, scenario)

    assert hurried.reason is Reason.AUTH_TOKEN_ERROR
    assert "within the call's" in hurried.message
    assert patient.kind is OutcomeKind.MATCHED
    assert token_server.fetches == 1


# ---------------------------------------------------------------------------------------------
# Secrets and tokens stay hidden; bindings follow the token endpoint
# ---------------------------------------------------------------------------------------------


def test_explanations_show_the_token_masked_and_hold_no_secret(token_server):
    outcome = run(token_server, lambda rig: rig.call(explain=True))

    assert outcome.explanation is not None
    assert outcome.explanation.request is not None
    assert outcome.explanation.request.headers["Authorization"] == f"Bearer {MASK}"
    shown = repr(outcome)
    for value in (*token_server.issued, CLIENT_SECRET, CLIENT_ID):
        assert value not in shown


def test_credentials_are_keyed_by_a_digest_and_never_shown():
    credentials = ClientCredentials("https://login.example/token", CLIENT_ID, CLIENT_SECRET)
    rotated = ClientCredentials("https://login.example/token", CLIENT_ID, "rotated")
    other_scopes = ClientCredentials(
        "https://login.example/token", CLIENT_ID, CLIENT_SECRET, ("a",)
    )
    post = ClientCredentials(
        "https://login.example/token",
        CLIENT_ID,
        CLIENT_SECRET,
        method=ClientAuthMethod.CLIENT_SECRET_POST,
    )

    assert len({credentials.key, rotated.key, other_scopes.key, post.key}) == 4
    assert CLIENT_SECRET not in credentials.key + repr(credentials)
    assert CLIENT_ID not in repr(credentials)
    assert "secret" not in repr(oauth.IssuedToken("tok-secret", 60))


def test_client_secrets_must_be_bound_to_the_token_host_not_the_api_host():
    connector = oauth_connector("https://login.crm.example/token", "https://api.crm.example/x")
    api_bound = SecretBindings(
        {"crm_client_id": ["api.crm.example"], "crm_client_secret": ["api.crm.example"]}
    )
    token_bound = SecretBindings(
        {"crm_client_id": ["login.crm.example"], "crm_client_secret": ["login.crm.example"]}
    )

    refusals = binding_refusals(connector, api_bound)

    assert len(refusals) == 2
    assert all("not to 'login.crm.example'" in refusal for refusal in refusals)
    assert binding_refusals(connector, token_bound) == []


def test_unbound_client_secret_is_refused_before_any_token_request(token_server):
    bindings = SecretBindings({"crm_client_id": [HOST], "crm_client_secret": ["login.example"]})

    outcome = run(token_server, lambda rig: rig.call(), bindings=bindings)

    assert outcome.reason is Reason.BLOCKED_DESTINATION
    assert token_server.upstream.requests == []


# ---------------------------------------------------------------------------------------------
# Validation names the field
# ---------------------------------------------------------------------------------------------

GOOD_AUTH = {
    "token_url": "https://login.example.com/oauth2/token",
    "client_id_secret": "crm_client_id",
    "client_secret_secret": "crm_client_secret",
}


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"token_url": "https://login.example.com/{{tenant}}/token"}, "token_url", "placeholder"),
        ({"token_url": "/oauth2/token"}, "token_url", "absolute"),
        ({"token_url": "ftp://login.example.com/token"}, "token_url", "absolute"),
        ({"token_url": "https://id:pw@login.example.com/token"}, "token_url", "credentials"),
        ({"token_url": ""}, "token_url", "at least 1"),
        ({"client_id_secret": ""}, "client_id_secret", "secret name"),
        ({"client_secret_secret": "my secret!"}, "client_secret_secret", "secret name"),
        ({"scopes": ["read write"]}, "scopes[0]", "not a scope"),
        ({"audience": "crm\r\nX-Evil: 1"}, "audience", "control characters"),
        ({"client_auth_method": "PRIVATE_KEY_JWT"}, "client_auth_method", "CLIENT_SECRET_BASIC"),
    ],
)
def test_an_invalid_oauth2_field_is_named(change, field, words):
    auth = {"oauth2_client_credentials": {**GOOD_AUTH, **change}}
    data = {
        "id": "crm",
        "status": "LIVE",
        "url_template": "https://api.example.com/x",
        "auth": auth,
    }

    with pytest.raises(InvalidArgumentError) as refused:
        wire.validate(Connector, data, prefix="connector")

    found = {violation.field: violation.description for violation in refused.value.violations}
    name = f"connector.auth.oauth2_client_credentials.{field}"
    assert list(found) == [name]
    assert words in found[name]


def test_two_schemes_at_once_are_refused_naming_auth():
    auth = {"oauth2_client_credentials": GOOD_AUTH, "bearer": {"token_secret": "t"}}
    data = {
        "id": "crm",
        "status": "LIVE",
        "url_template": "https://api.example.com/x",
        "auth": auth,
    }

    with pytest.raises(InvalidArgumentError) as refused:
        wire.validate(Connector, data, prefix="connector")

    assert [violation.field for violation in refused.value.violations] == ["connector.auth"]


def test_a_token_the_api_echoes_is_masked_in_the_answer(token_server):
    # The API echoes the request (headers included): the answer's edge masks every token sent.
    token_server.token_prefix = "echoed-token"  # long enough to be masked (MIN_MASKED_SECRET_CHARS)
    node = Node.model_validate(
        {
            "connector_id": "crm",
            "branches": [],
            "else_target": "else",
            "error_target": "error",
            "extractions": [{"variable": "echoed", "path": "headers"}],
        }
    )

    async def scenario(rig: Rig) -> Outcome:
        return await rig.engine.evaluate(compile_node(node), {})

    outcome = run(token_server, scenario, api_url=token_server.upstream.url("/echo/orders"))

    token = token_server.issued[0]
    assert token in repr(outcome.variables)  # the control: the echo did carry it
    assert token in outcome.secret_values
    assert CLIENT_SECRET in outcome.secret_values
    assert token not in repr(mask_secrets(outcome.variables, outcome.secret_values))


# ---------------------------------------------------------------------------------------------
# With the response cache
# ---------------------------------------------------------------------------------------------


def test_cached_answers_outlive_the_token_they_were_fetched_with(token_server):
    """The cache keys an OAuth2 exchange by the credential, not by the token: after a refresh
    the entry still answers (keyed by the token, each refresh would empty the cache)."""
    plain = oauth_connector(token_server.token_url, token_server.api_url)
    connector = Connector.model_validate({**plain.model_dump(), "cache": {"ttl": "600s"}})
    clock = token_server.clock

    async def main() -> list[CacheStatus | None]:
        egress = Egress(LOOPBACK_POLICY, EgressLimits(retries=0))
        tokens = TokenCache(TokenEndpoint(egress.send).fetch, clock=clock, jitter=lambda: 1.0)
        cache = ResponseCache(egress.send, max_bytes=1 << 20, clock=clock)
        secrets = SecretStore(directory=None, environ=SECRET_ENV, env_prefix="RULES_SECRET_")
        engine = Engine(
            {"crm": connector}, secrets, cache.send, bindings=BOUND_TO_LOOPBACK, tokens=tokens
        )
        statuses = []
        try:
            for _ in range(2):
                outcome = await engine.evaluate(NODE, {})
                assert outcome.kind is OutcomeKind.MATCHED, outcome
                statuses.append(outcome.cache_status)
                clock.advance(token_server.expires_in)  # the token expires; the entry does not
            return statuses
        finally:
            await cache.aclose()
            await tokens.aclose()
            await egress.aclose()

    statuses = asyncio.run(main())

    assert token_server.fetches == 2  # the second call needed a new token...
    assert statuses == [CacheStatus.MISS, CacheStatus.HIT]  # ...and still found the entry
    assert token_server.api_calls == 1
