"""Evaluation failures: what stops one evaluation, answered as an ERROR outcome with a reason.

The tree is drawn in `sidecar.errors`, beside SidecarError's. It lives here, in the model, because
each failure carries the model's `Reason` and sidecar.errors imports nothing of sidecar. The
steps of `sidecar.core.engine` (and the egress's `send`) raise these; `Engine.evaluate` catches
the family once. Only these travel inside the core: foreign exceptions are translated where
they arise.
"""

from __future__ import annotations

from sidecar.core.model.outcome import Reason


# "Failure", not "Error": each one is an answer (an ERROR outcome), not a fault of the sidecar.
class EvaluationFailure(Exception):  # noqa: N818
    """Root of what stops one evaluation; answered as an ERROR outcome with `reason`.

    >>> failure = EvaluationFailure(Reason.TIMEOUT, "the upstream did not answer in time")
    >>> (failure.reason, str(failure))
    (<Reason.TIMEOUT: 'TIMEOUT'>, 'the upstream did not answer in time')
    """

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class ConnectorNotFoundError(EvaluationFailure):
    """No connector has the node's connector_id."""

    def __init__(self, connector_id: str) -> None:
        super().__init__(Reason.CONNECTOR_NOT_FOUND, f"no connector with id {connector_id!r}")


class ConnectorNotLiveError(EvaluationFailure):
    """The connector is DISABLED, or a DRAFT outside test mode."""

    def __init__(self, message: str) -> None:
        super().__init__(Reason.CONNECTOR_NOT_LIVE, message)


class RenderError(EvaluationFailure):
    """A variable cannot be placed in the request, so nothing may be sent.

    `reason` is MISSING_VARIABLE or INVALID_VARIABLE; `variable` the dotted name; `position`
    where it was needed. The message never contains the value.

        >>> error = RenderError(Reason.MISSING_VARIABLE, "customer.email", "body", "is missing")
        >>> str(error)
        "variable 'customer.email' is missing (needed in body)"
    """

    def __init__(self, reason: Reason, variable: str, position: str, problem: str) -> None:
        super().__init__(reason, f"variable {variable!r} {problem} (needed in {position})")
        self.variable = variable
        self.position = position


class MissingSecretError(EvaluationFailure):
    """A secret the connector's auth needs resolves to nothing; `name` says which, `searched`
    where it was looked for (so the operator knows which file or variable to create)."""

    def __init__(self, name: str, connector_id: str, searched: str = "") -> None:
        message = f"secret {name!r} of connector {connector_id!r} is not available"
        super().__init__(Reason.SECRET_NOT_FOUND, f"{message}: {searched}" if searched else message)
        self.name = name
        self.connector_id = connector_id


class SecretBindingError(EvaluationFailure):
    """A secret the connector carries is bound to other hosts than the connector's URL host."""

    def __init__(self, message: str) -> None:
        super().__init__(Reason.BLOCKED_DESTINATION, message)


class DeadlineExhaustedError(EvaluationFailure):
    """The caller's deadline leaves no time for the upstream call, so none is made."""

    def __init__(self, message: str) -> None:
        super().__init__(Reason.TIMEOUT, message)


class SendError(EvaluationFailure):
    """No usable response: the reason says why (TIMEOUT, CONNECT_ERROR, DNS_ERROR ...).

    `attempts` counts the exchanges tried (0 when none was); `retryable` is True when no
    connection was ever established, so trying again cannot repeat a side effect.
    """

    def __init__(
        self, reason: Reason, message: str, *, attempts: int = 1, retryable: bool = False
    ) -> None:
        super().__init__(reason, message)
        self.attempts = attempts
        self.retryable = retryable


class TokenError(SendError):
    """The connector's OAuth2 token endpoint gave no usable token, so the API was not called
    with one. The message names the endpoint and what went wrong, never a secret or a token;
    `attempts` counts the API exchanges already made (a token refresh after a 401 can fail)."""

    def __init__(self, message: str, *, attempts: int = 0) -> None:
        super().__init__(Reason.AUTH_TOKEN_ERROR, message, attempts=attempts)


class CastError(EvaluationFailure):
    """A value does not fit the requested cast; the message says why, without the value."""

    def __init__(self, message: str) -> None:
        super().__init__(Reason.EXTRACTION_FAILED, message)
