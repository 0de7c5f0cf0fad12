"""The evaluation pipeline of one API-conditional node, read top to bottom:

    connector -> render request -> add auth -> send -> parse body -> decide branch -> extract
              -> outcome (MATCHED / NO_MATCH / ERROR, always with a reason)

The engine imports no grpc, protobuf or httpx: it is given `send` (see
`sidecar.core.model.exchange`) and returns an `Outcome`, so it can be tested, fuzzed and
benchmarked alone. Failures are answers: a step that cannot go on raises an EvaluationFailure
(`sidecar.core.model.failures`), which `Engine.evaluate` catches in one place and answers as an
ERROR outcome, so every path ends in an Outcome. Auth and its masking live in `sidecar.core.auth`,
OAuth2 client credentials' tokens in `sidecar.core.oauth`.

Outcome rules:
- a branch held -> MATCHED with its index and target, unless a *required* extraction failed
  (-> ERROR, EXTRACTION_FAILED);
- no branch held and the upstream answered >= 500 -> ERROR, UPSTREAM_ERROR (a branch that
  explicitly matches a 5xx wins before this rule);
- no branch held otherwise -> NO_MATCH with the else target;
- the evaluation's budget ran out or its call was cancelled while it worked -> ERROR,
  BUDGET_EXHAUSTED; a work limit reached (a query's result or steps, a regex subject, the node's
  cost) -> ERROR, LIMIT_EXCEEDED;
- no HTTP response at all (timeout, refused, DNS, TLS, oversize ...), or nothing sent (missing
  variable, missing secret, unknown or non-live connector) -> ERROR with that reason, and no branch
  is evaluated: a branch on visitor variables alone must not route a failed call down a success
  path.

Bounded work (issue 14). One `Budget` per evaluation covers rendering, the exchange, judging and
extraction: its time is the caller's deadline (less a margin), at most `max_evaluation_seconds`,
and the exchange gets what is left of it (at most the connector's timeout). Judging spends from
it step by step (`sidecar.core.budget`), on the event loop for a slice of work and then in a
worker thread; a cancelled call stops the worker at its next step, and `evaluate` returns only
once it stopped. Before judging, the node's cost (its body queries x the body's bytes) is held
to `max_node_cost_bytes`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol
from urllib.parse import urlsplit

from sidecar.core import values
from sidecar.core.auth import (
    authorise,
    binding_refusals,
    client_credentials,
    masked_request,
)
from sidecar.core.budget import (
    SHUTTING_DOWN,
    AnswerTooLargeError,
    Budget,
    LimitExceededError,
    WorkLimits,
    json_size,
    run_bounded,
    value_floor,
)
from sidecar.core.compiled_cache import CompiledCache
from sidecar.core.conditions import CompiledBranches, ResponseView, compile_branches
from sidecar.core.documents import DocumentError, parse_document
from sidecar.core.extraction import CompiledExtractions, compile_extractions, required_failures
from sidecar.core.model import (
    Condition,
    Connector,
    ConnectorStatus,
    Explanation,
    ExtractionResult,
    HttpMethod,
    Node,
    Outcome,
    OutcomeKind,
    Reason,
    RenderedRequest,
    SubjectKind,
)
from sidecar.core.model.exchange import (
    CacheOptions,
    HttpResponse,
    OutboundRequest,
    Send,
    SendOptions,
)
from sidecar.core.model.failures import (
    ConnectorNotFoundError,
    ConnectorNotLiveError,
    DeadlineExhaustedError,
    EvaluationFailure,
    MissingSecretError,
    SecretBindingError,
    SendError,
    TokenError,
)
from sidecar.core.oauth import ClientCredentials, TokenCache, send_with_token
from sidecar.core.secrets import SecretBindings
from sidecar.core.templating import RequestTemplate, compile_request
from sidecar.errors import FieldViolation, InvalidArgumentError

# Bodies larger than this are parsed and judged in a worker thread from the start; smaller ones
# start on the event loop and move to a thread if their judging needs more than a slice.
OFF_LOOP_BODY_BYTES = 64 * 1024
# Kept back from the caller's deadline so the answer can still reach it, even on a busy CPU:
# a tenth of the time left, at least 50 ms and at most 250 ms (`deadline_margin`).
DEADLINE_MARGIN_SECONDS = 0.05
DEADLINE_MARGIN_FRACTION = 0.1
DEADLINE_MARGIN_MAX_SECONDS = 0.25
_IDEMPOTENT_METHODS = frozenset({HttpMethod.GET, HttpMethod.PUT, HttpMethod.DELETE})
_TEMPLATE_CACHE_LIMIT = 4096
# The least an explained condition takes besides its operand and path (the subject, operator
# and flags' tags and framing), and an explained branch besides its target.
EXPLAINED_CONDITION_FLOOR_BYTES = 8
EXPLAINED_BRANCH_FLOOR_BYTES = 4
# What an explained condition usually takes beyond that floor and its subject value (a note).
EXPLAINED_CONDITION_NOTE_BYTES = 64
# Of what the message limit leaves once the explanation's known parts are counted, the share
# the subject values may take together: the rest is for extractions, variables and the notes
# of values that had to be cut.
EXPLAINED_VALUES_SHARE = 0.5
# What a compiled form holds in memory, estimated from what it was compiled from.
COMPILED_BYTES_PER_SOURCE_BYTE = 8  # measured: a node of 36,000 short strings, 7-8x
COMPILED_OVERHEAD_BYTES = 4096


class ConnectorLookup(Protocol):
    """Where the engine finds connectors (the registry)."""

    def get(self, connector_id: str) -> Connector | None: ...


class SecretLookup(Protocol):
    """Where the engine finds secret values (the secret store)."""

    def resolve(self, name: str) -> str | None: ...

    def searched(self, name: str) -> str:
        """Where a secret of this name is looked for, to say so when it is missing."""
        ...


@dataclass(frozen=True, slots=True)
class CompiledNode:
    """A node with its JMESPath expressions and regexes compiled; reusable across calls."""

    node: Node
    branches: CompiledBranches
    extractions: CompiledExtractions
    # Queries run over the body per evaluation: its cost is this times the body's size.
    body_queries: int = 0
    # With explain: the conditions explained at most, and the least their explanation takes
    # whatever the response (`explained_bytes`).
    conditions: int = 0
    explained_bytes: int = 0


def compile_node(node: Node, *, limits: WorkLimits | None = None) -> CompiledNode:
    """Compile a node, or raise InvalidArgumentError naming every bad field (relative to node).

    A node whose MATCHES regexes could together hold more memory than `max_node_cost_bytes`
    (each up to `regex_max_memory_bytes`) is refused here, before it ever runs.
    """
    limits = limits or WorkLimits()
    node = _frozen_operands(node)
    violations: list[FieldViolation] = []
    branches = extractions = None
    conditions = [condition for branch in node.branches for condition in branch.conditions]
    regexes = sum(1 for condition in conditions if condition.operator.value == "MATCHES")
    if regexes * limits.regex_max_memory_bytes > limits.max_node_cost_bytes:
        most = limits.max_node_cost_bytes // limits.regex_max_memory_bytes
        violations.append(
            FieldViolation(
                "branches",
                f"{regexes} MATCHES conditions could hold "
                f"{regexes * limits.regex_max_memory_bytes} bytes of regex memory, over "
                f"max_node_cost_bytes ({limits.max_node_cost_bytes}); use at most {most}",
            )
        )
    try:
        branches = compile_branches(
            node.branches, regex_max_memory_bytes=limits.regex_max_memory_bytes
        )
    except InvalidArgumentError as error:
        violations.extend(error.violations)
    try:
        extractions = compile_extractions(node.extractions)
    except InvalidArgumentError as error:
        violations.extend(error.violations)
    if violations or branches is None or extractions is None:
        raise InvalidArgumentError(violations)
    node = node.model_copy(update={"extractions": extractions.models})  # defaults frozen
    body_queries = len(node.extractions) + sum(
        1 for condition in conditions if condition.subject.kind is SubjectKind.BODY
    )
    return CompiledNode(
        node, branches, extractions, body_queries, len(conditions), explained_bytes(node)
    )


def _frozen_operands(node: Node) -> Node:
    """`node` with its operands `frozen` (lists as tuples): the compiled form keeps the node,
    and the cache keeps the compiled form, where every full garbage collection would walk a
    list element by element (see `values.frozen`). Default values are frozen where the
    extractions are compiled (`compile_extractions`)."""

    def frozen(condition: Condition) -> Condition:
        if not isinstance(condition.operand, list | dict):
            return condition
        return condition.model_copy(update={"operand": values.frozen(condition.operand)})

    branches = [
        branch.model_copy(update={"conditions": [frozen(item) for item in branch.conditions]})
        for branch in node.branches
    ]
    return node.model_copy(update={"branches": branches})


def explained_bytes(node: Node) -> int:
    """The least an explanation of `node` takes, in bytes, whatever the response: each
    condition's operand and subject path and each branch's target are echoed in it as they are
    (a lower bound of their protobuf encoding: text at one byte a character, two bytes of
    framing a value), beside EXPLAINED_CONDITION_FLOOR_BYTES of fields a condition.

    >>> explained_bytes(Node.model_validate({"connector_id": "c", "branches": [{"target": "t",
    ...     "conditions": [{"subject": {"kind": "BODY", "path": "a"}, "operator": "EQUALS",
    ...     "operand": ["x", 1]}]}], "else_target": "e", "error_target": "r"}))
    21
    """
    size = 0
    for branch in node.branches:
        size += len(branch.target) + EXPLAINED_BRANCH_FLOOR_BYTES
        for condition in branch.conditions:
            size += len(condition.subject.path) + EXPLAINED_CONDITION_FLOOR_BYTES
            size += value_floor(condition.operand)
    return size


def rendered_bytes(request: RenderedRequest) -> int:
    """The fewest bytes the rendered request of an explanation encodes to (its text)."""
    headers = sum(len(name) + len(value) for name, value in request.headers.items())
    return len(request.method) + len(request.url) + headers + len(request.body)


def compiled_size(source_bytes: int) -> int:
    """The memory a compiled form is taken to hold, from the size of what it was compiled from.

    >>> compiled_size(1000)
    12096
    """
    return COMPILED_OVERHEAD_BYTES + COMPILED_BYTES_PER_SOURCE_BYTE * source_bytes


def deadline_margin(time_remaining: float) -> float:
    """What the budget keeps back from a caller's deadline for the answer's way back. A fixed
    50 ms was too little on a loaded machine (the answer missed a 300 ms deadline at load 10);
    a tenth of the time scales with what the caller allows, within 50-250 ms.

    >>> [round(deadline_margin(s), 3) for s in (0.3, 1.0, 2.0, 30.0)]
    [0.05, 0.1, 0.2, 0.25]
    """
    return min(
        max(DEADLINE_MARGIN_SECONDS, time_remaining * DEADLINE_MARGIN_FRACTION),
        DEADLINE_MARGIN_MAX_SECONDS,
    )


class Engine:
    """Evaluates compiled nodes against registered connectors::

        engine = Engine(registry, secret_store, egress.send, bindings=bindings)
        outcome = await engine.evaluate(compile_node(node), {"order_number": "A-1"})

    The composition root builds one; tests/test_engine.py drives one with a recording `send`.
    """

    def __init__(
        self,
        connectors: ConnectorLookup,
        secrets: SecretLookup,
        send: Send,
        *,
        bindings: SecretBindings,
        tokens: TokenCache | None = None,
        limits: WorkLimits | None = None,
        max_cache_bytes: int = 64 * 1024 * 1024,
        max_answer_bytes: int = 4 * 1024 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._connectors = connectors
        self._secrets = secrets
        self._send = send
        self._bindings = bindings
        self._tokens = tokens  # OAuth2 client credentials' tokens (`sidecar.core.oauth`)
        self.limits = limits or WorkLimits()
        # The gRPC message limit (max_message_bytes): what an explained answer is sized to fit.
        self.max_answer_bytes = max_answer_bytes
        self._clock = clock
        self._prepared: CompiledCache[tuple[object, ...], _Prepared] = CompiledCache(
            limit=_TEMPLATE_CACHE_LIMIT,
            max_bytes=max_cache_bytes,
            size=lambda prepared: prepared.size,
        )
        self._working: set[Budget] = set()
        self._stopping = False

    @property
    def working(self) -> int:
        """Evaluations and extractions whose work has not stopped yet."""
        return len(self._working)

    @property
    def stopping(self) -> bool:
        """`stop_all` was called: work stopped now was stopped by the shutdown, not its caller."""
        return self._stopping

    def stop_all(self) -> None:
        """Cancel every evaluation's budget: each stops at its next step (on shutdown)."""
        self._stopping = True
        for budget in tuple(self._working):
            budget.cancel(SHUTTING_DOWN)

    def budget(self, time_remaining: float | None) -> Budget:
        """A new evaluation's budget: the caller's deadline less the margin, within the limits."""
        seconds = (
            None if time_remaining is None else time_remaining - deadline_margin(time_remaining)
        )
        return Budget(self.limits, seconds=seconds, clock=self._clock)

    async def extract(
        self,
        compiled: CompiledExtractions,
        document: Any,
        *,
        document_bytes: int,
        time_remaining: float | None = None,
    ) -> tuple[dict[str, Any], tuple[ExtractionResult, ...]]:
        """ExtractVariables: apply extractions to a document under one budget, as `evaluate`.

        Raises BudgetExhaustedError, LimitExceededError or AnswerTooLargeError (the caller
        answers them).
        """
        budget = self.budget(time_remaining)
        _check_cost(len(compiled), document_bytes, self.limits)
        self._working.add(budget)
        max_answer_bytes = self.max_answer_bytes

        def apply() -> tuple[dict[str, Any], tuple[ExtractionResult, ...]]:  # not a partial
            return compiled.apply(
                document, has_document=True, budget=budget, max_answer_bytes=max_answer_bytes
            )

        try:
            return await run_bounded(apply, budget, on_loop=document_bytes <= OFF_LOOP_BODY_BYTES)
        finally:
            self._working.discard(budget)

    async def evaluate(
        self,
        compiled: CompiledNode,
        variables: Mapping[str, Any],
        *,
        explain: bool = False,
        allow_draft: bool = False,
        time_remaining: float | None = None,
    ) -> Outcome:
        """Run the pipeline for one conversation; never raises for evaluation failures.

        Each step raises an EvaluationFailure when the call cannot go on; the one handler turns
        it into the ERROR outcome, with what the steps before it established.
        """
        budget = self.budget(time_remaining)
        self._working.add(budget)
        try:
            return await self._evaluate(compiled, variables, budget, explain, allow_draft)
        finally:
            self._working.discard(budget)

    async def _evaluate(
        self,
        compiled: CompiledNode,
        variables: Mapping[str, Any],
        budget: Budget,
        explain: bool,
        allow_draft: bool,
    ) -> Outcome:
        connector: Connector | None = None
        rendered: OutboundRequest | None = None
        started: float | None = None
        response: HttpResponse | None = None
        sent_secrets: list[str] = []  # for the answer's edge to mask (an upstream may echo them)
        try:
            connector = self._connector(compiled.node.connector_id)
            _check_live(connector, allow_draft=allow_draft)
            prepared = self._prepare(connector)
            rendered = prepared.template.render(variables)
            shown = masked_request(connector, rendered) if explain else None
            value_bytes = None if shown is None else self._explained_value_bytes(compiled, shown)
            request, credentials = self._authorise(connector, rendered, sent_secrets)
            if prepared.refusals:  # the bindings of today refuse what the connector sends
                raise SecretBindingError("; ".join(prepared.refusals))
            options = prepared.options
            timeout = _exchange_timeout(options, budget)
            if timeout != options.timeout_seconds:  # the caller's deadline comes first
                options = options.with_timeout(timeout)
            started = time.perf_counter()
            response = await self._exchange(request, credentials, options, sent_secrets)
            budget.check()
            _check_cost(compiled.body_queries, len(response.body), self.limits)
            latency = time.perf_counter() - started
            secrets = tuple(sent_secrets)  # complete: the exchange is over

            def judge() -> Outcome:  # a closure: a partial with keywords costs 3x to make
                return _judge(
                    compiled,
                    connector,
                    response,
                    variables,
                    budget,
                    latency=latency,
                    explain=explain,
                    explain_value_bytes=value_bytes,
                    max_answer_bytes=self.max_answer_bytes,
                    request=shown,
                    secret_values=secrets,
                )

            # Parsing and querying a large document takes milliseconds: a large one goes off
            # the event loop at once, others move there if they need more than a slice.
            return await run_bounded(
                judge, budget, on_loop=len(response.body) <= OFF_LOOP_BODY_BYTES
            )
        except EvaluationFailure as failure:
            if isinstance(failure, AnswerTooLargeError):
                rendered = None  # the request it could not carry is left out of the answer
            outcome = _failed(
                compiled, failure, connector, rendered, started, explain=explain, response=response
            )
            return _carrying(outcome, sent_secrets)

    def _explained_value_bytes(self, compiled: CompiledNode, shown: RenderedRequest) -> int:
        """The bytes each subject value of an explanation of this node may take, so that all of
        them fit the answer: `max_explain_value_bytes`, or less for a node with many conditions.

        Raises AnswerTooLargeError, before anything is sent, when the answer is sure to be over
        the message limit: the node's echo (`explained_bytes`) and the rendered request it
        shows (`shown`) already are.
        """
        known = compiled.explained_bytes + rendered_bytes(shown)
        if known > self.max_answer_bytes:
            raise AnswerTooLargeError(
                f"with explain, the answer would hold at least {known} bytes (the rendered "
                f"request, and this node's {compiled.conditions} conditions with their operands), "
                f"over the {self.max_answer_bytes}-byte gRPC message limit (max_message_bytes); "
                "ask without explain. Nothing was sent"
            )
        notes = compiled.conditions * EXPLAINED_CONDITION_NOTE_BYTES
        room = max(self.max_answer_bytes - known - notes, 0)
        share = int(room * EXPLAINED_VALUES_SHARE) // max(compiled.conditions, 1)
        return min(self.limits.max_explain_value_bytes, share)

    def _connector(self, connector_id: str) -> Connector:
        connector = self._connectors.get(connector_id)
        if connector is None:
            raise ConnectorNotFoundError(connector_id)
        return connector

    def _prepare(self, connector: Connector) -> _Prepared:
        """Compiled once per connector version (versions never repeat for an id)."""
        key = (connector.id, connector.version, connector.source, connector.update_time)
        return self._prepared.get(key, lambda: _Prepared.of(connector, self._bindings))

    def _authorise(
        self, connector: Connector, rendered: OutboundRequest, sent: list[str]
    ) -> tuple[OutboundRequest, ClientCredentials | None]:
        """The request with its credential, and the OAuth2 client's credentials (or None); a
        missing secret says where it was looked for."""
        resolve = self._secrets.resolve
        try:
            return authorise(connector, rendered, resolve, sent), client_credentials(
                connector, resolve
            )
        except MissingSecretError as missing:
            searched = self._secrets.searched(missing.name)
            raise MissingSecretError(missing.name, connector.id, searched) from None

    async def _exchange(
        self,
        request: OutboundRequest,
        credentials: ClientCredentials | None,
        options: SendOptions,
        sent: list[str],
    ) -> HttpResponse:
        """The one send, or for OAuth2 client credentials the send with a token (and one retry
        with a fresh token after a 401); the tokens and the client secret join `sent`."""
        if credentials is None:
            return await self._send(request, options)
        if self._tokens is None:
            raise TokenError("this sidecar was built without an OAuth2 token cache")
        sent.append(credentials.client_secret)
        return await send_with_token(self._send, self._tokens, credentials, request, options, sent)


