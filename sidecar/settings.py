"""Settings: every knob of the sidecar, in one place, documented.

Sources, strongest first: explicit overrides (CLI flags, tests), environment variables prefixed
`RULES_SIDECAR_` (nested fields with `__`, e.g. `RULES_SIDECAR_LISTEN_ADDRESS`), an optional YAML
config file (`--config` or `RULES_SIDECAR_CONFIG_FILE`), then the defaults below. The defaults are
the "embedded" setup: loopback only, a SQLite store under `.rules-sidecar/`.

    >>> Settings.load(overrides={"listen_address": "127.0.0.1:0"}).listen_address
    '127.0.0.1:0'
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    YamlConfigSettingsSource,
)

from sidecar.errors import ConfigError

ENV_PREFIX = "RULES_SIDECAR_"
CONFIG_FILE_VARIABLE = f"{ENV_PREFIX}CONFIG_FILE"
# The PostgreSQL password, when no store_password_file is given. Not a setting (settings are
# shown in errors and logs) and not under secret_env_prefix (that would make it a connector secret).
STORE_PASSWORD_VARIABLE = f"{ENV_PREFIX}STORE_PASSWORD"
# Settings whose given value is never repeated in an error message.
_NEVER_ECHOED = frozenset({"store_url"})


class Settings(BaseSettings):
    """Operator configuration. Built once, by `Settings.load`, in the composition root."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    listen_address: str = Field(
        "127.0.0.1:50051",
        description="host:port of the API (the six RPCs of rulesidecar.v1, health and "
        "reflection) over TCP. Loopback by default: a pod sidecar answers only inside its pod. "
        "Any other address needs a token (admin_token_file) or allow_unprotected_api. Port 0 "
        "picks a free port.",
    )
    health_listen_address: str | None = Field(
        None,
        description="Also serve gRPC health, and nothing else, on this host:port, e.g. "
        "0.0.0.0:50052 in Kubernetes, where the kubelet's probes connect to the pod IP while the "
        "API stays on loopback. Plaintext even when the API serves TLS (gRPC probes speak no "
        "TLS). Off by default: a process started by hand opens nothing but loopback.",
    )
    allow_unprotected_api: bool = Field(
        False,
        description="Let the API listen on a non-loopback address with no token and no client "
        "certificates (anyone who reaches the port may register connectors). Refused at "
        "startup otherwise; when set, a WARNING says so at every start.",
    )
    unix_socket: Path | None = Field(
        None, description="Also listen on this unix socket path (e.g. a volume shared in the pod)."
    )
    data_dir: Path = Field(
        Path(".rules-sidecar"),
        description="Directory of the embedded connector store (SQLite, durable commits).",
    )
    connectors_file: Path | None = Field(
        None,
        description="YAML or JSON connectors file loaded at startup; its connectors are read-only "
        "at runtime (GitOps, Kubernetes ConfigMaps).",
    )
    connectors_reload_seconds: float = Field(
        1.0,
        ge=0,
        description="How often the connectors file is checked for changes (one stat); a valid "
        "new version is applied without a restart, an invalid one is logged and the last good "
        "set keeps serving. 0 turns hot reload off.",
    )
    secrets_dir: Path | None = Field(
        None,
        description="Directory with one file per secret (the layout of a mounted Kubernetes "
        "Secret); the file name is the secret name.",
    )
    secret_env_prefix: str = Field(
        "RULES_SECRET_",
        description="Environment variables with this prefix are secrets too: "
        "RULES_SECRET_STORE_API_KEY is the secret `store_api_key` (or `STORE_API_KEY`). Kept "
        "apart from the settings prefix so a secret can never be read as a setting.",
    )
    max_message_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="Largest gRPC message accepted or sent, in bytes."
    )
    keepalive_time_seconds: float = Field(
        7200.0,
        ge=1,
        description="Ping a client after this long without activity on its connection, to find "
        "dead peers (and keep idle connections through proxies that drop them). gRPC's default: "
        "2 hours.",
    )
    keepalive_timeout_seconds: float = Field(
        20.0,
        gt=0,
        description="Close the connection when a keepalive ping gets no answer within this long. "
        "gRPC's default: 20 s.",
    )
    keepalive_permit_without_calls: bool = Field(
        False,
        description="Accept (and send) keepalive pings on a connection with no call in progress. "
        "Off, gRPC's default: a client that pings an idle connection is sent GOAWAY "
        "(too_many_pings); turn it on for clients configured to keep idle connections alive.",
    )
    keepalive_min_ping_interval_seconds: float = Field(
        300.0,
        ge=0,
        description="The shortest interval between a client's pings the server accepts; a "
        "client pinging more often is sent GOAWAY (too_many_pings) after two strikes. gRPC's "
        "default: 5 minutes. Lower it to match clients' keepalive time (e.g. 10 for a client "
        "pinging every 10 s).",
    )
    max_connection_age_seconds: float | None = Field(
        None,
        gt=0,
        description="Close every connection after this long (GOAWAY; clients reconnect without "
        "failing calls), so clients of a Kubernetes Service spread over new replicas. Off by "
        "default: a connection lives as long as both ends want.",
    )
    max_connection_age_grace_seconds: float | None = Field(
        None,
        ge=0,
        description="After max_connection_age, calls in progress get this long to finish before "
        "the connection is closed. Unset: as long as they need.",
    )
    reflection: bool = Field(
        True,
        description="Serve gRPC server reflection on the API port, so grpcurl and grpcui can list "
        "and call the services without the .proto files. Read-only (it describes the API, never "
        "connectors or data) and, like health, open without a token. Turn it off to hide the API "
        "surface; the reflection service then answers UNIMPLEMENTED.",
    )
    shutdown_grace_seconds: float = Field(
        10.0,
        ge=0,
        description="On SIGTERM the whole stop takes at most this long: new calls are refused, "
        "in-flight calls get it less a reserve for closing (a fifth, 0.25-2 s), and the process "
        "exits by its end (exit code 3 if something had to be abandoned).",
    )
    store_busy_timeout_seconds: float = Field(
        5.0,
        gt=0,
        description="How long a store write waits for a lock held by another writer (another "
        "process on SQLite; another replica writing the same connector on PostgreSQL).",
    )
    store_url: str | None = Field(
        None,
        description="Keep API-registered connectors in this PostgreSQL database, shared by every "
        "replica: postgresql://user@host:port/dbname (query parameters such as sslmode allowed). "
        "Without it, the embedded SQLite store under data_dir serves this process alone. The "
        "password never goes in the URL: see store_password_file.",
    )
    store_resync_seconds: float = Field(
        30.0,
        gt=0,
        description="With store_url: how often each replica re-reads every connector, besides "
        "the change notifications it hears (and a re-read on every reconnect). Heals a missed "
        "notification.",
    )
    store_connect_timeout_seconds: float = Field(
        5.0,
        ge=1,
        description="With store_url: how long a connection attempt to the database may take "
        "before it counts as an outage (writes answer UNAVAILABLE, the replica retries).",
    )
    store_statement_timeout_seconds: float = Field(
        5.0,
        gt=0,
        description="With store_url: how long one database statement may run before it is "
        "cancelled and the call answers UNAVAILABLE; a slow database never hangs a write.",
    )
    store_password_file: Path | None = Field(
        None,
        description="File holding the password of the store_url user (e.g. a mounted Kubernetes "
        "Secret), read at startup. Without it, the RULES_SIDECAR_STORE_PASSWORD environment "
        "variable is used if set. Kept apart from secrets_dir, whose files connectors may send.",
    )
    admin_token_file: Path | None = Field(
        None,
        description="File holding the bearer token required for RegisterConnector and "
        "DeleteConnector. With any token file set, every call but health and reflection needs "
        "a token.",
    )
    evaluation_token_file: Path | None = Field(
        None,
        description="File holding the bearer token for EvaluateNode, ExtractVariables, "
        "GetConnector and ListConnectors (the admin token works too).",
    )
    tls_cert_file: Path | None = Field(
        None, description="Serve TLS with this PEM certificate chain (with tls_key_file)."
    )
    tls_key_file: Path | None = Field(None, description="PEM private key for tls_cert_file.")
    tls_client_ca_file: Path | None = Field(
        None, description="Require client certificates signed by this PEM CA bundle (mTLS)."
    )
    egress_allow_cidrs: list[str] = Field(
        default_factory=list,
        description="Address ranges the sidecar may reach although they are private (RFC 1918, "
        "ULA, CGNAT ...), e.g. ['10.20.0.0/16'] for in-cluster APIs. Loopback, link-local and "
        "cloud metadata stay closed unless an entry names them explicitly (127.0.0.1/32).",
    )
    egress_allow_hosts: list[str] = Field(
        default_factory=list,
        description="Host names whose addresses may be private or loopback, e.g. "
        "['orders.shop.svc.cluster.local'].",
    )
    egress_allow_http_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts that may be called over plain http; every other host needs https.",
    )
    secret_hosts: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Binds secrets to the hosts they may be sent to: {secret name: [hosts]} "
        "(`*.example.com` wildcards allowed). Every secret a connector uses needs an entry: a "
        "connector with an unbound secret is refused.",
    )
    allow_unbound_secrets: bool = Field(
        False,
        description="Development only: accept connectors whose secrets have no secret_hosts "
        "entry; such a secret goes only to the URL host of the connector using it. A WARNING "
        "says so at startup.",
    )
    max_concurrent_evaluations: int = Field(
        512,
        ge=1,
        description="EvaluateNode calls in progress at once; more answer RESOURCE_EXHAUSTED at "
        "once instead of queueing.",
    )
    max_evaluation_seconds: float = Field(
        60.0,
        gt=0,
        description="Longest an evaluation (rendering, the exchange, judging, extraction) or an "
        "ExtractVariables call may take when the caller's deadline allows more or sets none; "
        "work still running then stops and answers ERROR/BUDGET_EXHAUSTED.",
    )
    max_query_result_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        description="Largest text a JMESPath to_string() or join() may build; a larger one "
        "stops the evaluation with ERROR/LIMIT_EXCEEDED before it is built.",
    )
    max_query_steps: int = Field(
        200_000,
        ge=1000,
        description="Most steps (expression nodes visited, list elements a flatten makes) one "
        "JMESPath evaluation may take; more answer ERROR/LIMIT_EXCEEDED.",
    )
    max_regex_subject_bytes: int = Field(
        64 * 1024,
        ge=1,
        description="Longest text (UTF-8 bytes) a MATCHES condition searches; a longer subject "
        "answers ERROR/LIMIT_EXCEEDED.",
    )
    regex_max_memory_bytes: int = Field(
        1024 * 1024,
        ge=64 * 1024,
        description="RE2's memory budget for each MATCHES regular expression (RE2's max_mem).",
    )
    max_node_cost_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024 * 1024,
        description="Most work a node may ask for: its body queries (BODY conditions and "
        "extractions) times the document's bytes, checked before judging (over it: "
        "ERROR/LIMIT_EXCEEDED); and its MATCHES regexes times regex_max_memory_bytes, checked "
        "when the node is compiled (over it: INVALID_ARGUMENT).",
    )
    max_explain_value_bytes: int = Field(
        4 * 1024,
        ge=64,
        description="Largest subject value an explanation copies (as compact JSON); a larger "
        "one is shown truncated (strings) or not at all, with a note saying so. Held lower for "
        "a node whose conditions' values would not all fit max_message_bytes.",
    )
    max_operand_values: int = Field(
        100_000,
        ge=1000,
        description="Most JSON values (each scalar, list and object counts one) a node's "
        "operands and extraction default values may hold in all, and an ExtractVariables "
        "call's default values; more answer INVALID_ARGUMENT before the node is validated.",
    )
    max_compiled_cache_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024 * 1024,
        description="Memory each cache of compiled forms (nodes, extraction lists, connector "
        "templates) may hold, as estimated from what they were compiled from; least recently "
        "used entries go first.",
    )
    max_connections: int = Field(256, ge=1, description="Pooled outbound connections in all.")
    per_upstream_concurrency: int = Field(
        64, ge=1, description="Outbound requests in flight to one upstream (scheme, host, port)."
    )
    retries: int = Field(
        2, ge=0, le=5, description="Retries of a safe-to-retry failure (see the README)."
    )
    breaker_failure_threshold: int = Field(
        5, ge=1, description="Consecutive failures of an upstream that open its circuit breaker."
    )
    breaker_cooldown_seconds: float = Field(
        10.0, gt=0, description="How long an open breaker refuses calls before one probe."
    )
    response_cache_max_bytes: int = Field(
        64 * 1024 * 1024,
        ge=0,
        description="Bytes the response cache of this process may hold for every connector that "
        "sets `cache`, least recently used out first (each replica has its own cache); 0 turns "
        "caching off (answers say BYPASS).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO", description="Logging level: DEBUG, INFO, WARNING, ERROR or CRITICAL."
    )
    evaluation_log_every: int = Field(
        100,
        ge=0,
        description="The evaluation's INFO line (logger sidecar.evaluations): every evaluation "
        "that ends in ERROR writes one; of the others, the first and then one in this many per "
        "connector and outcome (the line says `logged_one_in`). 1 writes every evaluation; 0 "
        "only the errors. Metrics and traces see every evaluation whatever this is.",
    )
    log_format: Literal["json", "text"] = Field(
        "json",
        description="json: one JSON object per line (timestamp, level, logger, message, trace_id, "
        "span_id, fields), for log pipelines; text: one readable line, for a terminal.",
    )
    event_loop: Literal["uvloop", "asyncio"] = Field(
        "uvloop",
        description="The event loop: uvloop (libuv's; less CPU per call, see the README's "
        "performance section) or asyncio (the standard library's, to rule uvloop out).",
    )
    metrics_prometheus_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Also serve the metrics for Prometheus to scrape (GET /metrics) on this port, "
        "apart from gRPC. Off by default; OTLP export is set with the standard OTEL_* variables.",
    )
    metrics_prometheus_host: str = Field(
        "127.0.0.1",
        description="Address of the Prometheus endpoint: loopback by default; 0.0.0.0 (or the pod "
        "IP) lets a Prometheus outside the pod scrape it.",
    )

    @field_validator("store_url")
    @classmethod
    def _store_url_without_password(cls, value: str | None) -> str | None:
        if value is None:
            return None
        scheme, _, rest = value.partition("://")
        if scheme not in ("postgresql", "postgres") or not rest:
            raise ValueError("must be postgresql://user@host:port/dbname")
        authority = rest.split("/", 1)[0]
        query = value.partition("?")[2].lower()
        if ":" in authority.rpartition("@")[0] or "password=" in query:
            raise ValueError(
                "must not carry a password; give it in store_password_file or "
                f"{STORE_PASSWORD_VARIABLE}"
            )
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_case_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower_case_format(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    def secret_variables(self) -> dict[str, str]:
        """Environment variables carrying secrets (the only other reading of the environment)."""
        return {k: v for k, v in os.environ.items() if k.startswith(self.secret_env_prefix)}

    def otel_variables(self) -> dict[str, str]:
        """The standard OTEL_* variables, from which `telemetry` decides what to export.

        The OpenTelemetry SDK also reads the ones it owns (sampler, endpoint, headers, batching,
        propagators, resource) itself, as every OpenTelemetry SDK does.
        """
        return {k: v for k, v in os.environ.items() if k.startswith("OTEL_")}

    def store_password(self) -> str | None:
        """The store_url user's password: store_password_file, else the environment, else None."""
        if self.store_password_file is not None:
            try:
                return self.store_password_file.read_text().strip("\r\n")
            except OSError as exc:
                raise ConfigError(
                    f"store_password_file {self.store_password_file} cannot be read: {exc.strerror}"
                ) from exc
        return os.environ.get(STORE_PASSWORD_VARIABLE)

    @property
    def store_path(self) -> Path:
        """The SQLite database file."""
        return self.data_dir / "connectors.sqlite3"

    @classmethod
    def load(
        cls, *, config_file: Path | None = None, overrides: Mapping[str, Any] | None = None
    ) -> Settings:
        """Build from overrides, environment, config file and defaults; ConfigError if invalid."""
        chosen = config_file or (
            Path(os.environ[CONFIG_FILE_VARIABLE]) if os.environ.get(CONFIG_FILE_VARIABLE) else None
        )
        settings_cls: type[Settings] = cls
        if chosen is not None:
            if not chosen.is_file():
                raise ConfigError(f"config file {chosen} does not exist or is not a file")
            config = SettingsConfigDict(**{**cls.model_config, "yaml_file": chosen})
            settings_cls = type("FileSettings", (cls,), {"model_config": config})
        unknown = _unknown_variables(os.environ)
        if unknown:
            known = ", ".join(_known_variables())
            raise ConfigError(
                "unknown settings in the environment (a typo?)",
                [f"{name}: not a setting; known: {known}" for name in unknown],
            )
        try:
            return settings_cls(**dict(overrides or {}))
        except ValidationError as exc:
            problems = [_problem(error) for error in exc.errors()]
            raise ConfigError("invalid settings", problems) from exc
        except SettingsError as exc:  # a variable that does not parse (lists, maps: JSON)
            problem = f"{exc}; lists and mappings are written as JSON in the environment"
            raise ConfigError("invalid settings", [problem]) from exc
        except (yaml.YAMLError, ValueError) as exc:
            message = f"config file {chosen} is not a YAML mapping of settings: {exc}"
            raise ConfigError(message) from exc

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Overrides, then environment, then the YAML config file (no dotenv, no secrets dir)."""
        return init_settings, env_settings, YamlConfigSettingsSource(settings_cls)


@dataclass(frozen=True, slots=True)
class SettingReference:
    """One setting as `rules-sidecar settings` prints it: read from the Settings fields, so the
    reference cannot drift from what the sidecar accepts."""

    name: str
    variable: str
    kind: str
    default: str | None
    """As written in YAML or the environment; None when the setting is unset by default."""
    description: str


def settings_reference() -> list[SettingReference]:
    """Every setting, in declaration order, with its environment variable, type and default.

    >>> first = settings_reference()[0]
    >>> first.name, first.variable, first.kind, first.default
    ('listen_address', 'RULES_SIDECAR_LISTEN_ADDRESS', 'string', '127.0.0.1:50051')
    """
    schema = Settings.model_json_schema()["properties"]
    reference = []
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        reference.append(
            SettingReference(
                name=name,
                variable=ENV_PREFIX + name.upper(),
                kind=_kind(schema[name]),
                default=None if default is None else _shown(default),
                description=field.description or "",
            )
        )
    return reference


def _kind(schema: Mapping[str, Any]) -> str:
    """A setting's type in words, from its JSON schema: `number`, `list of string` ..."""
    if "enum" in schema:
        return "one of " + ", ".join(map(str, schema["enum"]))
    if "anyOf" in schema:
        return " or ".join(
            _kind(choice) for choice in schema["anyOf"] if choice != {"type": "null"}
        )
    kind = str(schema.get("type", "any"))
    if kind == "array":
        return f"list of {_kind(schema.get('items', {}))}"
    if kind == "object":
        return f"mapping to {_kind(schema.get('additionalProperties', {}))}"
    if schema.get("format") == "path":
        return "path"
    return kind


def _shown(default: Any) -> str:
    """A default as it is written in YAML or the environment (lists and mappings as JSON)."""
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, list | dict):
        return json.dumps(default)
    return str(default)


def _known_variables() -> list[str]:
    return [ENV_PREFIX + name.upper() for name in Settings.model_fields]


def _unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """RULES_SIDECAR_* variables that name no setting: ignored silently, they hide typos."""
    known = {*_known_variables(), CONFIG_FILE_VARIABLE, STORE_PASSWORD_VARIABLE}
    return sorted(name for name in environ if name.startswith(ENV_PREFIX) and name not in known)


def _problem(error: Any) -> str:
    """One settings problem, with the value given when it is short (settings hold no secrets)."""
    given = error.get("input")
    echo = not (error["loc"] and error["loc"][0] in _NEVER_ECHOED)
    shown = (
        f" (got {given!r})"
        if echo and isinstance(given, str | int | float) and len(str(given)) < 80
        else ""
    )
    return f"{'.'.join(map(str, error['loc']))}: {error['msg']}{shown}"
