"""OAuth2 client credentials: one token per credential, reused until shortly before it expires.

How one call of a connector with `oauth2_client_credentials` auth gets its token
(`send_with_token`)::

    TokenCache.token(credentials)
        a fresh token                  -> use it
        usable, but its refresh is due -> use it; one background fetch starts (unless one runs)
        no usable token                -> wait for the one fetch in flight (start it if none)
    send with `Authorization: Bearer <token>`
    401?  -> TokenCache.rejected(credentials, token): dropped if it is still the current one
          -> wait for a fresh token (one fetch, shared), send once more, never twice

The schedule of a token with lifetime L (`expires_in`; DEFAULT_LIFETIME when the endpoint omits
it), counted from when its request left (so the transit counts against the token)::

    fetched ........ refresh_at ........ usable_until ..... fetched + L
      fresh          refresh ahead        never used after (a margin of min(10s, L/10) for
                     (one background      transit and clock skew)
                     fetch)

    refresh_at = usable_until - min(60s, L/5) * jitter, jitter in [0.5, 1]

The jitter spreads the refreshes of replicas that fetched together. A fetch that fails fails every
caller waiting on it (each gets a TokenError, one fetch was made); callers that come within the
hold that follows (1s, doubling per consecutive failure up to 30s) get the same answer without a
new fetch, so a broken token endpoint is not hammered. A failed refresh *ahead* of expiry is quiet:
the current token is still good and the first caller after the hold tries again.

What n8n got wrong and the rule here: expired tokens reused (n8n#17450; here never past
`usable_until`), refresh storms under parallel calls (#12742; one fetch per credential at a time,
the other callers wait on it), `expires_in` ignored (#32423; it sets the schedule).

The cache is transport-free: fetching is the egress's (`sidecar.egress.oauth.TokenEndpoint`),
handed in as `fetch`. Tokens and secrets are held in fields that `repr` never shows; the key of
a credential is a SHA-256 digest, so the secret itself is never a key.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

from sidecar.core.model import ClientAuthMethod
from sidecar.core.model.exchange import HttpResponse, OutboundRequest, Send, SendOptions
from sidecar.core.model.failures import SendError, TokenError
from sidecar.core.model.outcome import Reason

DEFAULT_LIFETIME = 300.0  # seconds, when the endpoint sends no usable expires_in
MIN_LIFETIME = 1.0
MAX_LIFETIME = 24 * 3600.0
EXPIRY_MARGIN = 10.0
REFRESH_AHEAD = 60.0
FAILURE_HOLD_FIRST = 1.0
FAILURE_HOLD_MOST = 30.0
DEFAULT_FETCH_TIMEOUT = 10.0
_PRUNE_ABOVE = 256

Clock = Callable[[], float]
"""Seconds on a monotonic scale (time.monotonic); tests pass their own to skip past expiries."""


@dataclass(frozen=True, slots=True)
class ClientCredentials:
    """One OAuth2 client, its secrets resolved: what a token request needs.

    `key` names the credential without holding it: a SHA-256 digest of every field that makes a
    different token (endpoint, client id, secret, scopes, audience, method). A rotated secret is a
    new key, so a token of the old secret is never handed out for the new one.
    """

    token_url: str
    client_id: str = field(repr=False)
    client_secret: str = field(repr=False)
    scopes: tuple[str, ...] = ()
    audience: str = ""
    method: ClientAuthMethod = ClientAuthMethod.CLIENT_SECRET_BASIC
    # Who asked (a telemetry label for the token request); not part of the credential.
    connector_id: str = field(default="", compare=False)
    key: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        digest = hashlib.sha256()
        for part in (
            self.token_url,
            self.client_id,
            self.client_secret,
            " ".join(sorted(set(self.scopes))),
            self.audience,
            self.method.value,
        ):
            digest.update(part.encode())
            digest.update(b"\0")
        object.__setattr__(self, "key", digest.hexdigest())


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """What a token endpoint answered: the token and its lifetime in seconds (None if absent)."""

    value: str = field(repr=False)
    lifetime: float | None = None


FetchToken = Callable[[ClientCredentials, float], Awaitable[IssuedToken]]
"""Fetches a token within a time budget (seconds); raises TokenError when it cannot."""


@dataclass(slots=True)
class _Token:
    value: str = field(repr=False)
    refresh_at: float
    usable_until: float


@dataclass(slots=True)
class _Entry:
    """The state of one credential: its token, the fetch in flight, the last failure."""

    token: _Token | None = None
    fetch: asyncio.Task[_Token] | None = None
    failure: str = ""
    failures: int = 0
    hold_until: float = 0.0

    def holding(self, now: float) -> bool:
        return self.failures > 0 and now < self.hold_until


class TokenCache:
    """Tokens of every OAuth2 credential the sidecar uses, one fetch at a time per credential.

    Usage::

        tokens = TokenCache(TokenEndpoint(egress.send).fetch)
        token = await tokens.token(credentials, budget=2.0)
        ...                                    # the API answered 401 to `token`:
        tokens.rejected(credentials, token)    # the next `token` call fetches a new one

    `fetches` counts the fetches started (the benchmark reports it); `aclose` cancels any fetch
    still running at shutdown.
    """

    def __init__(
        self,
        fetch: FetchToken,
        *,
        clock: Clock = time.monotonic,
        jitter: Callable[[], float] = random.random,
        fetch_timeout: float = DEFAULT_FETCH_TIMEOUT,
    ) -> None:
        self._fetch = fetch
        self._clock = clock
        self._jitter = jitter
        self._fetch_timeout = fetch_timeout
        self._entries: dict[str, _Entry] = {}
        self._tasks: set[asyncio.Task[_Token]] = set()
        self.fetches = 0

    async def token(self, credentials: ClientCredentials, budget: float) -> str:
        """A usable token for `credentials`, waiting at most `budget` seconds for a fetch;
        TokenError when none can be had."""
        now = self._clock()
        entry = self._entry(credentials.key)
        current = entry.token
        if current is not None and now < current.usable_until:
            if now >= current.refresh_at and entry.fetch is None and not entry.holding(now):
                self._start_fetch(entry, credentials)  # ahead of expiry, in the background
            return current.value
        entry.token = None  # expired: never handed out again
        if entry.fetch is None:
            if entry.holding(now):
                raise TokenError(entry.failure)
            self._start_fetch(entry, credentials)
        fetch = entry.fetch
        assert fetch is not None
        try:
            async with asyncio.timeout(max(budget, 0.0)):
                fresh = await asyncio.shield(fetch)  # a waiter that gives up cancels nothing
        except TimeoutError:
            raise TokenError(
                f"no token from {credentials.token_url} within the call's {budget:g}s"
            ) from None
        except TokenError as error:  # one exception object per waiter, not one shared
            raise TokenError(error.message) from None
        return fresh.value

    def rejected(self, credentials: ClientCredentials, token: str) -> None:
        """The API refused `token` (401): forget it, unless a newer one already replaced it
        (many callers can be refused the same token; only the first drop counts)."""
        entry = self._entries.get(credentials.key)
        if entry is not None and entry.token is not None and entry.token.value == token:
            entry.token = None

    async def aclose(self) -> None:
        """Cancel the fetches still running (shutdown)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _entry(self, key: str) -> _Entry:
        entry = self._entries.get(key)
        if entry is None:
            if len(self._entries) >= _PRUNE_ABOVE:
                self._prune()
            entry = self._entries[key] = _Entry()
        return entry

    def _prune(self) -> None:
        """Forget credentials with nothing usable and nothing in flight (rotated secrets)."""
        now = self._clock()
        for key, entry in list(self._entries.items()):
            idle = entry.fetch is None and not entry.holding(now)
            if idle and (entry.token is None or now >= entry.token.usable_until):
                del self._entries[key]

    def _start_fetch(self, entry: _Entry, credentials: ClientCredentials) -> None:
        self.fetches += 1
        task = asyncio.create_task(self._fetch_into(entry, credentials))
        entry.fetch = task
        self._tasks.add(task)
        task.add_done_callback(_settled)
        task.add_done_callback(self._tasks.discard)

    async def _fetch_into(self, entry: _Entry, credentials: ClientCredentials) -> _Token:
        started = self._clock()
        try:
            issued = await self._fetch(credentials, self._fetch_timeout)
        except TokenError as error:
            entry.failures += 1
            entry.failure = error.message
            hold = min(FAILURE_HOLD_FIRST * 2 ** (entry.failures - 1), FAILURE_HOLD_MOST)
            entry.hold_until = self._clock() + hold
            raise
        finally:
            entry.fetch = None
        token = self._schedule(issued, started)
        entry.token, entry.failures, entry.failure = token, 0, ""
        return token

    def _schedule(self, issued: IssuedToken, started: float) -> _Token:
        lifetime = DEFAULT_LIFETIME if issued.lifetime is None else issued.lifetime
        lifetime = min(max(lifetime, MIN_LIFETIME), MAX_LIFETIME)
        usable_until = started + lifetime - min(EXPIRY_MARGIN, lifetime / 10)
        ahead = min(REFRESH_AHEAD, lifetime / 5) * (0.5 + 0.5 * self._jitter())
        return _Token(issued.value, usable_until - ahead, usable_until)


