"""OAuth2 client credentials (issue 16, item 3): token fetches per 10,000 calls across expiries.

The target is one fetch per token lifetime, not one per caller. Everything runs in one process
and one event loop: a loopback aiohttp token endpoint (it counts its requests and answers after
`--idp-ms`, like a real identity provider) and an API that answers 401 to an expired or unknown
token (it counts those too), called through the sidecar's real engine, egress and token cache
(`sidecar.core.oauth.TokenCache`, `sidecar.egress.oauth.TokenEndpoint`).

Time is virtual for the tokens: the cache and the servers share a clock that the driver moves
forward after every wave of `--concurrency` concurrent calls, so that the `--calls` calls cross
`--expiries` token lifetimes. The HTTP exchanges themselves are real, so the latency figures
are real. Two traffic shapes:

- steady: waves are close together, so some arrive while a refresh is due ahead of expiry
  (the cache serves the current token and refreshes once in the background);
- gaps: traffic stops before each refresh is due and resumes after the expiry, so every wave
  after a gap finds no usable token and all its callers must wait for one fetch.

Steady traffic needs a little more than one fetch per lifetime: a token is replaced when its
refresh falls due, 6-12 s before the end of a 60 s token (and 10 s of margin), so each token
serves ~40-45 s of traffic. The figure that shows the storm is `max/wave`: the most fetches
started by one wave of concurrent callers (1 means every caller of the wave shared one fetch).

For contrast, `naive` is the strategy the issue's n8n bugs describe: a cache that fetches when
its token is missing or expired, with no coordination between callers (and no refresh ahead).

    .venv/bin/python bench/oauth.py [--calls 10000] [--concurrency 64] [--expiries 10]
                                    [--lifetime 60] [--idp-ms 20] [--output FILE]

Figures are benchmark output, never pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sidecar.core.engine import Engine, compile_node  # noqa: E402
from sidecar.core.model import Connector, Node  # noqa: E402
from sidecar.core.model.exchange import OutboundRequest, Send, SendOptions  # noqa: E402
from sidecar.core.oauth import ClientCredentials, IssuedToken, TokenCache  # noqa: E402
from sidecar.core.secrets import SecretBindings, SecretStore  # noqa: E402
from sidecar.egress import Egress, EgressLimits, EgressPolicy  # noqa: E402
from sidecar.egress.oauth import TokenEndpoint  # noqa: E402

HOST = "127.0.0.1"
CLIENT_ID, CLIENT_SECRET = "bench-client", "bench-secret"
NODE = {
    "connector_id": "crm",
    "branches": [
        {
            "target": "ok",
            "conditions": [{"subject": {"kind": "STATUS"}, "operator": "EQUALS", "operand": 200}],
        }
    ],
    "else_target": "else",
    "error_target": "error",
}


class VirtualClock:
    """Seconds that move when the driver says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class IdentityProvider:
    """The token endpoint and the API, counting what matters."""

    clock: VirtualClock
    lifetime: float
    delay: float
    fetches: int = 0
    api_calls: int = 0
    refused: int = 0
    expiry: dict[str, float] = field(default_factory=dict)
    serial: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    async def token(self, request: web.Request) -> web.Response:
        self.fetches += 1
        issued_at = self.clock()
        await asyncio.sleep(self.delay)
        token = f"bench-token-{next(self.serial)}"
        self.expiry[token] = issued_at + self.lifetime
        return web.json_response(
            {"access_token": token, "token_type": "Bearer", "expires_in": self.lifetime}
        )

    async def api(self, request: web.Request) -> web.Response:
        self.api_calls += 1
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if self.clock() >= self.expiry.get(token, float("-inf")):
            self.refused += 1
            return web.json_response({"error": "invalid_token"}, status=401)
        return web.json_response({"status": "shipped"})


class NaiveTokens:
    """The n8n way: fetch when the token is missing or expired, callers uncoordinated."""

    def __init__(
        self,
        fetch: Callable[[ClientCredentials, float], Awaitable[IssuedToken]],
        clock: VirtualClock,
    ) -> None:
        self._fetch = fetch
        self._clock = clock
        self._token: tuple[str, float] | None = None

    async def token(self, credentials: ClientCredentials, budget: float) -> str:
        if self._token is None or self._clock() >= self._token[1]:
            started = self._clock()
            issued = await self._fetch(credentials, budget)
            self._token = (issued.value, started + (issued.lifetime or 300.0))
        return self._token[0]


def naive_send(send: Send, tokens: NaiveTokens, credentials: ClientCredentials) -> Send:
    """A `send` that adds the naive cache's token (engine built without OAuth2 auth)."""

    async def with_token(request: OutboundRequest, options: SendOptions) -> Any:
        token = await tokens.token(credentials, options.timeout_seconds)
        headers = (*request.headers, ("Authorization", f"Bearer {token}"))
        return await send(
            OutboundRequest(request.method, request.url, headers, request.body), options
        )

    return with_token


