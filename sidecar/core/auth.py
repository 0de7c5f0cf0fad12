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
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import replace
from urllib.parse import quote

from sidecar.core.model import ApiKeyLocation, Connector, RenderedRequest
from sidecar.core.model.exchange import OutboundRequest
from sidecar.core.model.failures import MissingSecretError

MASK = "***"

SecretResolver = Callable[[str], str | None]
"""Looks a secret's value up by name; None when it has none (the secret store's `resolve`)."""


def authorise(
    connector: Connector, request: OutboundRequest, resolve: SecretResolver
) -> OutboundRequest:
    """The request with the connector's credential added, or MissingSecretError naming it."""
    auth = connector.auth
    if auth is None:
        return request

    def secret(name: str) -> str:
        value = resolve(name)
        if value is None:
            raise MissingSecretError(name, connector.id)
        return value

    if auth.bearer is not None:
        header = ("Authorization", f"Bearer {secret(auth.bearer.token_secret)}")
        return replace(request, headers=(*request.headers, header))
    if auth.basic is not None:
        username = secret(auth.basic.username_secret)
        pair = f"{username}:{secret(auth.basic.password_secret)}"
        header = ("Authorization", "Basic " + base64.b64encode(pair.encode()).decode())
        return replace(request, headers=(*request.headers, header))
    assert auth.api_key is not None
    key = secret(auth.api_key.value_secret)
    if auth.api_key.location is ApiKeyLocation.QUERY:
        url = with_query(request.url, auth.api_key.name, quote(key, safe=""))
        return replace(request, url=url)
    return replace(request, headers=(*request.headers, (auth.api_key.name, key)))


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