def _settled(task: asyncio.Task[_Token]) -> None:
    """Retrieve a background fetch's failure: it was recorded in the entry, and nobody may be
    waiting for it (asyncio would otherwise log 'exception was never retrieved')."""
    if not task.cancelled():
        task.exception()


def with_bearer(request: OutboundRequest, token: str) -> OutboundRequest:
    """The request carrying the token, as RFC 6750 section 2.1 sends it."""
    return replace(request, headers=(*request.headers, ("Authorization", f"Bearer {token}")))


async def send_with_token(
    send: Send,
    tokens: TokenCache,
    credentials: ClientCredentials,
    request: OutboundRequest,
    options: SendOptions,
    sent: list[str] | None = None,
) -> HttpResponse:
    """Send `request` with a token, within `options.timeout_seconds` in all (token included);
    after a 401, once more with a fresh token. The answer counts the attempts of both sends.
    Each token sent is appended to `sent`, so the answer's edge masks it if the API echoes it."""
    deadline = time.monotonic() + options.timeout_seconds
    sent = sent if sent is not None else []
    if options.cache is not None:  # cached by the credential, not by the token of the day
        options = replace(options, cache=replace(options.cache, credential=credentials.key))
    token = await tokens.token(credentials, options.timeout_seconds)
    sent.append(token)
    response = await send(with_bearer(request, token), _within(options, deadline, attempts=0))
    if response.status != 401:
        return response
    tokens.rejected(credentials, token)
    try:
        fresh = await tokens.token(credentials, deadline - time.monotonic())
    except TokenError as error:
        raise TokenError(
            f"the API refused the token (401) and no new one came: {error.message}",
            attempts=response.attempts,
        ) from None
    sent.append(fresh)
    options = _within(options, deadline, attempts=response.attempts)
    try:
        retried = await send(with_bearer(request, fresh), options)
    except SendError as error:
        error.attempts += response.attempts
        raise
    return replace(retried, attempts=response.attempts + retried.attempts)


def _within(options: SendOptions, deadline: float, *, attempts: int) -> SendOptions:
    """The options with what is left of the budget; TIMEOUT when nothing is."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise SendError(
            Reason.TIMEOUT, "the call's time went on obtaining a token", attempts=attempts
        )
    return options.with_timeout(remaining)