@dataclass(frozen=True, slots=True)
class _Prepared:
    """What one connector version needs on every call, worked out once."""

    template: RequestTemplate
    options: SendOptions
    size: int = COMPILED_OVERHEAD_BYTES
    # What the bindings refuse this version to send (raised at send time, after its secrets
    # were resolved): checked against the engine's bindings, which may have changed since the
    # connector was registered, and which stay the same for the engine's life.
    refusals: tuple[str, ...] = ()

    @classmethod
    def of(cls, connector: Connector, bindings: SecretBindings) -> _Prepared:
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
            cache=_cache_options(connector),
        )
        source = len(connector.url_template) + sum(
            len(name) + len(value) for name, value in connector.headers.items()
        )
        source += sum(len(name) + len(value) for name, value in connector.query.items())
        if connector.body_template is not None:
            source += json_size(connector.body_template, 1 << 40)
        refusals = tuple(binding_refusals(connector, bindings))
        return cls(compile_request(connector), options, compiled_size(source), refusals)


def _cache_options(connector: Connector) -> CacheOptions | None:
    policy = connector.cache
    if policy is None:
        return None
    return CacheOptions(
        ttl_seconds=policy.ttl.total_seconds(),
        stale_while_revalidate_seconds=policy.stale_while_revalidate.total_seconds(),
        stale_if_error_seconds=policy.stale_if_error.total_seconds(),
        max_entry_bytes=policy.max_entry_bytes,
        ignore_cache_control=policy.ignore_cache_control,
        call_timeout_seconds=connector.timeout.total_seconds(),
        connector_version=connector.version,
    )


