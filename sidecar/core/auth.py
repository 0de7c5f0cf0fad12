"""A connector's auth on its outbound request: applied from secret values, shown masked.

The renderer never sees credentials (`sidecar.core.templating`): the engine renders the request
first, then `authorise` adds the bearer, basic or API-key credential from the secret values, so
`masked_request` can show explanations the same request with each credential replaced by MASK.

    auth       sent as                                     shown as
    bearer     Authorization: Bearer <token>               Authorization: Bearer ***
    basic      Authorization: Basic base64(<user>:<pass>)  Authorization: Basic ***
    api key    <name>: <key>        (location HEADER)      <name>: ***
               ?<name>=<key>, appended (location QUERY)    ?<name>=***
    oauth2     Authorization: Bearer <token>               Authorization: Bearer ***
               (the token from `sidecar.core.oauth`, added when the request is sent; the
               client id and secret, `client_credentials`, go to the token endpoint only)

Which hosts a secret may reach is `sidecar.core.secrets.SecretBindings`' question;
`binding_refusals` asks it for every host a connector sends secrets to.

An upstream may echo a credential back (a debug endpoint, an error page quoting the request):
`authorise` records every form of each secret it puts on the request, and `mask_secrets` replaces
them by MASK in whatever the sidecar answers with (`sidecar.core.oauth.send_with_token` records
the OAuth2 tokens it sends the same way). Values shorter than MIN_MASKED_SECRET_CHARS
are not masked: masking "1" or "ab" everywhere would garble answers and say which text is secret.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Callable, Collection
from dataclasses import replace
from itertools import islice
from typing import Any, TypeVar
from urllib.parse import quote

from sidecar.core.model import ApiKeyLocation, Connector, RenderedRequest
from sidecar.core.model.exchange import OutboundRequest
from sidecar.core.model.failures import MissingSecretError
from sidecar.core.oauth import ClientCredentials
from sidecar.core.secrets import SecretBindings

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
    appended to `sent`, for `mask_secrets`. OAuth2 client credentials add nothing here: the token
    comes at send time (`sidecar.core.oauth.send_with_token`, given `client_credentials`).
    """
    auth = connector.auth
    if auth is None or auth.oauth2_client_credentials is not None:
        return request
    forms = sent if sent is not None else []

    def secret(name: str) -> str:
        value = resolve(name)
        if value is None:
            raise MissingSecretError(name, connector.id)
        forms.append(value)
        return value

    # The request is built anew rather than by dataclasses.replace: this runs on every call.
    method, url, headers, body = request.method, request.url, request.headers, request.body
    if auth.bearer is not None:
        header = ("Authorization", f"Bearer {secret(auth.bearer.token_secret)}")
        return OutboundRequest(method, url, (*headers, header), body)
    if auth.basic is not None:
        username = secret(auth.basic.username_secret)
        pair = f"{username}:{secret(auth.basic.password_secret)}"
        encoded = base64.b64encode(pair.encode()).decode()
        forms.append(encoded)
        header = ("Authorization", f"Basic {encoded}")
        return OutboundRequest(method, url, (*headers, header), body)
    assert auth.api_key is not None
    key = secret(auth.api_key.value_secret)
    if auth.api_key.location is ApiKeyLocation.QUERY:
        forms.append(quote(key, safe=""))
        url = with_query(url, auth.api_key.name, quote(key, safe=""))
        return OutboundRequest(method, url, headers, body)
    return OutboundRequest(method, url, (*headers, (auth.api_key.name, key)), body)


def mask_secrets(value: T, secrets: Collection[str]) -> T:
    """`value` with every occurrence of a secret in its text replaced by MASK.

    Walks strings inside dataclasses, dicts (keys too), lists and tuples; enums and other objects
    are left as they are (they hold nothing an upstream sent).

    >>> mask_secrets({"echo": "Bearer s3cr3t-token", "n": 1}, ["s3cr3t-token"])
    {'echo': 'Bearer ***', 'n': 1}
    >>> mask_secrets(["abc"], ["abc"])  # too short to mask
    ['abc']
    >>> answer = {"status": ["shipped"]}
    >>> mask_secrets(answer, ["s3cr3t-token"]) is answer  # nothing echoed: nothing copied
    True
    """
    maskable = maskable_secrets(secrets)
    if not maskable:
        return value
    masked: T = _masked(value, maskable)
    return masked


def maskable_secrets(secrets: Collection[str]) -> list[str]:
    """The secrets `mask_secrets` replaces: those of MIN_MASKED_SECRET_CHARS or more, the
    longest first (a secret containing another is masked whole).

    >>> maskable_secrets(["abc", "s3cr3t", "s3cr3t-token"])
    ['s3cr3t-token', 's3cr3t']
    """
    if len(secrets) == 1:  # one credential on the request: every call with auth
        (secret,) = secrets
        return [secret] if len(secret) >= MIN_MASKED_SECRET_CHARS else []
    return sorted(
        {secret for secret in secrets if len(secret) >= MIN_MASKED_SECRET_CHARS},
        key=len,
        reverse=True,
    )


