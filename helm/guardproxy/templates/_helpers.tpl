{{/*
Names and labels. They read only .Values and .Release (the chart name is the constant
"guardproxy", not .Chart.Name), so a parent chart that has guardproxy as a dependency can call
every template here with (dict "Values" .Values.guardproxy "Release" .Release) and get the same
names the subchart gives its own objects.
*/}}
{{- define "guardproxy.name" -}}
{{- default "guardproxy" .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "guardproxy.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := include "guardproxy.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The labels that select guardproxy's pods. In sidecar mode the pod is the app's, whose own
app.kubernetes.io/name must not be overwritten, so guardproxy selects it by a label of its own
that the pod template adds. */}}
{{- define "guardproxy.selectorLabels" -}}
{{- if eq .Values.mode "sidecar" }}
guardproxy/sidecar: {{ include "guardproxy.fullname" . }}
{{- else }}
app.kubernetes.io/name: {{ include "guardproxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}
{{- end }}

{{- define "guardproxy.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "guardproxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: guardproxy
{{- end }}

{{- define "guardproxy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "guardproxy.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "guardproxy.configMapName" -}}
{{- printf "%s-config" (include "guardproxy.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The image: digest wins over tag; the tag defaults to the chart's appVersion when the caller
has a .Chart (a parent chart's own appVersion would be wrong, so there it must be set). */}}
{{- define "guardproxy.image" -}}
{{- $tag := .Values.image.tag }}
{{- if and (not $tag) (hasKey . "Chart") }}
{{- $tag = .Chart.AppVersion }}
{{- end }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (required "image.tag is required when the guardproxy templates are used from another chart" $tag) }}
{{- end }}
{{- end }}

{{- define "guardproxy.upstreamUrl" -}}
{{- if .Values.upstream.url }}
{{- .Values.upstream.url }}
{{- else if eq .Values.mode "sidecar" }}
{{- printf "http://127.0.0.1:%v" .Values.sidecar.app.port }}
{{- else }}
{{- fail "upstream.url is required in standalone mode, e.g. http://my-api.my-namespace.svc.cluster.local:8000" }}
{{- end }}
{{- end }}

{{/* Seconds the kubelet waits between SIGTERM and SIGKILL: guardproxy's drain delay, the time it
gives requests in flight, and a margin for the process to exit. */}}
{{- define "guardproxy.terminationGracePeriodSeconds" -}}
{{- addf .Values.drain.delaySeconds .Values.drain.shutdownTimeoutSeconds .Values.drain.marginSeconds | ceil | int }}
{{- end }}

{{/* guardproxy.yaml: .Values.config plus the settings the chart owns. A chart-owned key set under
config fails the render instead of being silently overridden. */}}
{{- define "guardproxy.configYaml" -}}
{{- $owned := dict "upstream.url" "upstream.url" "server.listen" "ports.proxy" "admin.listen" "ports.admin" "server.workers" "workers" "server.drain_delay" "drain.delaySeconds" "server.shutdown_timeout" "drain.shutdownTimeoutSeconds" }}
{{- range $setting, $value := $owned }}
{{- $parts := splitList "." $setting }}
{{- $section := get $.Values.config (index $parts 0) }}
{{- if and (kindIs "map" $section) (hasKey $section (index $parts 1)) }}
{{- fail (printf "config.%s is set by the chart: use the value %s instead" $setting $value) }}
{{- end }}
{{- end }}
{{- $chart := dict
  "upstream" (dict "url" (include "guardproxy.upstreamUrl" .))
  "server" (dict "workers" (int .Values.workers) "drain_delay" .Values.drain.delaySeconds "shutdown_timeout" .Values.drain.shutdownTimeoutSeconds)
}}
{{- toYaml (mergeOverwrite (deepCopy .Values.config) $chart) }}
{{- end }}

{{/*
The guardproxy container, the same whether it is alone in its pod (standalone) or next to an app
(sidecar). A pod spec of your own includes it with
  containers:
    - name: my-api
      ...
    {{- include "guardproxy.sidecarContainer" (dict "Values" .Values.guardproxy "Release" .Release) | nindent 4 }}
and adds "guardproxy.sidecarVolumes" to its volumes.
*/}}
{{- define "guardproxy.sidecarContainer" -}}
- name: guardproxy
  image: {{ include "guardproxy.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args: [run]
  env:
    - name: GUARDPROXY_CONFIG
      value: /etc/guardproxy/guardproxy.yaml
    - name: GUARDPROXY_SERVER__LISTEN
      value: {{ printf "0.0.0.0:%v" .Values.ports.proxy | quote }}
    - name: GUARDPROXY_ADMIN__LISTEN
      value: {{ printf "0.0.0.0:%v" .Values.ports.admin | quote }}
    {{- with .Values.rateLimit.redis.existingSecret }}
    - name: GUARDPROXY_RATE_LIMIT__REDIS_URL
      valueFrom:
        secretKeyRef:
          name: {{ . }}
          key: {{ $.Values.rateLimit.redis.existingSecretKey }}
    {{- end }}
    {{- with .Values.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - name: gp-proxy
      containerPort: {{ .Values.ports.proxy }}
      protocol: TCP
    - name: gp-admin
      containerPort: {{ .Values.ports.admin }}
      protocol: TCP
  startupProbe:
    httpGet:
      path: /healthz
      port: gp-admin
    {{- toYaml .Values.probes.startup | nindent 4 }}
  livenessProbe:
    httpGet:
      path: /healthz
      port: gp-admin
    {{- toYaml .Values.probes.liveness | nindent 4 }}
  readinessProbe:
    httpGet:
      path: /readyz
      port: gp-admin
    {{- toYaml .Values.probes.readiness | nindent 4 }}
  resources:
    {{- toYaml .Values.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: guardproxy-config
      mountPath: /etc/guardproxy
      readOnly: true
    - name: guardproxy-tmp
      mountPath: /tmp
    {{- with .Values.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{/* The volumes the guardproxy container mounts: its config and a writable /tmp. */}}
{{- define "guardproxy.sidecarVolumes" -}}
- name: guardproxy-config
  configMap:
    name: {{ include "guardproxy.configMapName" . }}
- name: guardproxy-tmp
  emptyDir:
    sizeLimit: {{ .Values.tmp.sizeLimit }}
{{- end }}

{{/* The app container of sidecar mode: no ports are declared, as it listens on 127.0.0.1 only. */}}
{{- define "guardproxy.appContainer" -}}
{{- $app := .Values.sidecar.app -}}
- name: {{ $app.name }}
  image: {{ required "sidecar.app.image is required in sidecar mode when sidecar.renderWorkload is true" $app.image | quote }}
  imagePullPolicy: {{ $app.imagePullPolicy }}
  {{- with $app.command }}
  command:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $app.args }}
  args:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $app.env }}
  env:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $app.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if $app.lifecycle }}
  lifecycle:
    {{- toYaml $app.lifecycle | nindent 4 }}
  {{- else if ge (.Values.drain.delaySeconds | ceil | int) 1 }}
  # The app gets SIGTERM together with guardproxy; it keeps serving while guardproxy still
  # accepts requests for it (drain.delaySeconds), then stops as it normally would.
  lifecycle:
    preStop:
      sleep:
        seconds: {{ .Values.drain.delaySeconds | ceil | int }}
  {{- end }}
  securityContext:
    {{- toYaml $app.securityContext | nindent 4 }}
  {{- with $app.volumeMounts }}
  volumeMounts:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/* Whether this release renders a Deployment (and so the objects that need one). */}}
{{- define "guardproxy.rendersWorkload" -}}
{{- if or (eq .Values.mode "standalone") .Values.sidecar.renderWorkload }}true{{ end }}
{{- end }}