def _carrying(outcome: Outcome, sent_secrets: list[str]) -> Outcome:  # failures only
    """The outcome with the secret values its request carried (masked where it is answered)."""
    return replace(outcome, secret_values=tuple(sent_secrets)) if sent_secrets else outcome


def _check_live(connector: Connector, *, allow_draft: bool) -> None:
    """LIVE connectors run; DRAFT ones only in test mode; DISABLED ones never."""
    status = connector.status
    if status is ConnectorStatus.DISABLED or (status is ConnectorStatus.DRAFT and not allow_draft):
        hint = " (use test mode to run drafts)" if status is ConnectorStatus.DRAFT else ""
        raise ConnectorNotLiveError(f"connector {connector.id!r} is {status.value}{hint}")


def _exchange_timeout(options: SendOptions, budget: Budget) -> float:
    """Seconds the exchange may take: the connector's timeout, within the evaluation's budget."""
    seconds = min(options.timeout_seconds, budget.remaining())
    if seconds <= 0:
        raise DeadlineExhaustedError("the caller's deadline leaves no time for the call")
    return seconds


def _check_cost(queries: int, document_bytes: int, limits: WorkLimits) -> None:
    """Refuse to judge when the queries over the document could cost more than the limit."""
    cost = queries * document_bytes
    if cost > limits.max_node_cost_bytes:
        raise LimitExceededError(
            f"{queries} body queries over a {document_bytes}-byte document cost {cost} bytes, "
            f"over max_node_cost_bytes ({limits.max_node_cost_bytes})"
        )


