"""The Helm chart, rendered: probes, security context, volumes, native-sidecar shape, settings.

Renders deploy/helm/rules-sidecar (standalone, and its ci/ values sets) and the example chart that
includes it in sidecar mode (deploy/examples/chat-backend) with `helm template`, and asserts on the
objects. Schema validation of the same renders is scripts/check-chart's job. Needs helm: the one
scripts/check-chart installs (.tools/go/bin/helm), else one on PATH.
"""

from __future__ import annotations

import base64
import json
import os
import re
import runpy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.settings import ENV_PREFIX, Settings

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "deploy" / "helm" / "rules-sidecar"
EXAMPLE = REPO / "deploy" / "examples" / "chat-backend"
KUBERNETES = "1.31.0"
HELM = next(
    (
        str(candidate)
        for candidate in (REPO / ".tools" / "go" / "bin" / "helm", shutil.which("helm"))
        if candidate and Path(candidate).is_file()
    ),
    None,
)

pytestmark = pytest.mark.skipif(
    HELM is None, reason="helm is not installed: run scripts/check-chart (make check-chart) first"
)

Manifest = dict[str, Any]


def helm(*arguments: str) -> subprocess.CompletedProcess[str]:
    assert HELM is not None
    return subprocess.run(
        [HELM, *arguments], capture_output=True, text=True, check=False, timeout=120
    )


def render(chart: Path, *arguments: str, kubernetes: str = KUBERNETES) -> list[Manifest]:
    result = helm("template", "shop", str(chart), "--kube-version", kubernetes, *arguments)
    assert result.returncode == 0, result.stderr
    return [document for document in yaml.safe_load_all(result.stdout) if document]


def render_error(chart: Path, *arguments: str, kubernetes: str = KUBERNETES) -> str:
    result = helm("template", "shop", str(chart), "--kube-version", kubernetes, *arguments)
    assert result.returncode != 0, "expected helm template to fail"
    return result.stderr