def _masked(value: Any, secrets: list[str]) -> Any:
    """`value` masked; the very same object where no secret occurs, so an answer that echoes
    nothing (nearly every one) is not copied on the EvaluateNode path.

    Every answer with a credential on its request is walked, so the walk allocates nothing
    until it finds a secret, a type's fields are looked up once (`_maskable_fields`), and a
    value of a type that holds no text (`_AS_IS`) is not even visited.
    """
    kind = type(value)
    if kind is str:
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, MASK)
        return value
    if kind in _AS_IS:
        return value
    as_is = _AS_IS
    if isinstance(value, dict):
        copy: dict[Any, Any] | None = None
        for position, (key, item) in enumerate(value.items()):
            new_key = key if type(key) in as_is else _masked(key, secrets)
            new_item = item if type(item) in as_is else _masked(item, secrets)
            if copy is None and (new_key is not key or new_item is not item):
                copy = dict(islice(value.items(), position))  # what came before, unchanged
            if copy is not None:
                copy[new_key] = new_item
        return value if copy is None else copy
    if isinstance(value, list | tuple):
        items: list[Any] | None = None
        for position, item in enumerate(value):
            new = item if type(item) in as_is else _masked(item, secrets)
            if items is None and new is not item:
                items = list(value[:position])
            if items is not None:
                items.append(new)
        if items is None:
            return value
        return items if isinstance(value, list) else tuple(items)
    names = _maskable_fields(kind)
    if not names:  # neither text, a container nor a dataclass: enums and other objects
        as_is.add(kind)
        return value
    changes = {}
    for name in names:
        old = getattr(value, name)
        if type(old) in as_is:
            continue
        new = _masked(old, secrets)
        if new is not old:
            changes[name] = new
    return replace(value, **changes) if changes else value


# Types whose values `_masked` returns as they are: numbers, None, bytes, and every type met
# that is neither text, a container nor a dataclass (enums: they hold nothing an upstream sent).
_AS_IS: set[type] = {int, float, bool, type(None), bytes}
_FIELDS: dict[type, tuple[str, ...]] = {}


def _maskable_fields(kind: type) -> tuple[str, ...]:
    """The fields `_masked` walks in a dataclass type (none for other types), found once per
    type. Fields kept out of repr (the secret values themselves) stay as they are."""
    names = _FIELDS.get(kind)
    if names is None:
        names = ()
        if dataclasses.is_dataclass(kind):
            names = tuple(spec.name for spec in dataclasses.fields(kind) if spec.repr)
        _FIELDS[kind] = names
    return names


def masked_request(connector: Connector, request: OutboundRequest) -> RenderedRequest:
    """The request as explanations show it: auth present but masked, never a secret value."""
    headers = dict(request.headers)
    url = request.url
    auth = connector.auth
    if auth is not None and (auth.bearer is not None or auth.oauth2_client_credentials is not None):
        headers["Authorization"] = f"Bearer {MASK}"
    elif auth is not None and auth.basic is not None:
        headers["Authorization"] = f"Basic {MASK}"
    elif auth is not None and auth.api_key is not None:
        if auth.api_key.location is ApiKeyLocation.QUERY:
            url = with_query(url, auth.api_key.name, MASK)
        else:
            headers[auth.api_key.name] = MASK
    body = request.body.decode("utf-8", errors="replace") if request.body else ""
    return RenderedRequest(request.method, url, headers, body)


def client_credentials(connector: Connector, resolve: SecretResolver) -> ClientCredentials | None:
    """The connector's OAuth2 client with its secrets resolved (None for other auth), or
    MissingSecretError naming the secret that has no value."""
    oauth = connector.auth.oauth2_client_credentials if connector.auth else None
    if oauth is None:
        return None
    values = []
    for name in (oauth.client_id_secret, oauth.client_secret_secret):
        value = resolve(name)
        if value is None:
            raise MissingSecretError(name, connector.id)
        values.append(value)
    return ClientCredentials(
        oauth.token_url,
        values[0],
        values[1],
        oauth.scopes,
        oauth.audience,
        oauth.client_auth_method,
        connector_id=connector.id,
    )


def binding_refusals(connector: Connector, bindings: SecretBindings) -> list[str]:
    """One message per secret the connector would send to a host its binding does not allow:
    the API's host for most auth, the token endpoint's host for OAuth2 client credentials."""
    return [
        problem
        for host, names in connector.secret_destinations()
        for problem in bindings.violations(names, host)
    ]


def with_query(url: str, name: str, encoded_value: str) -> str:
    """Append one query parameter after any the URL has; the name is encoded here, the value not.

    >>> with_query("https://api.store.com/orders?page=2", "api key", "k%2F1")
    'https://api.store.com/orders?page=2&api%20key=k%2F1'
    """
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}{quote(name, safe='')}={encoded_value}"