def _judge(
    compiled: CompiledNode,
    connector: Connector,
    response: HttpResponse,
    variables: Mapping[str, Any],
    budget: Budget,
    *,
    latency: float,
    explain: bool,
    request: RenderedRequest | None,
    secret_values: tuple[str, ...] = (),
    explain_value_bytes: int | None = None,
    max_answer_bytes: int | None = None,
) -> Outcome:
    """Decide the branch and extract, from a response that arrived (spending from budget)."""
    node = compiled.node
    budget.spend(1 + len(response.body) // 256)  # parsing, as a slice of the on-loop work
    body, body_is_json, note = _parse_body(response)
    view = ResponseView(response.status, response.headers, body, body_is_json, variables, budget)
    decision = compiled.branches.decide(view, explain=explain, value_bytes=explain_value_bytes)
    extracted, results = compiled.extractions.apply(
        body, has_document=body_is_json, budget=budget, max_answer_bytes=max_answer_bytes
    )
    branch_index = decision.index
    message = ""
    if branch_index is not None:
        failed = required_failures(results)
        if failed:
            names = ", ".join(result.variable for result in failed)
            kind, reason, target = OutcomeKind.ERROR, Reason.EXTRACTION_FAILED, node.error_target
            message = f"required extraction failed: {names}"
            branch_index = None
        else:
            kind, reason = OutcomeKind.MATCHED, Reason.BRANCH_MATCHED
            target = node.branches[branch_index].target
    elif response.status >= 500:
        kind, reason, target = OutcomeKind.ERROR, Reason.UPSTREAM_ERROR, node.error_target
        message = f"the upstream answered {response.status} and no branch matched it"
    else:
        kind, reason, target = OutcomeKind.NO_MATCH, Reason.NO_BRANCH_MATCHED, node.else_target
    return Outcome(  # built once, with what it carries: no copy per evaluation
        kind,
        reason,
        target,
        message=message,
        branch_index=branch_index,
        variables=extracted,
        extractions=results,
        http_status=response.status,
        upstream_latency_seconds=latency,
        attempts=response.attempts,
        connector_version=connector.version,
        explanation=Explanation(request, decision.explanations, _notes(note, response))
        if explain
        else None,
        cache_status=response.cache_status,
        cache_age_seconds=response.cache_age_seconds,
        secret_values=secret_values,
    )


def _notes(body_note: str, response: HttpResponse) -> tuple[str, ...]:
    """An explanation's notes: the body's, and how the response cache answered (if in play)."""
    notes = (body_note,) if body_note else ()
    status = response.cache_status
    if status is None:
        return notes
    age = response.cache_age_seconds
    return (*notes, f"response cache: {status.value}, the response is {age:.1f}s old")


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


def _failed(
    compiled: CompiledNode,
    failure: EvaluationFailure,
    connector: Connector | None,
    rendered: OutboundRequest | None,
    started: float | None,
    *,
    explain: bool,
    response: HttpResponse | None = None,
) -> Outcome:
    """The ERROR outcome for a failure, with what the evaluation had reached when it struck.

    Once the request was sent (`started`), the outcome carries the attempts, the time spent and
    the extractions' defaults, as an answer without a document would; once a response arrived
    (judging failed), its status and attempts too.
    """
    sent = started is not None
    latency = time.perf_counter() - started if started is not None else 0.0
    attempts = failure.attempts if isinstance(failure, SendError) else 0
    if response is not None:
        attempts = response.attempts
    variables, results = compiled.extractions.apply(None, has_document=False) if sent else ({}, ())
    request = (
        masked_request(connector, rendered)
        if explain and connector is not None and rendered is not None
        else None
    )
    return Outcome(
        OutcomeKind.ERROR,
        failure.reason,
        compiled.node.error_target,
        message=failure.message,
        variables=variables,
        extractions=results,
        http_status=response.status if response is not None else 0,
        attempts=attempts,
        upstream_latency_seconds=latency,
        connector_version=connector.version if connector is not None else 0,
        explanation=Explanation(request, (), (f"no branch was evaluated: {failure.message}",))
        if explain
        else None,
    )
