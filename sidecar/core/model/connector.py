"""Connectors: what to call. Frozen once validated; a new registration is a new version.

These are the sidecar's own types; protobuf messages are translated to and from them in
``sidecar.api.wire`` only, and connectors files (YAML/JSON) use the same field names, so one set of
validation rules serves the API, the file and `rules-sidecar validate`.

    >>> Connector.model_validate({
    ...     "id": "order-status", "status": "LIVE",
    ...     "url_template": "https://api.store.com/orders/{{order_number}}",
    ...     "auth": {"api_key": {"name": "X-API-Key", "value_secret": "store_api_key"}},
    ... }).timeout
    datetime.timedelta(seconds=5)
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Annotated, Any, Self
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    JsonValue,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from sidecar.core.model.base import FrozenModel
from sidecar.core.placeholders import TemplateSyntaxError, has_placeholder, parse_template

DEFAULT_TIMEOUT = timedelta(seconds=5)
MAX_TIMEOUT = timedelta(seconds=30)
DEFAULT_MAX_RESPONSE_BYTES = 1024 * 1024
MAX_RESPONSE_BYTES_LIMIT = 16 * 1024 * 1024
MAX_CACHE_WINDOW = timedelta(days=1)
DEFAULT_CACHE_ENTRY_BYTES = 256 * 1024
# HTTP servers refuse header sections much over 8-16 KiB; two 2.5 MiB header templates broke
# ListConnectors' default page (issue 14).
MAX_HEADER_TEMPLATE_CHARS = 8 * 1024
MAX_HEADERS = 64

# Headers whose value is a credential: they must come from `auth` and a secret, never a literal.
CREDENTIAL_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "x-api-key",
        "api-key",
        "apikey",
        "x-auth-token",
        "x-access-token",
    }
)
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token


# ---------------------------------------------------------------------------------------------
# Connectors
# ---------------------------------------------------------------------------------------------


class ConnectorStatus(enum.StrEnum):
    """Only LIVE connectors run in production; DRAFT ones only in test mode."""

    DRAFT = "DRAFT"
    LIVE = "LIVE"
    DISABLED = "DISABLED"


class HttpMethod(enum.StrEnum):
    """Methods a connector may use."""

    GET = "GET"
    POST = "POST"
    PUT = "PUT"
    PATCH = "PATCH"
    DELETE = "DELETE"


class ConnectorSource(enum.StrEnum):
    """Where a definition came from: the API (stored) or the connectors file (read-only)."""

    API = "API"
    FILE = "FILE"


class ApiKeyLocation(enum.StrEnum):
    """Where an API key is sent."""

    HEADER = "HEADER"
    QUERY = "QUERY"


class ClientAuthMethod(enum.StrEnum):
    """How an OAuth2 client authenticates to its token endpoint (RFC 6749 section 2.3.1)."""

    CLIENT_SECRET_BASIC = "CLIENT_SECRET_BASIC"  # noqa: S105 (a method's name, not a secret)
    CLIENT_SECRET_POST = "CLIENT_SECRET_POST"  # noqa: S105


def _check_template(text: str) -> str:
    try:
        parse_template(text)
    except TemplateSyntaxError as exc:
        raise ValueError(str(exc)) from exc
    return text


def _check_header_name(name: str) -> str:
    if not _HEADER_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a valid header name (letters, digits and -_. etc.)")
    return name


def _check_plain_header_name(name: str) -> str:
    _check_header_name(name)
    if name.lower() in CREDENTIAL_HEADERS:
        raise ValueError(
            f"{name!r} carries a credential: do not put it in headers, reference a secret "
            "with auth (bearer, api_key or basic) instead"
        )
    return name


def _check_body_template(value: JsonValue) -> JsonValue:
    for text in iter_json_strings(value):
        _check_template(text)
    return value


def _check_query_name(name: str) -> str:
    if not name:
        raise ValueError("query parameter names must not be empty")
    if has_placeholder(name):
        raise ValueError("query parameter names are never templated; template the value instead")
    return name


def _check_header_value(text: str) -> str:
    if any((ord(c) < 0x20 and c != "\t") or ord(c) >= 0x7F for c in text):
        raise ValueError(
            "header values must be printable ASCII: no control characters (CR, LF, NUL ...) "
            "and no non-ASCII text (HTTP/1.1 clients refuse it)"
        )
    return _check_template(text)


def _parse_duration(value: Any) -> Any:
    """Accept seconds as a number (`5`, `2.5`), "5s", "500ms", ISO 8601 ("PT5S"), timedelta."""
    if isinstance(value, bool):
        raise ValueError(_DURATION_HINT)
    if isinstance(value, str) and not value.strip().upper().startswith("P"):  # "PT5S": ISO 8601
        match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s)\s*", value)
        if match is None:
            raise ValueError(_DURATION_HINT)
        amount = float(match.group(1))
        unit = "milliseconds" if match.group(2) == "ms" else "seconds"
        return timedelta(**{unit: amount})
    return value


_DURATION_HINT = "must be a duration such as 5s, 2.5s or 500ms (or a number of seconds)"


def _pattern_check(pattern: str, message: str) -> Callable[[str], str]:
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(message)
        return value

    return check


def _check_timeout(value: timedelta) -> timedelta:
    if value <= timedelta(0) or value > MAX_TIMEOUT:
        raise ValueError("timeout must be more than 0 and at most 30s")
    return value


def _check_url_template(template: str) -> str:
    """Refuse URL templates whose scheme, host or port could change with a variable's value."""
    _check_template(template)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in template):
        raise ValueError("control characters (TAB, CR, LF, NUL ...) are not allowed in a URL")
    try:
        scheme, netloc = urlsplit(template)[:2]
    except ValueError as exc:
        raise ValueError(f"not a valid URL ({exc})") from exc
    if has_placeholder(scheme) or has_placeholder(netloc):
        raise ValueError(
            "placeholders are not allowed in the scheme, host or port; "
            "put them in the path, the query values, the headers or the body"
        )
    try:
        parts = urlsplit(template)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not a valid URL ({exc})") from exc
    if parts.scheme not in ("http", "https"):
        raise ValueError(
            "must be an absolute http(s) URL, e.g. https://api.example.com/orders/{{id}}"
        )
    if has_placeholder(parts.scheme) or has_placeholder(parts.netloc):
        raise ValueError(
            "placeholders are not allowed in the scheme, host or port; "
            "put them in the path, the query values, the headers or the body"
        )
    if not parts.hostname:
        raise ValueError("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("credentials in the URL are not allowed; use auth and a secret")
    if has_placeholder(parts.query):
        raise ValueError("put templated query parameters in `query`, not in the URL")
    if parts.fragment:
        raise ValueError("fragments (#...) are not sent to servers; remove it")
    del port  # parsed only to validate it
    return template


def _check_token_url(url: str) -> str:
    """A fixed absolute http(s) URL: the token endpoint is never templated."""
    if has_placeholder(url):
        raise ValueError("the token URL is fixed: placeholders are not allowed in it")
    _check_url_template(url)
    return url


def _check_scope(scope: str) -> str:
    # RFC 6749 section 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
    if not scope or any(not (0x21 <= ord(c) <= 0x7E) or c in '"\\' for c in scope):
        raise ValueError(
            f"{scope[:40]!r} is not a scope: printable ASCII without spaces, quotes or "
            "backslashes (list several scopes as several entries)"
        )
    return scope


def _check_audience(audience: str) -> str:
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in audience):
        raise ValueError("control characters (TAB, CR, LF, NUL ...) are not allowed")
    return audience


