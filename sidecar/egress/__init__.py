"""The egress: every outbound HTTP request leaves through `Egress.send` (see `client`).

`policy` judges where a request may go, `transport` performs one exchange, `breaker` isolates a
failing upstream.
"""

from sidecar.egress.client import Egress, EgressLimits
from sidecar.egress.policy import EgressPolicy

__all__ = ["Egress", "EgressLimits", "EgressPolicy"]
