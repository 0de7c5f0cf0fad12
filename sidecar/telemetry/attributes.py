"""The names telemetry records under: ours (`rules_sidecar.`) and the OpenTelemetry semantic
conventions' (stable HTTP client, RPC). Spans, metrics and the evaluation log line share them,
so a dashboard, a trace and a log search use one vocabulary.
"""

from __future__ import annotations

from typing import Final

# Our attributes (spans, metrics and the evaluation log line use the same names).
CONNECTOR_ID: Final = "rules_sidecar.connector.id"
CONNECTOR_VERSION: Final = "rules_sidecar.connector.version"
NODE_ID: Final = "rules_sidecar.node.id"
OUTCOME: Final = "rules_sidecar.outcome"
REASON: Final = "rules_sidecar.reason"
BRANCH_INDEX: Final = "rules_sidecar.branch_index"
ATTEMPTS: Final = "rules_sidecar.attempts"
CACHE_STATUS: Final = "rules_sidecar.cache.status"
CACHE_AGE: Final = "rules_sidecar.cache.age_seconds"
# Semantic-convention attributes.
ERROR_TYPE: Final = "error.type"
HTTP_REQUEST_METHOD: Final = "http.request.method"
HTTP_RESEND_COUNT: Final = "http.request.resend_count"
HTTP_STATUS_CODE: Final = "http.response.status_code"
SERVER_ADDRESS: Final = "server.address"
SERVER_PORT: Final = "server.port"
URL_FULL: Final = "url.full"
URL_SCHEME: Final = "url.scheme"
RPC_SYSTEM: Final = "rpc.system"
RPC_SERVICE: Final = "rpc.service"
RPC_METHOD: Final = "rpc.method"
RPC_GRPC_STATUS_CODE: Final = "rpc.grpc.status_code"
CPU_MODE: Final = "cpu.mode"

# A connector id the registry does not know is caller input: it never becomes a metric label.
UNKNOWN_CONNECTOR: Final = "_OTHER"