CONNECTOR_ID_PATTERN = r"[a-z0-9][a-z0-9_-]{0,63}"
ConnectorId = Annotated[
    str,
    AfterValidator(
        _pattern_check(
            CONNECTOR_ID_PATTERN,
            "must be a slug of 1-64 characters (a-z, 0-9, '-', '_') starting with a letter or "
            "digit",
        )
    ),
]
SecretName = Annotated[
    str,
    AfterValidator(
        _pattern_check(
            r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}",
            "must be a secret name of 1-128 characters (letters, digits, '_', '.', '-') starting "
            "with a letter or digit; it names a secret, it is not the secret's value",
        )
    ),
]
HostPattern = Annotated[
    str,
    AfterValidator(
        _pattern_check(
            r"(\*\.)?[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
            r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*",
            "must be a host name such as api.example.com or *.example.com (no scheme, port or "
            "path)",
        )
    ),
]


def _check_cache_ttl(value: timedelta) -> timedelta:
    if value <= timedelta(0) or value > MAX_CACHE_WINDOW:
        raise ValueError("must be more than 0 and at most 1 day (86400s)")
    return value


def _check_cache_window(value: timedelta) -> timedelta:
    if value < timedelta(0) or value > MAX_CACHE_WINDOW:
        raise ValueError("must be at least 0 and at most 1 day (86400s)")
    return value


