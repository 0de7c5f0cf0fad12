"""The OAuth2 token request (client credentials grant), sent through the egress like any call.

`TokenEndpoint.fetch` is the `fetch` of `sidecar.core.oauth.TokenCache`: it posts
`grant_type=client_credentials` (RFC 6749 section 4.4) to the token URL through `Egress.send`, so
the request passes the same guard (scheme, host, resolved addresses), breaker, limits and time
budget as any upstream call, reaches the token URL's host only (no redirects) and is observed as a
CLIENT span of its own. The client authenticates with HTTP basic (the default,
`client_secret_basic`, id and secret form-encoded first as section 2.3.1 asks) or in the form body
(`client_secret_post`).

Every failure becomes a TokenError whose message names the endpoint and what went wrong: the
egress's reason, the HTTP status and the OAuth2 `error` code (section 5.2), never the body, the
client secret or a token.
"""

from __future__ import annotations

import base64
import json
import re
from urllib.parse import quote_plus, urlencode, urlsplit

from sidecar.core.model import ClientAuthMethod
from sidecar.core.model.exchange import OutboundRequest, Send, SendError, SendOptions
from sidecar.core.model.failures import TokenError
from sidecar.core.oauth import ClientCredentials, IssuedToken

MAX_TOKEN_RESPONSE_BYTES = 64 * 1024
MAX_TOKEN_CHARS = 8192
_ERROR_CODE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_TOKEN = re.compile(r"[\x21-\x7e]+")  # visible ASCII: it goes into a header


class TokenEndpoint:
    """Fetches client credentials tokens through the egress's `send`.

    Usage::

        tokens = TokenCache(TokenEndpoint(egress.send).fetch)
    """

    def __init__(self, send: Send) -> None:
        self._send = send

    async def fetch(self, credentials: ClientCredentials, budget: float) -> IssuedToken:
        """One token request within `budget` seconds; TokenError when no usable token came."""
        endpoint = credentials.token_url
        options = SendOptions(
            timeout_seconds=budget,
            max_response_bytes=MAX_TOKEN_RESPONSE_BYTES,
            allowed_hosts=(urlsplit(endpoint).hostname or "",),
            follow_redirects=False,
            retry_on_status=True,  # the grant has no side effect: asking again is safe
            credential_headers=frozenset({"authorization"}),
            connector_id=credentials.connector_id,
            url_template=endpoint,
            propagate_trace=False,  # the identity provider is a third party
        )
        try:
            response = await self._send(token_request(credentials), options)
        except SendError as error:
            raise TokenError(
                f"the token endpoint {endpoint} failed ({error.reason.value}): {error.message}"
            ) from None
        code = _error_code(response.body)
        if response.status != 200:
            detail = f" ({code})" if code else ""
            raise TokenError(f"the token endpoint {endpoint} answered {response.status}{detail}")
        return _issued(response.body, endpoint)


def token_request(credentials: ClientCredentials) -> OutboundRequest:
    """The POST of the client credentials grant, the client authenticated as its method says."""
    form = [("grant_type", "client_credentials")]
    if credentials.scopes:
        form.append(("scope", " ".join(credentials.scopes)))
    if credentials.audience:
        form.append(("audience", credentials.audience))
    headers = [
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("Accept", "application/json"),
    ]
    if credentials.method is ClientAuthMethod.CLIENT_SECRET_POST:
        form += [("client_id", credentials.client_id), ("client_secret", credentials.client_secret)]
    else:
        pair = f"{quote_plus(credentials.client_id)}:{quote_plus(credentials.client_secret)}"
        headers.append(("Authorization", "Basic " + base64.b64encode(pair.encode()).decode()))
    return OutboundRequest("POST", credentials.token_url, tuple(headers), urlencode(form).encode())


def _issued(body: bytes, endpoint: str) -> IssuedToken:
    """The token of a successful answer (RFC 6749 section 5.1), or TokenError saying what is
    wrong with it (never quoting it)."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise TokenError(f"the token endpoint {endpoint} answered 200 without JSON") from None
    if not isinstance(document, dict):
        raise TokenError(f"the token endpoint {endpoint} answered 200 without a JSON object")
    token = document.get("access_token")
    if not isinstance(token, str) or not token:
        raise TokenError(f"the token endpoint {endpoint} answered 200 without an access_token")
    if len(token) > MAX_TOKEN_CHARS or not _TOKEN.fullmatch(token):
        raise TokenError(
            f"the token endpoint {endpoint} answered an access_token that cannot be sent in a "
            f"header (visible ASCII, at most {MAX_TOKEN_CHARS} characters)"
        )
    token_type = document.get("token_type", "Bearer")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        shown = token_type if isinstance(token_type, str) else type(token_type).__name__
        raise TokenError(
            f"the token endpoint {endpoint} answered token_type {shown[:32]!r}; only Bearer "
            "tokens are supported"
        )
    return IssuedToken(token, _lifetime(document.get("expires_in")))


def _lifetime(expires_in: object) -> float | None:
    """Seconds from `expires_in`; some endpoints send a string ("3599"); None when unusable.

    >>> _lifetime(3599), _lifetime("3599"), _lifetime("soon"), _lifetime(True), _lifetime(-5)
    (3599.0, 3599.0, None, None, None)
    """
    if isinstance(expires_in, bool):
        return None
    if isinstance(expires_in, str):
        try:
            expires_in = float(expires_in)
        except ValueError:
            return None
    if isinstance(expires_in, int | float) and 0 < expires_in < float("inf"):
        return float(expires_in)
    return None


def _error_code(body: bytes) -> str:
    """The OAuth2 `error` code of an error answer, when it is one (section 5.2); else ""."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return ""
    code = document.get("error") if isinstance(document, dict) else None
    return code if isinstance(code, str) and _ERROR_CODE.fullmatch(code) else ""
