"""The one egress opening the tests use: exactly 127.0.0.1, over plain http.

The egress guard refuses loopback and plain http by default; the test upstreams are both, so
the tests open exactly 127.0.0.1 over http, as an operator would. Every secret a connector uses
must be bound to its hosts (secret_hosts), so the secrets the suites use are bound to exactly
127.0.0.1 too. Spelled once for each way in: setting overrides, an EgressPolicy, and
RULES_SIDECAR_* variables for a subprocess.
"""

from __future__ import annotations

import json
from typing import Any

from sidecar.egress.policy import EgressPolicy
from sidecar.settings import ENV_PREFIX

HOST = "127.0.0.1"
# The secrets the suites' connectors use with loopback upstreams.
TEST_SECRET_NAMES = (
    "canary_key",
    "canary_token",
    "canary_user",
    "crm_token",
    "erp.password",
    "erp.user",
    "not_provisioned",
    "other_key",
    "password",
    "sk",
    "store_api_key",
    "store_token",
    "user",
)
LOOPBACK_SECRET_HOSTS: dict[str, list[str]] = {name: [HOST] for name in TEST_SECRET_NAMES}
LOOPBACK_ALLOW: dict[str, Any] = {
    "egress_allow_cidrs": [f"{HOST}/32"],
    "egress_allow_http_hosts": [HOST],
    "secret_hosts": LOOPBACK_SECRET_HOSTS,
}
LOOPBACK_POLICY = EgressPolicy(
    allow_cidrs=tuple(LOOPBACK_ALLOW["egress_allow_cidrs"]),
    allow_http_hosts=tuple(LOOPBACK_ALLOW["egress_allow_http_hosts"]),
)
LOOPBACK_ENVIRONMENT: dict[str, str] = {
    f"{ENV_PREFIX}{name.upper()}": json.dumps(value) for name, value in LOOPBACK_ALLOW.items()
}