PlainHeaderName = Annotated[str, AfterValidator(_check_plain_header_name)]
QueryName = Annotated[str, AfterValidator(_check_query_name)]
HeaderTemplate = Annotated[
    str,
    StringConstraints(max_length=MAX_HEADER_TEMPLATE_CHARS),
    AfterValidator(_check_header_value),
]
ValueTemplate = Annotated[str, AfterValidator(_check_template)]
Timeout = Annotated[timedelta, BeforeValidator(_parse_duration), AfterValidator(_check_timeout)]
CacheTtl = Annotated[timedelta, BeforeValidator(_parse_duration), AfterValidator(_check_cache_ttl)]
CacheWindow = Annotated[
    timedelta, BeforeValidator(_parse_duration), AfterValidator(_check_cache_window)
]


class BearerAuth(FrozenModel):
    """`Authorization: Bearer <token>`, token from a secret."""

    token_secret: SecretName


class ApiKeyAuth(FrozenModel):
    """An API key in a header (default) or query parameter, value from a secret."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    location: ApiKeyLocation = ApiKeyLocation.HEADER
    value_secret: SecretName

    @model_validator(mode="after")
    def _name_fits_location(self) -> Self:
        if self.location is ApiKeyLocation.HEADER:
            _check_header_name(self.name)
        return self


class BasicAuth(FrozenModel):
    """HTTP basic authentication, username and password from secrets."""

    username_secret: SecretName
    password_secret: SecretName


class OAuth2ClientCredentialsAuth(FrozenModel):
    """A bearer token obtained with the OAuth2 client credentials grant (RFC 6749 section 4.4).

    The client id and secret go to the token endpoint only, so both must be bound to the token
    URL's host; the API receives the token. `sidecar.core.oauth` caches and refreshes it.

        >>> OAuth2ClientCredentialsAuth.model_validate({
        ...     "token_url": "https://login.crm.example/oauth2/token",
        ...     "client_id_secret": "crm_client_id", "client_secret_secret": "crm_client_secret",
        ...     "scopes": ["contacts.read"]}).client_auth_method
        <ClientAuthMethod.CLIENT_SECRET_BASIC: 'CLIENT_SECRET_BASIC'>
    """

    token_url: Annotated[
        str, StringConstraints(min_length=1, max_length=2048), AfterValidator(_check_token_url)
    ]
    client_id_secret: SecretName
    client_secret_secret: SecretName
    scopes: Annotated[
        tuple[Annotated[str, StringConstraints(max_length=256), AfterValidator(_check_scope)], ...],
        Field(max_length=64),
    ] = ()
    audience: Annotated[str, StringConstraints(max_length=512), AfterValidator(_check_audience)] = (
        ""
    )
    client_auth_method: ClientAuthMethod = ClientAuthMethod.CLIENT_SECRET_BASIC

    @property
    def token_host(self) -> str:
        """The host the client id and secret are sent to."""
        return urlsplit(self.token_url).hostname or ""


class Auth(FrozenModel):
    """Exactly one authentication scheme (mirrors the proto oneof)."""

    bearer: BearerAuth | None = None
    api_key: ApiKeyAuth | None = None
    basic: BasicAuth | None = None
    oauth2_client_credentials: OAuth2ClientCredentialsAuth | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        schemes = (self.bearer, self.api_key, self.basic, self.oauth2_client_credentials)
        if sum(scheme is not None for scheme in schemes) != 1:
            raise ValueError("set exactly one of bearer, api_key, basic, oauth2_client_credentials")
        return self

    def secret_names(self) -> tuple[str, ...]:
        """Every secret this auth refers to."""
        return tuple(name for _, names in self.secret_destinations("") for name in names)

    def secret_destinations(self, url_host: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """Which secrets go to which host: all to the API's `url_host`, except OAuth2 client
        credentials, which go to the token endpoint's host only."""
        if self.bearer:
            return ((url_host, (self.bearer.token_secret,)),)
        if self.api_key:
            return ((url_host, (self.api_key.value_secret,)),)
        if self.basic:
            return ((url_host, (self.basic.username_secret, self.basic.password_secret)),)
        oauth = self.oauth2_client_credentials
        assert oauth is not None
        return ((oauth.token_host, (oauth.client_id_secret, oauth.client_secret_secret)),)


