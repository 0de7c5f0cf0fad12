"""Domain models, free of gRPC, protobuf and HTTP: connectors, nodes and outcomes.

connector  what to call (registered, versioned, immutable)
node       what to decide (sent with each EvaluateNode call)
outcome    what the evaluation answers
exchange   what crosses to the egress and back: request, options, response
failures   what stops an evaluation (the EvaluationFailure tree drawn in sidecar.errors)
"""

from sidecar.core.model.connector import (
    ApiKeyAuth,
    ApiKeyLocation,
    Auth,
    BasicAuth,
    BearerAuth,
    CachePolicy,
    ClientAuthMethod,
    Connector,
    ConnectorSource,
    ConnectorStatus,
    HttpMethod,
    OAuth2ClientCredentialsAuth,
)
from sidecar.core.model.node import (
    Branch,
    CastType,
    Combinator,
    Condition,
    Extraction,
    Node,
    Operator,
    Quantifier,
    Subject,
    SubjectKind,
)
from sidecar.core.model.outcome import (
    BranchExplanation,
    CacheStatus,
    ConditionExplanation,
    Explanation,
    ExtractionResult,
    ExtractionStatus,
    Outcome,
    OutcomeKind,
    Reason,
    RenderedRequest,
)

__all__ = [
    "ApiKeyAuth",
    "ApiKeyLocation",
    "Auth",
    "BasicAuth",
    "BearerAuth",
    "Branch",
    "BranchExplanation",
    "CachePolicy",
    "CacheStatus",
    "CastType",
    "ClientAuthMethod",
    "Combinator",
    "Condition",
    "ConditionExplanation",
    "Connector",
    "ConnectorSource",
    "ConnectorStatus",
    "Explanation",
    "Extraction",
    "ExtractionResult",
    "ExtractionStatus",
    "HttpMethod",
    "Node",
    "OAuth2ClientCredentialsAuth",
    "Operator",
    "Outcome",
    "OutcomeKind",
    "Quantifier",
    "Reason",
    "RenderedRequest",
    "Subject",
    "SubjectKind",
]
