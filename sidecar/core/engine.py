"""The evaluation pipeline of one API-conditional node, read top to bottom:

    connector -> render request -> add auth -> send -> parse body -> decide branch -> extract
              -> outcome (MATCHED / NO_MATCH / ERROR, always with a reason)

The engine imports no grpc, protobuf or httpx: it is given `send` (see
`sidecar.core.model.exchange`) and returns an `Outcome`, so it can be tested, fuzzed and
benchmarked alone. Failures are answers, not exceptions: every path ends in an Outcome.

Outcome rules:
- a branch held -> MATCHED with its index and target, unless a *required* extraction failed
  (-> ERROR, EXTRACTION_FAILED);
- no branch held and the upstream answered >= 500 -> ERROR, UPSTREAM_ERROR (a branch that
  explicitly matches a 5xx wins before this rule);
- no branch held otherwise -> NO_MATCH with the else target;
- no HTTP response at all (timeout, refused, DNS, TLS, oversize ...), or nothing sent (missing
  variable, missing secret, unknown or non-live connector) -> ERROR with that reason, and no branch
  is evaluated: a branch on visitor variables alone must not route a failed call down a success
  path.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

from sidecar.core.conditions import CompiledBranches, ResponseView, compile_branches
from sidecar.core.documents import DocumentError, parse_document
from sidecar.core.extraction import CompiledExtractions, compile_extractions, required_failures
from sidecar.core.model import (
    ApiKeyLocation,
    Connector,
    ConnectorStatus,
    Explanation,
    HttpMethod,
    Node,
    Outcome,
    OutcomeKind,
    Reason,
    RenderedRequest,
)
from sidecar.core.model.exchange import HttpResponse, OutboundRequest, Send, SendError, SendOptions
from sidecar.core.secrets import SecretBindings
from sidecar.core.templating import RenderError, RequestTemplate, compile_request
from sidecar.errors import FieldViolation, InvalidArgumentError

MASK = "***"
OFF_LOOP_BODY_BYTES = 256 * 1024
# Kept back from the caller's deadline so the answer can still reach it, even on a busy CPU.
DEADLINE_MARGIN_SECONDS = 0.05
_IDEMPOTENT_METHODS = frozenset({HttpMethod.GET, HttpMethod.PUT, HttpMethod.DELETE})
_TEMPLATE_CACHE_LIMIT = 4096


class ConnectorLookup(Protocol):
    """Where the engine finds connectors (the registry)."""

    def get(self, connector_id: str) -> Connector | None: ...


class SecretLookup(Protocol):
    """Where the engine finds secret values (the secret store)."""

    def resolve(self, name: str) -> str | None: ...


@dataclass(frozen=True, slots=True)
class CompiledNode:
    """A node with its JMESPath expressions and regexes compiled; reusable across calls."""

    node: Node
    branches: CompiledBranches
    extractions: CompiledExtractions


def compile_node(node: Node) -> CompiledNode:
    """Compile a node, or raise InvalidArgumentError naming every bad field (relative to node)."""
    violations: list[FieldViolation] = []
    branches = extractions = None
    try:
        branches = compile_branches(node.branches)
    except InvalidArgumentError as error:
        violations.extend(error.violations)
    try:
        extractions = compile_extractions(node.extractions)
    except InvalidArgumentError as error:
        violations.extend(error.violations)
    if violations or branches is None or extractions is None:
        raise InvalidArgumentError(violations)
    return CompiledNode(node, branches, extractions)


class Engine:
    """Evaluates compiled nodes against registered connectors.

    >>> engine = Engine(registry, secret_store, egress.send)                   # doctest: +SKIP
    >>> outcome = await engine.evaluate(compile_node(node), {"order_number": "A-1"})  # +SKIP
    """

    def __init__(
        self,
        connectors: ConnectorLookup,
        secrets: SecretLookup,
        send: Send,
        *,
        bindings: SecretBindings | None = None,
    ) -> None:
        self._connectors = connectors
        self._secrets = secrets
        self._send = send
        self._bindings = bindings or SecretBindings({})
        self._prepared: dict[tuple[object, ...], _Prepared] = {}

    async def evaluate(
        self,
        compiled: CompiledNode,
        variables: Mapping[str, Any],
        *,
        explain: bool = False,
        allow_draft: bool = False,
        time_remaining: float | None = None,
    ) -> Outcome:
        """Run the pipeline for one conversation; never raises for evaluation failures."""
        node = compiled.node
        connector = self._connectors.get(node.connector_id)
        if connector is None:
            return _error(
                node,
                Reason.CONNECTOR_NOT_FOUND,
                f"no connector with id {node.connector_id!r}",
                explain=explain,
            )
        version = connector.version
        if connector.status is ConnectorStatus.DISABLED or (
            connector.status is ConnectorStatus.DRAFT and not allow_draft
        ):
            hint = (
                " (use test mode to run drafts)"
                if connector.status is ConnectorStatus.DRAFT
                else ""
            )
            return _error(
                node,
                Reason.CONNECTOR_NOT_LIVE,
                f"connector {connector.id!r} is {connector.status.value}{hint}",
                connector_version=version,
                explain=explain,
            )

        try:
            prepared = self._prepare(connector)
            rendered = prepared.template.render(variables)
        except RenderError as error:
            return _error(
                node, error.reason, error.message, connector_version=version, explain=explain
            )
        try:
            request = self._with_auth(connector, rendered)
        except _MissingSecretError as error:
            return _error(
                node,
                Reason.SECRET_NOT_FOUND,
                f"secret {error.name!r} of connector {connector.id!r} is not available",
                connector_version=version,
                explain=explain,
                request=_masked(connector, rendered),
            )

        refused = self._bindings.violations(connector.secret_names(), prepared.host)
        if refused:
            return _error(
                node,
                Reason.BLOCKED_DESTINATION,
                "; ".join(refused),
                connector_version=version,
                explain=explain,
                request=_masked(connector, rendered),
            )
        budget = connector.timeout.total_seconds()
        if time_remaining is not None:
            budget = min(budget, time_remaining - DEADLINE_MARGIN_SECONDS)
        if budget <= 0:
            return _error(
                node,
                Reason.TIMEOUT,
                "the caller's deadline leaves no time for the call",
                connector_version=version,
                explain=explain,
                request=_masked(connector, rendered),
            )
        options = replace(prepared.options, timeout_seconds=budget)
        started = time.perf_counter()
        try:
            response = await self._send(request, options)
        except SendError as failure:
            return _error(
                node,
                failure.reason,
                failure.message,
                connector_version=version,
                explain=explain,
                request=_masked(connector, rendered),
                attempts=failure.attempts,
                latency=time.perf_counter() - started,
                extracted=compiled.extractions.apply(None, has_document=False),
            )
        latency = time.perf_counter() - started
        judge = partial(
            _judge,
            compiled,
            connector,
            response,
            variables,
            latency=latency,
            explain=explain,
            request=_masked(connector, rendered) if explain else None,
        )
        if len(response.body) > OFF_LOOP_BODY_BYTES:
            # Parsing and querying a large document takes milliseconds: do it off the event
            # loop so other conversations' calls keep flowing meanwhile.
            return await asyncio.to_thread(judge)
        return judge()

    def _prepare(self, connector: Connector) -> _Prepared:
        """Compiled once per connector version (versions never repeat for an id)."""
        key = (connector.id, connector.version, connector.source, connector.update_time)
        prepared = self._prepared.get(key)
        if prepared is None:
            if len(self._prepared) >= _TEMPLATE_CACHE_LIMIT:
                self._prepared.clear()
            prepared = self._prepared[key] = _Prepared.of(connector)
        return prepared

    def _with_auth(self, connector: Connector, request: OutboundRequest) -> OutboundRequest:
        auth = connector.auth
        if auth is None:
            return request
        if auth.bearer is not None:
            header = ("Authorization", f"Bearer {self._secret(auth.bearer.token_secret)}")
            return replace(request, headers=(*request.headers, header))
        if auth.basic is not None:
            username = self._secret(auth.basic.username_secret)
            pair = f"{username}:{self._secret(auth.basic.password_secret)}"
            header = ("Authorization", "Basic " + base64.b64encode(pair.encode()).decode())
            return replace(request, headers=(*request.headers, header))
        assert auth.api_key is not None
        key = self._secret(auth.api_key.value_secret)
        if auth.api_key.location is ApiKeyLocation.QUERY:
            return replace(request, url=_with_query(request.url, auth.api_key.name, key))
        return replace(request, headers=(*request.headers, (auth.api_key.name, key)))

    def _secret(self, name: str) -> str:
        value = self._secrets.resolve(name)
        if value is None:
            raise _MissingSecretError(name)
        return value


@dataclass(frozen=True, slots=True)
class _Prepared:
    """What one connector version needs on every call, worked out once."""

    template: RequestTemplate
    options: SendOptions
    host: str

    @classmethod
    def of(cls, connector: Connector) -> _Prepared:
        host = urlsplit(connector.url_template).hostname or ""
        credential_headers = {"authorization"}
        if connector.auth is not None and connector.auth.api_key is not None:
            credential_headers.add(connector.auth.api_key.name.lower())
        idempotent = connector.method in _IDEMPOTENT_METHODS or bool(
            connector.idempotency_key_header
        )
        options = SendOptions(
            timeout_seconds=connector.timeout.total_seconds(),
            max_response_bytes=connector.max_response_bytes,
            allowed_hosts=(host, *connector.allowed_hosts),
            follow_redirects=connector.follow_redirects,
            retry_on_status=idempotent,
            credential_headers=frozenset(credential_headers),
            connector_id=connector.id,
            url_template=connector.url_template,
            propagate_trace=not connector.disable_trace_propagation,
        )
        return cls(compile_request(connector), options, host)


class _MissingSecretError(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _judge(
    compiled: CompiledNode,
    connector: Connector,
    response: HttpResponse,
    variables: Mapping[str, Any],
    *,
    latency: float,
    explain: bool,
    request: RenderedRequest | None,
) -> Outcome:
    """Decide the branch and extract, from a response that arrived."""
    node = compiled.node
    body, body_is_json, note = _parse_body(response)
    view = ResponseView(response.status, response.headers, body, body_is_json, variables)
    decision = compiled.branches.decide(view, explain=explain)
    extracted, results = compiled.extractions.apply(body, has_document=body_is_json)
    common: dict[str, Any] = {
        "variables": extracted,
        "extractions": results,
        "http_status": response.status,
        "upstream_latency_seconds": latency,
        "attempts": response.attempts,
        "connector_version": connector.version,
        "explanation": Explanation(request, decision.explanations, (note,) if note else ())
        if explain
        else None,
    }
    if decision.index is not None:
        failed = required_failures(results)
        if failed:
            names = ", ".join(result.variable for result in failed)
            return Outcome(
                OutcomeKind.ERROR,
                Reason.EXTRACTION_FAILED,
                node.error_target,
                message=f"required extraction failed: {names}",
                **common,
            )
        return Outcome(
            OutcomeKind.MATCHED,
            Reason.BRANCH_MATCHED,
            node.branches[decision.index].target,
            branch_index=decision.index,
            **common,
        )
    if response.status >= 500:
        return Outcome(
            OutcomeKind.ERROR,
            Reason.UPSTREAM_ERROR,
            node.error_target,
            message=f"the upstream answered {response.status} and no branch matched it",
            **common,
        )
    return Outcome(OutcomeKind.NO_MATCH, Reason.NO_BRANCH_MATCHED, node.else_target, **common)


def _parse_body(response: HttpResponse) -> tuple[Any, bool, str]:
    """The JSON body, whether there was one, and a note when there was not."""
    if not response.body:
        return None, False, "the response has no body, so body subjects are null"
    try:
        return parse_document(response.body), True, ""
    except DocumentError as error:
        if not error.malformed:
            return None, False, f"the response body {error}, so body subjects are null"
    content_type = response.headers.get("content-type", "no content type")
    return (
        None,
        False,
        f"the response body is not valid JSON ({content_type}), so body subjects are null",
    )


def _error(
    node: Node,
    reason: Reason,
    message: str,
    *,
    explain: bool,
    connector_version: int = 0,
    request: RenderedRequest | None = None,
    attempts: int = 0,
    latency: float = 0.0,
    extracted: tuple[dict[str, Any], tuple[Any, ...]] | None = None,
) -> Outcome:
    variables, results = extracted if extracted is not None else ({}, ())
    return Outcome(
        OutcomeKind.ERROR,
        reason,
        node.error_target,
        message=message,
        variables=variables,
        extractions=results,
        attempts=attempts,
        upstream_latency_seconds=latency,
        connector_version=connector_version,
        explanation=Explanation(request, (), (f"no branch was evaluated: {message}",))
        if explain
        else None,
    )


def _masked(connector: Connector, request: OutboundRequest) -> RenderedRequest:
    """The request as explanations show it: auth present but masked, never a secret value."""
    headers = dict(request.headers)
    url = request.url
    auth = connector.auth
    if auth is not None and (auth.bearer is not None or auth.basic is not None):
        headers["Authorization"] = f"{'Bearer' if auth.bearer else 'Basic'} {MASK}"
    elif auth is not None and auth.api_key is not None:
        if auth.api_key.location is ApiKeyLocation.QUERY:
            separator = "&" if "?" in url else "?"
            url = f"{url}{separator}{quote(auth.api_key.name, safe='')}={MASK}"
        else:
            headers[auth.api_key.name] = MASK
    body = request.body.decode("utf-8", errors="replace") if request.body else ""
    return RenderedRequest(request.method, url, headers, body)


def _with_query(url: str, name: str, value: str) -> str:
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}{quote(name, safe='')}={quote(value, safe='')}"