async def scenario(strategy: str, shape: str, args: argparse.Namespace) -> dict[str, Any]:
    clock = VirtualClock()
    idp = IdentityProvider(clock, args.lifetime, args.idp_ms / 1000)
    app = web.Application()
    app.router.add_post("/token", idp.token)
    app.router.add_get("/orders", idp.api)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    port = runner.addresses[0][1]
    base = f"http://{HOST}:{port}"
    egress = Egress(
        EgressPolicy(allow_cidrs=(f"{HOST}/32",), allow_http_hosts=(HOST,)),
        EgressLimits(retries=0, per_upstream_concurrency=256),
    )
    endpoint = TokenEndpoint(egress.send)
    secrets = SecretStore(
        directory=None,
        environ={"B_ID": CLIENT_ID, "B_SECRET": CLIENT_SECRET},
        env_prefix="B_",
    )
    bindings = SecretBindings({"ID": [HOST], "SECRET": [HOST]})
    oauth = {
        "token_url": f"{base}/token",
        "client_id_secret": "ID",
        "client_secret_secret": "SECRET",
    }
    cache = TokenCache(endpoint.fetch, clock=clock)
    if strategy == "sidecar":
        connector = Connector.model_validate(
            {
                "id": "crm",
                "status": "LIVE",
                "url_template": f"{base}/orders",
                "auth": {"oauth2_client_credentials": oauth},
            }
        )
        engine = Engine({"crm": connector}, secrets, egress.send, bindings=bindings, tokens=cache)
    else:
        connector = Connector.model_validate(
            {"id": "crm", "status": "LIVE", "url_template": f"{base}/orders"}
        )
        credentials = ClientCredentials(f"{base}/token", CLIENT_ID, CLIENT_SECRET)
        naive = NaiveTokens(endpoint.fetch, clock)
        send = naive_send(egress.send, naive, credentials)
        engine = Engine({"crm": connector}, secrets, send, bindings=bindings)
    node = compile_node(Node.model_validate(NODE))

    waves = -(-args.calls // args.concurrency)
    span = args.lifetime * args.expiries
    latencies: list[float] = []
    outcomes: dict[str, int] = {}

    async def one() -> None:
        started = time.perf_counter()
        outcome = await engine.evaluate(node, {})
        latencies.append(time.perf_counter() - started)
        outcomes[outcome.reason.value] = outcomes.get(outcome.reason.value, 0) + 1

    done = most_in_one_wave = 0
    try:
        for wave in range(waves):
            if shape == "steady":
                clock.now = span * wave / waves
            else:  # gaps: waves bunched at the start of each lifetime, nothing near expiry
                per_lifetime = -(-waves // args.expiries)
                lifetime_index, within = divmod(wave, per_lifetime)
                clock.now = lifetime_index * args.lifetime + within * 0.01
            size = min(args.concurrency, args.calls - done)
            before = idp.fetches
            await asyncio.gather(*(one() for _ in range(size)))
            most_in_one_wave = max(most_in_one_wave, idp.fetches - before)
            done += size
        await asyncio.sleep(args.idp_ms / 1000 * 2)  # a background refresh still landing
    finally:
        await cache.aclose()
        await egress.aclose()
        await runner.cleanup()
    latencies.sort()
    lifetimes = int(clock.now // args.lifetime) + 1
    return {
        "strategy": strategy,
        "shape": shape,
        "calls": done,
        "token_lifetimes_crossed": lifetimes,
        "token_fetches": idp.fetches,
        "fetches_per_lifetime": round(idp.fetches / lifetimes, 2),
        "most_fetches_in_one_wave": most_in_one_wave,
        "api_401_expired_or_unknown_token": idp.refused,
        "api_calls": idp.api_calls,
        "outcomes": outcomes,
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--expiries", type=int, default=10)
    parser.add_argument("--lifetime", type=float, default=60.0, help="expires_in, seconds")
    parser.add_argument("--idp-ms", type=float, default=20.0, help="token endpoint latency")
    parser.add_argument("--output", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()
    results = []
    for strategy in ("sidecar", "naive"):
        for shape in ("steady", "gaps"):
            results.append(asyncio.run(scenario(strategy, shape, args)))
    print(
        f"{args.calls} calls, {args.concurrency} concurrent, {args.expiries} expiries of "
        f"{args.lifetime:g}s tokens, token endpoint {args.idp_ms:g} ms"
    )
    print(
        f"{'strategy':8} {'shape':6} {'lifetimes':>9} {'fetches':>7} {'per life':>8} "
        f"{'max/wave':>8} {'401s':>5} {'p50 ms':>7} {'p99 ms':>7}  outcomes"
    )
    for r in results:
        print(
            f"{r['strategy']:8} {r['shape']:6} {r['token_lifetimes_crossed']:>9} "
            f"{r['token_fetches']:>7} {r['fetches_per_lifetime']:>8} "
            f"{r['most_fetches_in_one_wave']:>8} "
            f"{r['api_401_expired_or_unknown_token']:>5} {r['p50_ms']:>7} {r['p99_ms']:>7}  "
            f"{r['outcomes']}"
        )
    if args.output:
        args.output.write_text(
            json.dumps(
                {"args": vars(args) | {"output": str(args.output)}, "results": results}, indent=2
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
