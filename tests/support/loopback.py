"""The one egress opening the tests use: exactly 127.0.0.1, over plain http.

The egress guard refuses loopback and plain http by default; the test upstreams are both, so
the tests open exactly 127.0.0.1 over http, as an operator would. Spelled once for each way in:
setting overrides, an EgressPolicy, and RULES_SIDECAR_* variables for a subprocess.
"""

from __future__ import annotations

import json

from sidecar.egress.policy import EgressPolicy
from sidecar.settings import ENV_PREFIX

HOST = "127.0.0.1"
LOOPBACK_ALLOW: dict[str, list[str]] = {
    "egress_allow_cidrs": [f"{HOST}/32"],
    "egress_allow_http_hosts": [HOST],
}
LOOPBACK_POLICY = EgressPolicy(
    allow_cidrs=tuple(LOOPBACK_ALLOW["egress_allow_cidrs"]),
    allow_http_hosts=tuple(LOOPBACK_ALLOW["egress_allow_http_hosts"]),
)
LOOPBACK_ENVIRONMENT: dict[str, str] = {
    f"{ENV_PREFIX}{name.upper()}": json.dumps(value) for name, value in LOOPBACK_ALLOW.items()
}
