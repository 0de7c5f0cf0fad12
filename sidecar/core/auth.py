"""A connector's auth on its outbound request: applied from secret values, shown masked.

The renderer never sees credentials (`sidecar.core.templating`): the engine renders the request
first, then `authorise` adds the bearer, basic or API-key credential from the secret values, so
`masked_request` can show explanations the same request with each credential replaced by MASK.

    auth       sent as                                     shown as
    bearer     Authorization: Bearer <token>               Authorization: Bearer ***
    basic      Authorization: Basic base64(<user>:<pass>)  Authorization: Basic ***
    api key    <name>: <key>        (location HEADER)      <name>: ***
               ?<name>=<key>, appended (location QUERY)    ?<name>=***

Which hosts a secret may reach is `sidecar.core.secrets.SecretBindings`' question, not this one's.

An upstream may echo a credential back (a debug endpoint, an error page quoting the request):
`authorise` records every form of each secret it puts on the request, and `mask_secrets` replaces
them by MASK in whatever the sidecar answers with. Values shorter than MIN_MASKED_SECRET_CHARS
are not masked: masking "1" or "ab" everywhere would garble answers and say which text is secret.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Callable, Collection
from dataclasses import replace
from typing import Any, TypeVar
from urllib.parse import quote

from sidecar.core.model import ApiKeyLocation, Connector, RenderedRequest
from sidecar.core.model.exchange import OutboundRequest
from sidecar.core.model.failures import MissingSecretError

MASK = "***"
MIN_MASKED_SECRET_CHARS = 6
T = TypeVar("T")

SecretResolver = Callable[[str], str | None]
"""Looks a secret's value up by name; None when it has none (the secret store's `resolve`)."""


def authorise(
    connector: Connector,
    request: OutboundRequest,
    resolve: SecretResolver,
    sent: list[str] | None = None,
) -> OutboundRequest:
    """The request with the connector's credential added, or MissingSecretError naming it.

    Every form of a secret placed on the request (the value, its base64 or URL encoding) is
    appended to `sent`, for `mask_secrets`.
    """
    auth = connector.auth
    if auth is None:
        return request
    forms = sent if sent is not None else []

    def secret(name: str) -> str:
        value = resolve(name)
        if value is None:
            raise MissingSecretError(name, connector.id)
        forms.append(value)
        return value

    if auth.bearer is not None:
        header = ("Authorization", f"Bearer {secret(auth.bearer.token_secret)}")
        return replace(request, headers=(*request.headers, header))
    if auth.basic is not None:
        username = secret(auth.basic.username_secret)
        pair = f"{username}:{secret(auth.basic.password_secret)}"
        encoded = base64.b64encode(pair.encode()).decode()
        forms.append(encoded)
        return replace(request, headers=(*request.headers, ("Authorization", f"Basic {encoded}")))
    assert auth.api_key is not None
    key = secret(auth.api_key.value_secret)
    if auth.api_key.location is ApiKeyLocation.QUERY:
        forms.append(quote(key, safe=""))
        url = with_query(request.url, auth.api_key.name, quote(key, safe=""))
        return replace(request, url=url)
    return replace(request, headers=(*request.headers, (auth.api_key.name, key)))


def mask_secrets(value: T, secrets: Collection[str]) -> T:
    """`value` with every occurrence of a secret in its text replaced by MASK.

    Walks strings inside dataclasses, dicts (keys too), lists and tuples; enums and other objects
    are left as they are (they hold nothing an upstream sent).

    >>> mask_secrets({"echo": "Bearer s3cr3t-token", "n": 1}, ["s3cr3t-token"])
    {'echo': 'Bearer ***', 'n': 1}
    >>> mask_secrets(["abc"], ["abc"])  # too short to mask
    ['abc']
    """
    maskable = sorted(
        {secret for secret in secrets if len(secret) >= MIN_MASKED_SECRET_CHARS},
        key=len,
        reverse=True,  # the longest first: a secret containing another is masked whole
    )
    if not maskable:
        return value
    masked: T = _masked(value, maskable)
    return masked


def _masked(value: Any, secrets: list[str]) -> Any:
    if type(value) is str:
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, MASK)
        return value
    if isinstance(value, dict):
        return {_masked(key, secrets): _masked(item, secrets) for key, item in value.items()}
    if isinstance(value, list):
        return [_masked(item, secrets) for item in value]
    if isinstance(value, tuple):
        return tuple(_masked(item, secrets) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {
            spec.name: _masked(getattr(value, spec.name), secrets)
            for spec in dataclasses.fields(value)
            if spec.repr  # fields kept out of repr (the secret values themselves) stay as they are
        }
        return replace(value, **changes)
    return value


def masked_request(connector: Connector, request: OutboundRequest) -> RenderedRequest:
    """The request as explanations show it: auth present but masked, never a secret value."""
    headers = dict(request.headers)
    url = request.url
    auth = connector.auth
    if auth is not None and (auth.bearer is not None or auth.basic is not None):
        headers["Authorization"] = f"{'Bearer' if auth.bearer else 'Basic'} {MASK}"
    elif auth is not None and auth.api_key is not None:
        if auth.api_key.location is ApiKeyLocation.QUERY:
            url = with_query(url, auth.api_key.name, MASK)
        else:
            headers[auth.api_key.name] = MASK
    body = request.body.decode("utf-8", errors="replace") if request.body else ""
    return RenderedRequest(request.method, url, headers, body)


def with_query(url: str, name: str, encoded_value: str) -> str:
    """Append one query parameter after any the URL has; the name is encoded here, the value not.

    >>> with_query("https://api.store.com/orders?page=2", "api key", "k%2F1")
    'https://api.store.com/orders?page=2&api%20key=k%2F1'
    """
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}{quote(name, safe='')}={encoded_value}"
