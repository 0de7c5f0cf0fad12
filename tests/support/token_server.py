"""A real loopback OAuth2 token endpoint that counts its calls, and an API that wants its tokens.

`TokenServer` adds two routes to an `Upstream` (tests/support/upstreams.py: aiohttp on
127.0.0.1, in its own thread):

    POST /oauth/token   the client credentials grant (RFC 6749 section 4.4): the client
                        authenticates with HTTP basic or in the form (client_secret_post); a wrong
                        client is 401 invalid_client, another grant 400 unsupported_grant_type.
                        Issues a new token each time, `expires_in` seconds long (on `clock`), and
                        counts the requests (`fetches`), good or not.
    GET  /api/orders    200 JSON with a token it issued, unexpired (on `clock`) and not revoked;
                        401 with `WWW-Authenticate: Bearer error="invalid_token"` otherwise.
                        Counts its calls and its refusals.

Programmable: `fail_with` (status for every token request), `delay` (seconds before a token
answer: it widens the window in which concurrent callers find a fetch in flight; no assertion
depends on it), `send_expires_in`, `revoke_all()`. `clock` is shared with the sidecar's token
cache (a `FakeClock`), so a test moves both past an expiry without sleeping.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote_plus

from aiohttp import web

from tests.support.upstreams import Upstream

TOKEN_PATH = "/oauth/token"
API_PATH = "/api/orders"
ORDER = {"order_number": "A-1", "status": "shipped"}


class FakeClock:
    """Monotonic seconds that move only when a test says so (thread-safe reads)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class TokenRequest:
    """What one token request carried (the test asserts the grant's shape)."""

    client_id: str
    client_secret: str
    form: dict[str, str]
    authorization: str


@dataclass
class TokenServer:
    """See the module docstring. `token_prefix` starts every token issued (leak tests search
    for it)."""

    upstream: Upstream
    client_id: str
    client_secret: str
    clock: Callable[[], float] = field(default_factory=FakeClock)
    expires_in: float = 60.0
    send_expires_in: bool = True
    token_prefix: str = "tok"
    delay: float = 0.0
    fail_with: int | None = None
    fetches: int = 0
    api_calls: int = 0
    api_refusals: int = 0
    requests: list[TokenRequest] = field(default_factory=list)
    _expiry: dict[str, float] = field(default_factory=dict)
    _serial: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.upstream.route(TOKEN_PATH, self._token)
        self.upstream.route(API_PATH, self._api)

    @property
    def token_url(self) -> str:
        return self.upstream.url(TOKEN_PATH)

    @property
    def api_url(self) -> str:
        return self.upstream.url(API_PATH)

    @property
    def issued(self) -> list[str]:
        """Every token issued so far, oldest first."""
        with self._lock:
            return list(self._expiry)

    def revoke_all(self) -> None:
        """The API refuses every token issued so far (as after a key rotation upstream)."""
        with self._lock:
            for token in self._expiry:
                self._expiry[token] = float("-inf")

    async def _token(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            self.fetches += 1
        form = dict(parse_qsl((await request.read()).decode()))
        authorization = request.headers.get("Authorization", "")
        client_id, client_secret = form.get("client_id", ""), form.get("client_secret", "")
        if authorization.startswith("Basic "):
            pair = base64.b64decode(authorization[6:]).decode()
            encoded_id, _, encoded_secret = pair.partition(":")
            client_id, client_secret = unquote_plus(encoded_id), unquote_plus(encoded_secret)
        self.requests.append(TokenRequest(client_id, client_secret, form, authorization))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_with is not None:
            return web.json_response({"error": "temporarily_unavailable"}, status=self.fail_with)
        if form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        if (client_id, client_secret) != (self.client_id, self.client_secret):
            return web.json_response({"error": "invalid_client"}, status=401)
        with self._lock:
            token = f"{self.token_prefix}-{next(self._serial)}"
            self._expiry[token] = self.clock() + self.expires_in
        answer: dict[str, object] = {"access_token": token, "token_type": "Bearer"}
        if self.send_expires_in:
            answer["expires_in"] = self.expires_in
        return web.json_response(answer, headers={"Cache-Control": "no-store"})

    async def _api(self, request: web.Request) -> web.StreamResponse:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        with self._lock:
            self.api_calls += 1
            expiry = self._expiry.get(token)
            valid = expiry is not None and self.clock() < expiry
            if not valid:
                self.api_refusals += 1
        if not valid:
            return web.json_response(
                {"error": "invalid_token"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        return web.json_response(ORDER)