def one(manifests: list[Manifest], kind: str) -> Manifest:
    found = [manifest for manifest in manifests if manifest["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod_spec(manifests: list[Manifest]) -> dict[str, Any]:
    spec: dict[str, Any] = one(manifests, "Deployment")["spec"]["template"]["spec"]
    return spec


def sidecar_container(spec: dict[str, Any], name: str = "rules-sidecar") -> dict[str, Any]:
    containers = [*(spec.get("initContainers") or []), *spec["containers"]]
    found = [container for container in containers if container["name"] == name]
    assert len(found) == 1
    return found[0]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


@pytest.fixture(scope="module")
def example_dependencies() -> None:
    """Vendor the rules-sidecar chart into the example's charts/ (gitignored), as CI does."""
    result = helm("dependency", "update", "--skip-refresh", str(EXAMPLE))
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def sidecar_mode(example_dependencies: None) -> list[Manifest]:
    return render(EXAMPLE)


@pytest.fixture(scope="module")
def plain_container_mode(example_dependencies: None) -> list[Manifest]:
    return render(EXAMPLE, "--set", "rulesSidecar.nativeSidecar=false", kubernetes="1.27.0")


@pytest.fixture(scope="module")
def standalone_mode() -> list[Manifest]:
    return render(CHART, "-f", str(CHART / "ci" / "standalone-values.yaml"))


@pytest.fixture(scope="module")
def all_options() -> list[Manifest]:
    return render(CHART, "-f", str(CHART / "ci" / "all-options-values.yaml"))


MODES = ["sidecar_mode", "plain_container_mode", "standalone_mode", "all_options"]


def container_in(request: pytest.FixtureRequest, mode: str) -> tuple[dict[str, Any], Any]:
    manifests = request.getfixturevalue(mode)
    spec = pod_spec([m for m in manifests if m["kind"] == "Deployment"])
    name = "rules" if mode == "all_options" else "rules-sidecar"
    return sidecar_container(spec, name), manifests


# ---------------------------------------------------------------------------------------------
# Sidecar mode: the named templates in a user's pod
# ---------------------------------------------------------------------------------------------


def test_native_sidecar_is_an_init_container_that_restarts_always(sidecar_mode):
    spec = pod_spec(sidecar_mode)
    init_names = [container["name"] for container in spec["initContainers"]]
    assert init_names == ["rules-sidecar"]
    assert spec["initContainers"][0]["restartPolicy"] == "Always"
    assert [container["name"] for container in spec["containers"]] == ["chat-backend"]
    # A native sidecar is stopped after the app: no preStop sleep needed.
    assert "lifecycle" not in spec["initContainers"][0]


def test_plain_container_fallback_runs_beside_the_app_and_outlives_its_drain(
    plain_container_mode,
):
    spec = pod_spec(plain_container_mode)
    assert not spec.get("initContainers")
    names = [container["name"] for container in spec["containers"]]
    assert names == ["chat-backend", "rules-sidecar"]
    sidecar = spec["containers"][1]
    assert "restartPolicy" not in sidecar
    assert sidecar["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]


def test_native_sidecar_is_refused_before_kubernetes_1_29_with_a_way_out(example_dependencies):
    message = render_error(EXAMPLE, kubernetes="1.28.0")
    assert "nativeSidecar needs Kubernetes >= 1.29" in message
    assert "nativeSidecar: false" in message


def test_sidecar_mode_renders_the_connectors_configmap_the_pod_mounts(sidecar_mode):
    configmap = one(sidecar_mode, "ConfigMap")
    volumes = {volume["name"]: volume for volume in pod_spec(sidecar_mode)["volumes"]}
    assert volumes["rules-sidecar-connectors"]["configMap"]["name"] == configmap["metadata"]["name"]
    connectors = yaml.safe_load(configmap["data"]["connectors.yaml"])
    assert [connector["id"] for connector in connectors["connectors"]] == ["order-status"]
    assert not [m for m in sidecar_mode if m["kind"] in ("Service", "ServiceAccount")][1:]


def test_pod_grace_period_covers_the_app_drain_then_the_sidecar_drain(
    sidecar_mode, plain_container_mode
):
    # app drain 15 + sidecar drain 10 + 5; the plain container adds its 5 s preStop sleep.
    assert pod_spec(sidecar_mode)["terminationGracePeriodSeconds"] == 30
    assert pod_spec(plain_container_mode)["terminationGracePeriodSeconds"] == 35


def test_app_reaches_the_sidecar_on_loopback(sidecar_mode):
    app = sidecar_container(pod_spec(sidecar_mode), "chat-backend")
    assert env_of(app)["RULES_SIDECAR_ADDRESS"] == "127.0.0.1:50051"


# ---------------------------------------------------------------------------------------------
# Every mode: probes, security, volumes, resources, settings
# ---------------------------------------------------------------------------------------------


def container_ports(container: dict[str, Any]) -> dict[str, int]:
    return {port["name"]: port["containerPort"] for port in container["ports"]}


@pytest.mark.parametrize("mode", MODES)
def test_probes_are_native_grpc_on_the_numeric_health_port(request, mode):
    container, _ = container_in(request, mode)
    port = container_ports(container)["health"]
    services = {}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        grpc_probe = container[probe]["grpc"]
        assert isinstance(grpc_probe["port"], int)
        assert grpc_probe["port"] == port
        assert set(container[probe]) >= {"grpc", "periodSeconds", "failureThreshold"}
        services[probe] = grpc_probe["service"]
    assert services == {
        "startupProbe": "",
        "readinessProbe": "rulesidecar.v1.RulesSidecarService",
        "livenessProbe": "",
    }


@pytest.mark.parametrize("mode", MODES)
def test_health_listens_on_the_pod_ip_at_the_probed_port(request, mode):
    container, _ = container_in(request, mode)
    address = env_of(container)["RULES_SIDECAR_HEALTH_LISTEN_ADDRESS"]
    assert address.rpartition(":")[2] == str(container_ports(container)["health"])
    assert not address.startswith("127.")


@pytest.mark.parametrize("mode", ["sidecar_mode", "plain_container_mode"])
def test_sidecar_mode_api_listens_on_loopback_only(request, mode):
    container, _ = container_in(request, mode)
    app = sidecar_container(pod_spec(request.getfixturevalue(mode)), "chat-backend")
    address = env_of(container)["RULES_SIDECAR_LISTEN_ADDRESS"]
    assert address == "127.0.0.1:50051" == env_of(app)["RULES_SIDECAR_ADDRESS"]
    assert "grpc" not in container_ports(container)  # nothing to reach from outside the pod


@pytest.mark.parametrize("mode", ["standalone_mode", "all_options"])
def test_standalone_api_listens_on_the_pod_ip_behind_the_service_with_tokens(request, mode):
    container, manifests = container_in(request, mode)
    env = env_of(container)
    api_port = container_ports(container)["grpc"]
    assert env["RULES_SIDECAR_LISTEN_ADDRESS"].rpartition(":")[::2] in (
        ("0.0.0.0", str(api_port)),
        ("[::]", str(api_port)),
    )
    assert api_port != container_ports(container)["health"]
    assert one(manifests, "Service")["spec"]["ports"][0]["targetPort"] == "grpc"
    assert env["RULES_SIDECAR_ADMIN_TOKEN_FILE"]  # protected mode: the server needs a token


@pytest.mark.parametrize("mode", MODES)
def test_container_security_context_is_restricted(request, mode):
    container, _ = container_in(request, mode)
    context = container["securityContext"]
    assert context["runAsNonRoot"] is True
    assert isinstance(context["runAsUser"], int)
    assert context["runAsUser"] > 0
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}


@pytest.mark.parametrize("mode", MODES)
def test_volumes_are_directories_and_the_store_is_writable(request, mode):
    container, manifests = container_in(request, mode)
    spec = pod_spec([m for m in manifests if m["kind"] == "Deployment"])
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    mounts = {mount["name"]: mount for mount in container["volumeMounts"]}
    assert not [mount for mount in container["volumeMounts"] if "subPath" in mount]
    env = env_of(container)
    prefix = container["volumeMounts"][0]["name"].rpartition("-")[0]
    connectors, secrets, store = (
        mounts[f"{prefix}-{role}"] for role in ("connectors", "secrets", "data")
    )
    assert "configMap" in volumes[connectors["name"]]
    assert "secret" in volumes[secrets["name"]]
    assert env["RULES_SIDECAR_CONNECTORS_FILE"].startswith(connectors["mountPath"] + "/")
    assert env["RULES_SIDECAR_SECRETS_DIR"] == secrets["mountPath"]
    assert connectors["readOnly"] is True
    assert secrets["readOnly"] is True
    assert {"emptyDir", "persistentVolumeClaim"} & set(volumes[store["name"]])
    assert env["RULES_SIDECAR_DATA_DIR"] == store["mountPath"]
    assert not store.get("readOnly", False)


@pytest.mark.parametrize("mode", ["sidecar_mode", "all_options"])
def test_access_tokens_come_from_their_own_secret_not_the_connectors_secrets(request, mode):
    container, manifests = container_in(request, mode)
    spec = pod_spec([m for m in manifests if m["kind"] == "Deployment"])
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    env = env_of(container)
    token_file = env["RULES_SIDECAR_EVALUATION_TOKEN_FILE"]
    token_volume = volumes[mounts[token_file.rpartition("/")[0]]]
    secrets_volume = volumes[mounts[env["RULES_SIDECAR_SECRETS_DIR"]]]
    assert token_volume["secret"]["secretName"] != secrets_volume["secret"]["secretName"]
    # The example has no admin token: connectors come only from the ConfigMap there.
    assert ("RULES_SIDECAR_ADMIN_TOKEN_FILE" in env) is (mode == "all_options")


def test_tls_settings_are_refused_because_grpc_probes_speak_plaintext():
    message = render_error(
        CHART,
        "--set",
        "mode=standalone,accessTokens.generate=true",
        "--set",
        "settings.tls_cert_file=/tls/tls.crt",
    )
    assert "cannot speak TLS" in message


@pytest.mark.parametrize("mode", MODES)
def test_resources_are_requested_and_memory_is_limited(request, mode):
    container, _ = container_in(request, mode)
    resources = container["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"}
    assert "memory" in resources["limits"]


@pytest.mark.parametrize("mode", MODES)
def test_every_sidecar_variable_is_a_known_setting(request, mode):
    """The sidecar refuses unknown RULES_SIDECAR_* variables at startup; the chart sets none."""
    container, _ = container_in(request, mode)
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    variables = {name for name in env_of(container) if name.startswith(ENV_PREFIX)}
    assert variables
    assert variables <= known, variables - known


@pytest.mark.parametrize("mode", MODES)
def test_container_runs_the_image_command_line(request, mode):
    container, _ = container_in(request, mode)
    assert "command" not in container
    assert "args" not in container


# ---------------------------------------------------------------------------------------------
# Standalone mode
# ---------------------------------------------------------------------------------------------


def test_standalone_renders_a_deployment_service_and_account_without_a_token(standalone_mode):
    kinds = sorted(manifest["kind"] for manifest in standalone_mode)
    assert kinds == ["ConfigMap", "Deployment", "Secret", "Service", "ServiceAccount"]
    account = one(standalone_mode, "ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    spec = pod_spec(standalone_mode)
    assert spec["automountServiceAccountToken"] is False
    assert spec["serviceAccountName"] == account["metadata"]["name"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    service = one(standalone_mode, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "grpc"


def test_standalone_without_access_tokens_is_refused_naming_the_fixes():
    message = render_error(CHART, "--set", "mode=standalone")
    assert "standalone mode exposes the API" in message
    assert "accessTokens.existingSecret" in message
    assert "accessTokens.generate: true" in message
    assert "settings.allow_unprotected_api: true" in message


def test_standalone_unprotected_renders_only_when_the_setting_says_so():
    manifests = render(
        CHART, "--set", "mode=standalone", "--set", "settings.allow_unprotected_api=true"
    )
    env = env_of(sidecar_container(pod_spec(manifests)))
    assert env["RULES_SIDECAR_ALLOW_UNPROTECTED_API"] == "true"
    assert "RULES_SIDECAR_ADMIN_TOKEN_FILE" not in env


def test_generated_tokens_are_random_and_mounted_where_the_server_reads_them(standalone_mode):
    secret = next(m for m in standalone_mode if m["metadata"]["name"].endswith("-tokens"))
    assert secret["kind"] == "Secret"
    tokens = {key: base64.b64decode(value) for key, value in secret["data"].items()}
    assert set(tokens) == {"admin-token", "evaluation-token"}
    assert all(len(token) == 40 for token in tokens.values())
    assert tokens["admin-token"] != tokens["evaluation-token"]
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    spec = pod_spec(standalone_mode)
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    assert volumes["rules-sidecar-tokens"]["secret"]["secretName"] == secret["metadata"]["name"]
    env = env_of(sidecar_container(spec))
    assert env["RULES_SIDECAR_ADMIN_TOKEN_FILE"] == "/etc/rules-sidecar/tokens/admin-token"


def test_the_api_and_health_ports_must_differ():
    message = render_error(
        CHART, "-f", str(CHART / "ci" / "standalone-values.yaml"), "--set", "healthPort=50051"
    )
    assert "port and healthPort are both 50051" in message


def test_standalone_grace_period_covers_the_prestop_sleep_and_the_drain(standalone_mode):
    spec = pod_spec(standalone_mode)
    container = sidecar_container(spec)
    sleep = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    drain = float(env_of(container)["RULES_SIDECAR_SHUTDOWN_GRACE_SECONDS"])
    assert spec["terminationGracePeriodSeconds"] >= sleep + drain


def test_too_short_a_grace_period_is_refused():
    message = render_error(
        CHART,
        "-f",
        str(CHART / "ci" / "standalone-values.yaml"),
        "--set",
        "terminationGracePeriodSeconds=5",
    )
    assert "terminationGracePeriodSeconds (5) is shorter" in message


def test_every_option_on_renders_budget_autoscaler_and_network_policy(all_options):
    kinds = sorted(manifest["kind"] for manifest in all_options)
    assert kinds == [
        "ConfigMap",  # the Grafana dashboard (the connectors come from an existing ConfigMap)
        "Deployment",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "PodMonitor",
        "PrometheusRule",
        "Secret",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    ]
    deployment = one(all_options, "Deployment")
    assert "replicas" not in deployment["spec"]  # the autoscaler owns it
    assert one(all_options, "Service")["spec"]["clusterIP"] == "None"
    policy = one(all_options, "NetworkPolicy")
    assert policy["spec"]["ingress"][0]["ports"] == [{"port": 50052, "protocol": "TCP"}]
    # The metrics port, from the monitoring namespace only: never the API port from there.
    assert policy["spec"]["ingress"][1] == {
        "ports": [{"port": 9464, "protocol": "TCP"}],
        "from": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ],
    }


def test_otel_variables_are_wired_when_enabled_and_disabled_otherwise(all_options, standalone_mode):
    env = env_of(sidecar_container(pod_spec(all_options), "rules"))
    assert env["OTEL_SERVICE_NAME"] == "shop-rules-sidecar"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability:4317"
    assert "k8s.pod.name=$(POD_NAME)" in env["OTEL_RESOURCE_ATTRIBUTES"]
    assert "deployment.environment=production" in env["OTEL_RESOURCE_ATTRIBUTES"]
    assert env["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
    assert "OTEL_SDK_DISABLED" not in env
    assert env_of(sidecar_container(pod_spec(standalone_mode)))["OTEL_SDK_DISABLED"] == "true"


def test_settings_are_passed_as_variables_and_structured_ones_as_json(all_options):
    env = env_of(sidecar_container(pod_spec(all_options), "rules"))
    assert env["RULES_SIDECAR_EGRESS_ALLOW_CIDRS"] == '["10.20.0.0/16"]'
    assert env["RULES_SIDECAR_MAX_CONCURRENT_EVALUATIONS"] == "256"
    settings = Settings.load(
        overrides={"secret_hosts": yaml.safe_load(env["RULES_SIDECAR_SECRET_HOSTS"])}
    )
    assert settings.secret_hosts["crm_token"] == ["*.crm.example.com"]


def otel_config_of(env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    """What the sidecar would switch on given this rendered environment."""
    from sidecar.server import telemetry_config

    for name in list(os.environ):
        if name.startswith(("OTEL_", ENV_PREFIX)):
            monkeypatch.delenv(name)
    for name, value in env.items():
        if isinstance(value, str) and name.startswith(("OTEL_", "RULES_SIDECAR_METRICS")):
            monkeypatch.setenv(name, value)
    return telemetry_config(Settings.load())


def test_otel_disabled_never_switches_off_the_prometheus_endpoint(monkeypatch, standalone_mode):
    with_metrics = render(
        CHART,
        "-f",
        str(CHART / "ci" / "standalone-values.yaml"),
        "--set",
        "metrics.prometheusPort=9464",
    )
    env = env_of(sidecar_container(pod_spec(with_metrics)))
    assert "OTEL_SDK_DISABLED" not in env
    assert (env["OTEL_TRACES_EXPORTER"], env["OTEL_METRICS_EXPORTER"]) == ("none", "none")
    config = otel_config_of(env, monkeypatch)
    assert config.prometheus == ("0.0.0.0", 9464)
    assert (config.traces, config.metrics) == ((), ())  # and nothing over OTLP
    # Without a Prometheus endpoint, the whole SDK stays off, as before.
    config = otel_config_of(env_of(sidecar_container(pod_spec(standalone_mode))), monkeypatch)
    assert (config.prometheus, config.traces, config.metrics) == (None, (), ())


def test_standalone_service_exposes_the_metrics_port_for_a_service_monitor(all_options):
    ports = {port["name"]: port for port in one(all_options, "Service")["spec"]["ports"]}
    assert ports["metrics"] == {
        "name": "metrics",
        "port": 9464,
        "targetPort": "metrics",
        "protocol": "TCP",
        "appProtocol": "http",
    }
    monitor = one(all_options, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    service_labels = one(all_options, "Service")["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service_labels.items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["default"]}
    assert monitor["spec"]["endpoints"] == [
        {
            "port": "metrics",
            "path": "/metrics",
            "scheme": "http",
            "interval": "30s",
            "scrapeTimeout": "10s",
        }
    ]
    pod_monitor = one(all_options, "PodMonitor")
    pod_labels = one(all_options, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pod_monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pod_monitor["spec"]["podMetricsEndpoints"] == [
        {"port": "metrics", "path": "/metrics", "scheme": "http", "interval": "15s"}
    ]


def test_the_prometheus_rule_holds_the_rules_of_deploy_prometheus(all_options):
    shipped = REPO / "deploy" / "prometheus" / "rules-sidecar-rules.yaml"
    # The chart can only read its own files: its copy must stay the file operators use.
    assert (CHART / "files" / "rules-sidecar-rules.yaml").read_text() == shipped.read_text()
    rule = one(all_options, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["spec"] == yaml.safe_load(shipped.read_text())
    alerts = [
        r["alert"] for group in rule["spec"]["groups"] for r in group["rules"] if "alert" in r
    ]
    assert "RulesSidecarConnectorErrorBudgetBurnFast" in alerts
    # Prometheus's own templating survives Helm's untouched.
    annotations = rule["spec"]["groups"][1]["rules"][0]["annotations"]
    assert "{{ $labels.rules_sidecar_connector_id }}" in annotations["summary"]


def test_the_grafana_dashboard_configmap_holds_the_dashboard_of_deploy_grafana(all_options):
    shipped = REPO / "deploy" / "grafana" / "rules-sidecar-dashboard.json"
    assert (CHART / "files" / "rules-sidecar-dashboard.json").read_text() == shipped.read_text()
    (configmap,) = [
        m
        for m in all_options
        if m["kind"] == "ConfigMap" and m["metadata"]["name"].endswith("-dashboard")
    ]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"  # the sidecar's default
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "Platform"}
    (key,) = configmap["data"]
    assert key.endswith(".json")  # Grafana's file provisioning loads *.json only
    assert json.loads(configmap["data"][key]) == json.loads(shipped.read_text())


def test_sidecar_mode_pod_monitor_selects_the_apps_pods_on_the_sidecars_metrics_port(
    example_dependencies,
):
    manifests = render(
        EXAMPLE,
        "--set",
        "rulesSidecar.metrics.prometheusPort=9464",
        "--set",
        "rulesSidecar.metrics.podMonitor.enabled=true",
        "--set",
        "rulesSidecar.metrics.podMonitor.selector.app\\.kubernetes\\.io/name=chat-backend",
    )
    monitor = one(manifests, "PodMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector == {"app.kubernetes.io/name": "chat-backend"}
    pod = one(manifests, "Deployment")["spec"]["template"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    assert container_ports(sidecar_container(pod["spec"]))["metrics"] == 9464
    assert [endpoint["port"] for endpoint in monitor["spec"]["podMetricsEndpoints"]] == ["metrics"]


def test_no_monitor_is_rendered_by_default(standalone_mode, sidecar_mode):
    kinds = {manifest["kind"] for manifest in [*standalone_mode, *sidecar_mode]}
    assert not kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    names = [m["metadata"]["name"] for m in [*standalone_mode, *sidecar_mode]]
    assert not [name for name in names if name.endswith("-dashboard")]
    ports = [port["name"] for port in one(standalone_mode, "Service")["spec"]["ports"]]
    assert ports == ["grpc"]


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        (
            ["--set", "metrics.podMonitor.enabled=true"],
            "metrics.podMonitor.enabled needs metrics.prometheusPort",
        ),
        (
            [
                "--set",
                "mode=standalone",
                "--set",
                "accessTokens.generate=true",
                "--set",
                "metrics.serviceMonitor.enabled=true",
            ],
            "metrics.serviceMonitor.enabled needs metrics.prometheusPort",
        ),
        (
            [
                "--set",
                "metrics.prometheusPort=9464",
                "--set",
                "metrics.serviceMonitor.enabled=true",
            ],
            "metrics.serviceMonitor needs mode: standalone",
        ),
        (
            ["--set", "metrics.prometheusPort=9464", "--set", "metrics.podMonitor.enabled=true"],
            "metrics.podMonitor.selector is required in sidecar mode",
        ),
        (
            ["--set", "metrics.serviceMonitor.interval=often"],
            "/metrics/serviceMonitor/interval",
        ),
    ],
)
def test_a_monitor_that_could_not_scrape_fails_to_render(arguments, problem):
    assert problem in render_error(CHART, *arguments)


def test_prometheus_metrics_are_served_on_the_pod_ip_at_a_named_port(all_options):
    container = sidecar_container(pod_spec(all_options), "rules")
    env = env_of(container)
    assert container_ports(container)["metrics"] == 9464
    assert env["RULES_SIDECAR_METRICS_PROMETHEUS_PORT"] == "9464"
    assert env["RULES_SIDECAR_METRICS_PROMETHEUS_HOST"] == "::"  # listenHost "[::]", unbracketed


@pytest.mark.parametrize(
    ("setting", "problem"),
    [
        ("settings.retrys=1", "additional properties 'retrys' not allowed"),
        ("settings.max_concurrent_evaluations=many", "/settings/max_concurrent_evaluations"),
    ],
)
def test_a_misspelt_or_mistyped_setting_fails_to_render(setting, problem):
    message = render_error(
        CHART, "-f", str(CHART / "ci" / "standalone-values.yaml"), "--set", setting
    )
    assert problem in message


def test_the_settings_schema_is_generated_from_the_settings():
    """values.schema.json's `settings` lists every Settings field with its JSON schema."""
    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]["settings"]
    written = runpy.run_path(str(REPO / "scripts" / "chart-settings-schema"))
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(Settings.model_fields)
    assert schema == written["settings_schema"](), (
        "values.schema.json is stale: run .venv/bin/python scripts/chart-settings-schema"
    )


def test_a_setting_the_chart_owns_is_refused_in_settings():
    message = render_error(
        CHART,
        "--set",
        "mode=standalone,accessTokens.generate=true",
        "--set",
        "settings.listen_address=0.0.0.0:1",
    )
    assert "settings.listen_address is set by the chart" in message


# ---------------------------------------------------------------------------------------------
# The fleet store (store.url): PostgreSQL shared by every pod, the password a mounted file
# ---------------------------------------------------------------------------------------------

FLEET_URL = "postgresql://chat@postgres.data:5432/rules"
# The password a store.url must never carry into a render (or an error message).
CANARY = "canary-db-password-7f3a"


@pytest.fixture(scope="module")
def sidecar_fleet(example_dependencies: None) -> list[Manifest]:
    return render(
        EXAMPLE,
        "--set",
        f"rulesSidecar.store.url={FLEET_URL}",
        "--set",
        "rulesSidecar.store.password.existingSecret=chat-backend-db",
    )


FLEET_MODES = ["sidecar_fleet", "all_options"]


def fleet_container(request: pytest.FixtureRequest, mode: str) -> tuple[dict[str, Any], Any]:
    manifests = request.getfixturevalue(mode)
    spec = pod_spec(manifests)
    return sidecar_container(spec, "rules" if mode == "all_options" else "rules-sidecar"), spec


@pytest.mark.parametrize("mode", FLEET_MODES)
def test_the_store_password_is_one_secret_key_mounted_as_the_password_file(request, mode):
    container, spec = fleet_container(request, mode)
    env = env_of(container)
    secret, key = (
        ("chat-backend-db", "password")
        if mode == "sidecar_fleet"
        else ("rules-sidecar-db", "db-password")
    )
    directory, _, file_name = env["RULES_SIDECAR_STORE_PASSWORD_FILE"].rpartition("/")
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == directory)
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert env["RULES_SIDECAR_STORE_URL"].startswith("postgresql://")
    assert "@" in env["RULES_SIDECAR_STORE_URL"]
    assert file_name == key
    assert volume["secret"]["secretName"] == secret
    assert volume["secret"]["items"] == [{"key": key, "path": key}]  # that key alone
    assert mount["readOnly"] is True
    # Apart from the connectors' secrets directory and the tokens.
    assert directory not in (
        env["RULES_SIDECAR_SECRETS_DIR"],
        env.get("RULES_SIDECAR_ADMIN_TOKEN_FILE", "/").rpartition("/")[0],
    )


@pytest.mark.parametrize("mode", FLEET_MODES)
def test_the_store_password_is_in_no_environment_variable_and_no_other_container(request, mode):
    container, spec = fleet_container(request, mode)
    store_volume = next(v["name"] for v in spec["volumes"] if "items" in v.get("secret", {}))
    rendered = json.dumps(request.getfixturevalue(mode))
    others = [
        c for c in [*(spec.get("initContainers") or []), *spec["containers"]] if c is not container
    ]
    assert "RULES_SIDECAR_STORE_PASSWORD" not in env_of(container)
    assert "password=" not in rendered.lower()
    assert not re.search(r"postgres(ql)?://[^/@\"]*:[^/@\"]*@", rendered)
    for other in others:
        assert store_volume not in [m["name"] for m in other.get("volumeMounts", [])]


def test_without_a_store_url_each_pod_keeps_its_own_store(sidecar_mode, standalone_mode):
    for manifests in (sidecar_mode, standalone_mode):
        env = env_of(sidecar_container(pod_spec(manifests)))
        assert not [name for name in env if name.startswith("RULES_SIDECAR_STORE_")]
        assert env["RULES_SIDECAR_DATA_DIR"]


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://chat:{CANARY}@postgres.data:5432/rules",
        f"postgres://chat@postgres.data:5432/rules?sslmode=require&password={CANARY}",
    ],
)
def test_a_store_url_with_a_password_is_refused_without_echoing_it(url):
    message = render_error(
        CHART, "-f", str(CHART / "ci" / "standalone-values.yaml"), "--set", f"store.url={url}"
    )
    assert "store.url carries a password" in message
    assert "store.password.existingSecret" in message
    assert CANARY not in message


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ("store.password.existingSecret=db", "store.url is empty"),
        ("store.url=mysql://chat@db/rules", "/store/url"),
        ("settings.store_url=postgresql://chat@db/rules", "settings.store_url is set by the chart"),
        ("settings.store_password_file=/p", "settings.store_password_file is set by the chart"),
    ],
)
def test_a_store_misconfiguration_fails_to_render(values, problem):
    message = render_error(
        CHART, "-f", str(CHART / "ci" / "standalone-values.yaml"), "--set", values
    )
    assert problem in message


# ---------------------------------------------------------------------------------------------
# The chart's own files
# ---------------------------------------------------------------------------------------------


def test_image_tag_follows_the_chart_app_version():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["image"]["tag"] == chart["appVersion"]


FREE_FORM = {"securityContext", "podSecurityContext", "resources", "probes"}


def test_every_value_in_values_yaml_is_commented():
    """Each key of the first two levels has a comment right above it (or is inline data)."""
    uncommented = []
    parents: list[str] = []
    previous = ""
    for line in (CHART / "values.yaml").read_text().splitlines():
        match = re.match(r"^( *)([A-Za-z][A-Za-z0-9_]*):", line)
        if match:
            depth = len(match.group(1)) // 2
            parents = [*parents[:depth], match.group(2)]
            inside_free_form = any(parent in FREE_FORM for parent in parents[:-1])
            is_section = line.rstrip().endswith(":")
            commented = previous.lstrip().startswith("#")
            if depth <= 1 and not inside_free_form and not is_section and not commented:
                uncommented.append(".".join(parents))
        if line.strip():
            previous = line
    assert uncommented == []