class CachePolicy(FrozenModel):
    """How long this connector's answers may be reused (opt-in; see `sidecar.egress.cache`).

    `ttl` is how long an answer is fresh; after it, for `stale_while_revalidate` the stale answer
    is given at once while one refresh runs, and for `stale_if_error` it stands in when the
    refresh fails (timeout, 5xx, breaker open). The upstream's Cache-Control (no-store, no-cache,
    private, max-age, s-maxage) is honoured unless `ignore_cache_control`. Only lookups are
    cached: GET, or a POST whose connector declares `idempotent_lookup` (a search that reads).

    >>> CachePolicy.model_validate({"ttl": "60s", "stale_if_error": "300s"}).stale_if_error
    datetime.timedelta(seconds=300)
    """

    ttl: CacheTtl
    stale_while_revalidate: CacheWindow = timedelta(0)
    stale_if_error: CacheWindow = timedelta(0)
    max_entry_bytes: Annotated[int, Field(ge=1, le=MAX_RESPONSE_BYTES_LIMIT)] = (
        DEFAULT_CACHE_ENTRY_BYTES
    )
    ignore_cache_control: bool = False
    idempotent_lookup: bool = False


class Connector(FrozenModel):
    """A named, versioned definition of one business API call.

    Registering the same id again creates a new version; a validated Connector never changes.
    """

    id: ConnectorId
    display_name: Annotated[str, StringConstraints(max_length=200)] = ""
    status: ConnectorStatus
    method: HttpMethod = HttpMethod.GET
    url_template: Annotated[
        str, StringConstraints(min_length=1, max_length=2048), AfterValidator(_check_url_template)
    ]
    headers: dict[PlainHeaderName, HeaderTemplate] = Field(
        default_factory=dict, max_length=MAX_HEADERS
    )
    query: dict[QueryName, ValueTemplate] = Field(default_factory=dict)
    body_template: Annotated[JsonValue, AfterValidator(_check_body_template)] = None
    auth: Auth | None = None
    timeout: Timeout = DEFAULT_TIMEOUT
    max_response_bytes: Annotated[int, Field(ge=1, le=MAX_RESPONSE_BYTES_LIMIT)] = (
        DEFAULT_MAX_RESPONSE_BYTES
    )
    allowed_hosts: Annotated[tuple[HostPattern, ...], Field(max_length=32)] = ()
    follow_redirects: bool = False
    idempotency_key_header: str = ""
    disable_trace_propagation: bool = False
    cache: CachePolicy | None = None
    # Output-only fields, set by the registry.
    version: Annotated[int, Field(ge=0)] = 0
    update_time: datetime | None = None
    source: ConnectorSource = ConnectorSource.API

    @model_validator(mode="after")
    def _idempotency_header_is_sent(self) -> Self:
        wanted = self.idempotency_key_header.lower()
        if wanted and wanted not in {name.lower() for name in self.headers}:
            raise ValueError(
                f"idempotency_key_header {self.idempotency_key_header!r} must name one of "
                "`headers` (e.g. Idempotency-Key: '{{conversation_id}}')"
            )
        return self

    @field_validator("cache")
    @classmethod
    def _cache_only_for_lookups(
        cls, cache: CachePolicy | None, info: ValidationInfo
    ) -> CachePolicy | None:
        """A cached POST would answer a second order from the first one's response."""
        method = info.data.get("method", HttpMethod.GET)
        if cache is None or method is HttpMethod.GET:
            return cache
        if method is HttpMethod.POST and cache.idempotent_lookup:
            return cache
        hint = (
            "; a POST that only reads (a search) may set cache.idempotent_lookup: true"
            if method is HttpMethod.POST
            else ""
        )
        raise ValueError(f"only lookups are cached: GET, not {method.value}{hint}")

    def secret_names(self) -> tuple[str, ...]:
        """Every secret this connector refers to."""
        return self.auth.secret_names() if self.auth else ()

    def secret_destinations(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """(host, secret names) for every host this connector sends secrets to."""
        if self.auth is None:
            return ()
        return self.auth.secret_destinations(urlsplit(self.url_template).hostname or "")


def iter_json_strings(value: JsonValue) -> Iterator[str]:
    """Every string in a JSON tree (object keys excluded)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from iter_json_strings(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from iter_json_strings(item)
