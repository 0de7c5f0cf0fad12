"""The egress: every outbound HTTP request leaves through `Egress.send` (see `client`).

`policy` judges where a request may go, `transport` performs one exchange (on `pool`'s
keep-alive connections, which speak `http1`), `breaker` isolates a failing upstream, `cache` answers
connectors that opt in from memory and shares identical calls in flight, `oauth` fetches OAuth2
client credentials tokens through `Egress.send`. `Resolver` and `ConnectorFactory` (a socket
opener) are the seams the composition root passes through to the transport (tests fill them
with a fake DNS and an opener that records and refuses).
"""

from sidecar.egress.cache import ResponseCache
from sidecar.egress.client import Egress, EgressLimits
from sidecar.egress.policy import EgressPolicy
from sidecar.egress.pool import Resolver
from sidecar.egress.transport import ConnectorFactory

__all__ = [
    "ConnectorFactory",
    "Egress",
    "EgressLimits",
    "EgressPolicy",
    "Resolver",
    "ResponseCache",
]
