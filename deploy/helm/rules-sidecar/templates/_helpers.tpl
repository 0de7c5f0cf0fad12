{{/*
=================================================================================================
Named templates of rules-sidecar.

The public ones, for a chart that runs the sidecar in its own pods (sidecar mode), take one
argument, a dict with the caller's root context and this chart's values:

    {{- $sidecar := dict "root" $ "values" .Values.rulesSidecar }}

    spec:
      terminationGracePeriodSeconds: {{ add 20 (include "rules-sidecar.terminationGracePeriodSeconds" $sidecar) }}
      initContainers:
        {{- include "rules-sidecar.initContainers" $sidecar | nindent 8 }}
      containers:
        - name: app
          ...
        {{- include "rules-sidecar.containers" $sidecar | nindent 8 }}
      volumes:
        {{- include "rules-sidecar.volumes" $sidecar | nindent 8 }}

  rules-sidecar.initContainers   the sidecar as a native sidecar (an init container with
                                 restartPolicy: Always) when nativeSidecar is true; else nothing
  rules-sidecar.containers       the sidecar as a plain container when nativeSidecar is false;
                                 else nothing. Include both: exactly one renders the container.
  rules-sidecar.container        the container itself, one list item, for callers that place it
  rules-sidecar.volumes          its volumes (data emptyDir, connectors ConfigMap, secrets,
                                 the store password)
  rules-sidecar.terminationGracePeriodSeconds
                                 the seconds the sidecar needs to stop; add your app's own
  rules-sidecar.fullname         the name of the objects this chart renders (ConfigMap, Secret)

`.Values.rulesSidecar` in the caller holds this chart's defaults merged with the caller's values
when this chart is a dependency with `alias: rulesSidecar` (see deploy/examples/chat-backend).
Names depend only on the release and the values, never on the calling chart, so the ConfigMap
rendered by this chart and the volume rendered in the caller's pod agree.
=================================================================================================
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "rules-sidecar.name" -}}
{{- default "rules-sidecar" .values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-rules-sidecar (or the release name when it already says rules-sidecar). */}}
{{- define "rules-sidecar.fullname" -}}
{{- if .values.fullnameOverride }}
{{- .values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := include "rules-sidecar.name" . }}
{{- if contains $name .root.Release.Name }}
{{- .root.Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .root.Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Labels on the objects this chart renders itself (.root is this chart there). */}}
{{- define "rules-sidecar.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "rules-sidecar.selectorLabels" . }}
app.kubernetes.io/version: {{ include "rules-sidecar.appVersion" . | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/component: {{ .values.mode }}
{{- end }}

{{/* Selector labels of the standalone Deployment, Service, PDB. */}}
{{- define "rules-sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rules-sidecar.name" . }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end }}

{{/* The sidecar version: image.tag. Not .Chart.AppVersion: included from a user's chart, .Chart
     is theirs. values.yaml keeps image.tag equal to appVersion (tests/test_helm_chart.py). */}}
{{- define "rules-sidecar.appVersion" -}}
{{- .values.image.tag }}
{{- end }}

{{- define "rules-sidecar.image" -}}
{{- if .values.image.digest }}
{{- printf "%s@%s" .values.image.repository .values.image.digest }}
{{- else }}
{{- printf "%s:%s" .values.image.repository (include "rules-sidecar.appVersion" .) }}
{{- end }}
{{- end }}

{{/* The connectors ConfigMap: the user's existingConfigMap, or the one this chart renders. */}}
{{- define "rules-sidecar.connectorsConfigMap" -}}
{{- .values.connectors.existingConfigMap | default (printf "%s-connectors" (include "rules-sidecar.fullname" .)) }}
{{- end }}

{{- define "rules-sidecar.hasConnectors" -}}
{{- if or .values.connectors.existingConfigMap .values.connectors.definitions }}true{{ end }}
{{- end }}

{{/* The Secret mounted as the secrets directory: existingSecret, or the one this chart renders. */}}
{{- define "rules-sidecar.secretName" -}}
{{- .values.secrets.existingSecret | default (printf "%s-secrets" (include "rules-sidecar.fullname" .)) }}
{{- end }}

{{/* The Secret holding the access tokens: existingSecret, the generated one, or none. */}}
{{- define "rules-sidecar.tokenSecretName" -}}
{{- if .values.accessTokens.existingSecret }}
{{- .values.accessTokens.existingSecret }}
{{- else if .values.accessTokens.generate }}
{{- printf "%s-tokens" (include "rules-sidecar.fullname" .) }}
{{- end }}
{{- end }}

{{/* Protected mode, as the server enforces it: in standalone mode the API is reachable from
     other pods, so it needs a token Secret (or the explicit settings.allow_unprotected_api). */}}
{{- define "rules-sidecar.checkProtected" -}}
{{- if and (eq .values.mode "standalone") (not (include "rules-sidecar.tokenSecretName" .)) (not .values.settings.allow_unprotected_api) }}
{{- fail "rules-sidecar: standalone mode exposes the API (RegisterConnector included) to the cluster, so it needs access tokens: set accessTokens.existingSecret to a Secret with the keys admin-token and evaluation-token, or accessTokens.generate: true to have the chart generate one (kept across upgrades). On a network you trust only: settings.allow_unprotected_api: true." }}
{{- end }}
{{- if eq (.values.port | int) (.values.healthPort | int) }}
{{- fail (printf "rules-sidecar: port and healthPort are both %d; the API and health need ports of their own" (.values.port | int)) }}
{{- end }}
{{- end }}

{{/* The address the API binds: loopback in sidecar mode (only the pod's own containers may call
     it), listenHost in standalone mode (the Service's endpoints). */}}
{{- define "rules-sidecar.apiHost" -}}
{{- if eq .values.mode "standalone" }}{{ .values.listenHost }}{{ else }}127.0.0.1{{ end }}
{{- end }}

{{/* The store's password Secret: mounted only with store.url and store.password.existingSecret. */}}
{{- define "rules-sidecar.hasStorePassword" -}}
{{- if and .values.store.url .values.store.password.existingSecret }}true{{ end }}
{{- end }}

{{/* store.url as the server checks it, at render time: never a password in it (it would be in
     the pod spec), and a password Secret only with a URL to use it for. */}}
{{- define "rules-sidecar.checkStore" -}}
{{- $url := .values.store.url }}
{{- if and $url (or (regexMatch "^[^:]+://[^/@?]*:[^/@?]*@" $url) (regexMatch "(?i)[?&]password=" $url)) }}
{{- fail "rules-sidecar: store.url carries a password, which would be rendered into the pod spec; remove it and put the password in a Secret named by store.password.existingSecret (key store.password.key)" }}
{{- end }}
{{- if and .values.store.password.existingSecret (not $url) }}
{{- fail "rules-sidecar: store.password.existingSecret is set but store.url is empty; set store.url (postgresql://user@host:port/dbname) or remove the Secret" }}
{{- end }}
{{- end }}

{{- define "rules-sidecar.hasSecrets" -}}
{{- if or .values.secrets.existingSecret .values.secrets.create }}true{{ end }}
{{- end }}

{{/* Whether the container needs a preStop sleep: never as a native sidecar (it is stopped after
     the app has exited), else when preStopSleepSeconds > 0. */}}
{{- define "rules-sidecar.preStopSeconds" -}}
{{- if and (eq .values.mode "sidecar") .values.nativeSidecar }}0{{ else }}{{ .values.preStopSleepSeconds | int }}{{ end }}
{{- end }}

{{/* Seconds the sidecar needs between SIGTERM (or preStop) and exit: preStop sleep, then
     shutdownGraceSeconds of drain, plus 5 s for the process to close. */}}
{{- define "rules-sidecar.terminationGracePeriodSeconds" -}}
{{- add (include "rules-sidecar.preStopSeconds" . | int) (.values.shutdownGraceSeconds | ceil | int) 5 }}
{{- end }}

{{- define "rules-sidecar.checkKubeVersion" -}}
{{- if and (eq .values.mode "sidecar") .values.nativeSidecar (semverCompare "<1.29.0-0" .root.Capabilities.KubeVersion.Version) }}
{{- fail (printf "rules-sidecar: nativeSidecar needs Kubernetes >= 1.29 (an init container with restartPolicy: Always), this cluster is %s. Set nativeSidecar: false for a plain container, or, with `helm template`, pass --kube-version." .root.Capabilities.KubeVersion.Version) }}
{{- end }}
{{- end }}

{{/* Settings the chart sets itself; `settings` may not repeat them. */}}
{{- define "rules-sidecar.managedSettings" -}}
listen_address health_listen_address metrics_prometheus_port metrics_prometheus_host data_dir connectors_file connectors_reload_seconds secrets_dir admin_token_file evaluation_token_file shutdown_grace_seconds log_level config_file store_url store_password_file
{{- end }}

{{/* The container's environment. */}}
{{- define "rules-sidecar.env" -}}
{{- $v := .values -}}
- name: RULES_SIDECAR_LISTEN_ADDRESS
  # The API: loopback in sidecar mode, listenHost (with tokens) in standalone mode.
  value: {{ printf "%s:%d" (include "rules-sidecar.apiHost" .) ($v.port | int) | quote }}
- name: RULES_SIDECAR_HEALTH_LISTEN_ADDRESS
  # Health only, not loopback: the kubelet's gRPC probes connect to the pod IP.
  value: {{ printf "%s:%d" $v.listenHost ($v.healthPort | int) | quote }}
{{- with $v.metrics.prometheusPort }}
- name: RULES_SIDECAR_METRICS_PROMETHEUS_PORT
  value: {{ . | quote }}
- name: RULES_SIDECAR_METRICS_PROMETHEUS_HOST
  value: {{ $v.listenHost | trimPrefix "[" | trimSuffix "]" | quote }}
{{- end }}
- name: RULES_SIDECAR_DATA_DIR
  value: {{ $v.data.mountPath | quote }}
{{- if include "rules-sidecar.hasConnectors" . }}
- name: RULES_SIDECAR_CONNECTORS_FILE
  value: {{ printf "%s/%s" $v.connectors.mountPath $v.connectors.fileName | quote }}
- name: RULES_SIDECAR_CONNECTORS_RELOAD_SECONDS
  value: {{ $v.connectors.reloadSeconds | quote }}
{{- end }}
{{- if include "rules-sidecar.hasSecrets" . }}
- name: RULES_SIDECAR_SECRETS_DIR
  value: {{ $v.secrets.mountPath | quote }}
{{- end }}
{{- with $v.store.url }}
- name: RULES_SIDECAR_STORE_URL
  # The fleet's shared registry (PostgreSQL); no password in it.
  value: {{ . | quote }}
{{- end }}
{{- if include "rules-sidecar.hasStorePassword" . }}
- name: RULES_SIDECAR_STORE_PASSWORD_FILE
  # The path of the mounted Secret key, not the password.
  value: {{ printf "%s/%s" $v.store.password.mountPath $v.store.password.key | quote }}
{{- end }}
{{- if include "rules-sidecar.tokenSecretName" . }}
{{- with $v.accessTokens.adminTokenKey }}
- name: RULES_SIDECAR_ADMIN_TOKEN_FILE
  value: {{ printf "%s/%s" $v.accessTokens.mountPath . | quote }}
{{- end }}
{{- with $v.accessTokens.evaluationTokenKey }}
- name: RULES_SIDECAR_EVALUATION_TOKEN_FILE
  value: {{ printf "%s/%s" $v.accessTokens.mountPath . | quote }}
{{- end }}
{{- end }}
- name: RULES_SIDECAR_SHUTDOWN_GRACE_SECONDS
  value: {{ $v.shutdownGraceSeconds | quote }}
- name: RULES_SIDECAR_LOG_LEVEL
  value: {{ $v.logLevel | quote }}
{{- $managed := splitList " " (include "rules-sidecar.managedSettings" .) }}
{{- range $name, $value := $v.settings }}
{{- if has $name $managed }}
{{- fail (printf "rules-sidecar: settings.%s is set by the chart; use the chart's own value for it (see values.yaml)" $name) }}
{{- end }}
{{- if hasPrefix "tls_" $name }}
{{- fail (printf "rules-sidecar: settings.%s: the chart mounts no certificates, and the kubelet's gRPC probes cannot speak TLS (health stays plaintext on healthPort); leave TLS to a service mesh" $name) }}
{{- end }}
- name: {{ printf "RULES_SIDECAR_%s" (upper $name) }}
  value: {{ if kindIs "string" $value }}{{ $value | quote }}{{ else }}{{ toJson $value | quote }}{{ end }}
{{- end }}
{{- if $v.otel.enabled }}
- name: POD_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- name: POD_NAMESPACE
  valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
- name: OTEL_SERVICE_NAME
  value: {{ $v.otel.serviceName | default "rules-sidecar" | quote }}
{{- with $v.otel.exporterEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- $attributes := list "k8s.pod.name=$(POD_NAME)" "k8s.namespace.name=$(POD_NAMESPACE)" (printf "k8s.container.name=%s" $v.containerName) }}
{{- range $key, $value := $v.otel.resourceAttributes }}
{{- $attributes = append $attributes (printf "%s=%s" $key $value) }}
{{- end }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ join "," $attributes | quote }}
{{- range $name, $value := $v.otel.extraEnv }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- else if $v.metrics.prometheusPort }}
# No OTLP export, even if an endpoint variable comes from elsewhere; not OTEL_SDK_DISABLED,
# which would also switch off the Prometheus endpoint asked for in metrics.prometheusPort.
- name: OTEL_TRACES_EXPORTER
  value: "none"
- name: OTEL_METRICS_EXPORTER
  value: "none"
{{- else }}
- name: OTEL_SDK_DISABLED
  value: "true"
{{- end }}
{{- with $v.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* A native gRPC probe on the health port: numeric (gRPC probes take no port name). */}}
{{- define "rules-sidecar.probe" -}}
grpc:
  port: {{ .port | int }}
  service: {{ .service | quote }}
{{ toYaml .probe }}
{{- end }}

{{/* The sidecar container: one list item. */}}
{{- define "rules-sidecar.container" -}}
{{- include "rules-sidecar.checkKubeVersion" . }}
{{- include "rules-sidecar.checkProtected" . }}
{{- include "rules-sidecar.checkStore" . }}
{{- $v := .values }}
{{- $native := and (eq $v.mode "sidecar") $v.nativeSidecar }}
{{- $preStop := include "rules-sidecar.preStopSeconds" . | int -}}
- name: {{ $v.containerName }}
  image: {{ include "rules-sidecar.image" . | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  {{- if $native }}
  # A native sidecar: started (and its startupProbe passed) before the app's containers, stopped
  # after they have exited, and never blocking a Job's completion.
  restartPolicy: Always
  {{- end }}
  # No command or args: the image's ENTRYPOINT ["rules-sidecar"] CMD ["serve"] runs as PID 1 and
  # receives SIGTERM itself (scripts/check-image-command runs exactly that command line).
  ports:
    {{- if eq $v.mode "standalone" }}
    - name: grpc
      containerPort: {{ $v.port | int }}
      protocol: TCP
    {{- end }}
    - name: health
      containerPort: {{ $v.healthPort | int }}
      protocol: TCP
    {{- with $v.metrics.prometheusPort }}
    - name: metrics
      containerPort: {{ . | int }}
      protocol: TCP
    {{- end }}
  env:
    {{- include "rules-sidecar.env" . | nindent 4 }}
  startupProbe:
    {{- include "rules-sidecar.probe" (dict "port" $v.healthPort "service" "" "probe" $v.probes.startup) | nindent 4 }}
  readinessProbe:
    {{- include "rules-sidecar.probe" (dict "port" $v.healthPort "service" "rulesidecar.v1.RulesSidecarService" "probe" $v.probes.readiness) | nindent 4 }}
  livenessProbe:
    {{- include "rules-sidecar.probe" (dict "port" $v.healthPort "service" "" "probe" $v.probes.liveness) | nindent 4 }}
  {{- if gt $preStop 0 }}
  lifecycle:
    preStop:
      exec:
        # Keeps serving while endpoints are removed (standalone) or while the app drains (plain
        # container sidecar); then SIGTERM starts the server's own drain.
        command: ["sleep", {{ $preStop | quote }}]
  {{- end }}
  resources:
    {{- toYaml $v.resources | nindent 4 }}
  securityContext:
    {{- toYaml $v.securityContext | nindent 4 }}
  volumeMounts:
    - name: {{ $v.volumePrefix }}-data
      mountPath: {{ $v.data.mountPath | quote }}
    {{- if include "rules-sidecar.hasConnectors" . }}
    # The whole directory, never subPath: a subPath mount would not see ConfigMap updates.
    - name: {{ $v.volumePrefix }}-connectors
      mountPath: {{ $v.connectors.mountPath | quote }}
      readOnly: true
    {{- end }}
    {{- if include "rules-sidecar.hasSecrets" . }}
    - name: {{ $v.volumePrefix }}-secrets
      mountPath: {{ $v.secrets.mountPath | quote }}
      readOnly: true
    {{- end }}
    {{- if include "rules-sidecar.tokenSecretName" . }}
    - name: {{ $v.volumePrefix }}-tokens
      mountPath: {{ $v.accessTokens.mountPath | quote }}
      readOnly: true
    {{- end }}
    {{- if include "rules-sidecar.hasStorePassword" . }}
    - name: {{ $v.volumePrefix }}-store
      mountPath: {{ $v.store.password.mountPath | quote }}
      readOnly: true
    {{- end }}
{{- end }}

{{- define "rules-sidecar.initContainers" -}}
{{- if .values.nativeSidecar }}
{{- include "rules-sidecar.container" . }}
{{- end }}
{{- end }}

{{- define "rules-sidecar.containers" -}}
{{- if not .values.nativeSidecar }}
{{- include "rules-sidecar.container" . }}
{{- end }}
{{- end }}

{{/* The sidecar's volumes: list items. */}}
{{- define "rules-sidecar.volumes" -}}
{{- $v := .values -}}
- name: {{ $v.volumePrefix }}-data
  {{- if $v.data.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ $v.data.existingClaim }}
  {{- else }}
  # The data directory (the embedded SQLite store without store.url). The root filesystem is
  # read-only; this is the one writable place.
  emptyDir: {{ if $v.data.sizeLimit }}{sizeLimit: {{ $v.data.sizeLimit }}}{{ else }}{}{{ end }}
  {{- end }}
{{- if include "rules-sidecar.hasConnectors" . }}
- name: {{ $v.volumePrefix }}-connectors
  configMap:
    name: {{ include "rules-sidecar.connectorsConfigMap" . }}
{{- end }}
{{- if include "rules-sidecar.hasSecrets" . }}
- name: {{ $v.volumePrefix }}-secrets
  secret:
    secretName: {{ include "rules-sidecar.secretName" . }}
    defaultMode: {{ $v.secrets.defaultMode }}
{{- end }}
{{- if include "rules-sidecar.tokenSecretName" . }}
- name: {{ $v.volumePrefix }}-tokens
  secret:
    secretName: {{ include "rules-sidecar.tokenSecretName" . }}
    defaultMode: {{ $v.secrets.defaultMode }}
{{- end }}
{{- if include "rules-sidecar.hasStorePassword" . }}
- name: {{ $v.volumePrefix }}-store
  secret:
    secretName: {{ $v.store.password.existingSecret }}
    defaultMode: {{ $v.secrets.defaultMode }}
    # The password key alone: nothing else in that Secret reaches the pod.
    items:
      - key: {{ $v.store.password.key | quote }}
        path: {{ $v.store.password.key | quote }}
{{- end }}
{{- end }}

{{/* Standalone mode: the ServiceAccount the pod runs as. */}}
{{- define "rules-sidecar.serviceAccountName" -}}
{{- if .values.serviceAccount.create }}
{{- .values.serviceAccount.name | default (include "rules-sidecar.fullname" .) }}
{{- else }}
{{- .values.serviceAccount.name | default "default" }}
{{- end }}
{{- end }}

{{/* A monitor needs the metrics port; checked for both kinds. */}}
{{- define "rules-sidecar.checkMonitor" -}}
{{- if not .values.metrics.prometheusPort }}
{{- fail (printf "rules-sidecar: metrics.%s.enabled needs metrics.prometheusPort (the port it scrapes)" .kind) }}
{{- end }}
{{- end }}

{{/* The scrape endpoint of a ServiceMonitor or PodMonitor. */}}
{{- define "rules-sidecar.scrapeEndpoint" -}}
- port: metrics
  path: /metrics
  scheme: http
  {{- with .interval }}
  interval: {{ . }}
  {{- end }}
  {{- with .scrapeTimeout }}
  scrapeTimeout: {{ . }}
  {{- end }}
{{- end }}
