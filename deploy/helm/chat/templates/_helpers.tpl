{{/* Names, labels and the environment shared by the chat Deployments. */}}

{{- define "chat.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "chat.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The five services, in the order they are rendered. */}}
{{- define "chat.components" -}}
edge history presence notify api
{{- end }}

{{/* <fullname>-<component>; argument: (dict "root" $ "component" "edge"). */}}
{{- define "chat.componentFullname" -}}
{{- printf "%s-%s" (include "chat.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "chat.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "chat.selectorLabels" -}}
app.kubernetes.io/name: {{ include "chat.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "chat.labels" -}}
helm.sh/chart: {{ include "chat.chart" .root }}
{{ include "chat.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: chat
{{- end }}

{{/* Labels of resources that belong to no single service. */}}
{{- define "chat.commonLabels" -}}
helm.sh/chart: {{ include "chat.chart" . }}
app.kubernetes.io/name: {{ include "chat.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: chat
{{- end }}

{{- define "chat.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "chat.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "chat.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The name a subchart's resources get: <release>-<chart> unless the release name contains it. */}}
{{- define "chat.subchartFullname" -}}
{{- if contains .chart .root.Release.Name }}
{{- .root.Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .root.Release.Name .chart | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "chat.natsUrl" -}}
{{- if .Values.natsClient.url }}
{{- .Values.natsClient.url }}
{{- else if .Values.nats.enabled }}
{{- printf "nats://%s:4222" (include "chat.subchartFullname" (dict "root" . "chart" "nats")) }}
{{- else }}
{{- "nats://nats:4222" }}
{{- end }}
{{- end }}

{{- define "chat.databaseUrl" -}}
{{- if .Values.database.url }}
{{- .Values.database.url }}
{{- else if .Values.postgresql.enabled }}
{{- printf "postgres://%s@%s:5432/%s" .Values.postgresql.auth.username (include "chat.subchartFullname" (dict "root" . "chart" "postgresql")) .Values.postgresql.auth.database }}
{{- else }}
{{- "postgres://chat@postgresql:5432/chat" }}
{{- end }}
{{- end }}

{{- define "chat.databasePasswordSecret" -}}
{{- if .Values.database.passwordSecret.name }}
{{- .Values.database.passwordSecret.name }}
{{- else if .Values.postgresql.enabled }}
{{- include "chat.subchartFullname" (dict "root" . "chart" "postgresql") }}
{{- end }}
{{- end }}

{{- define "chat.jwtSecretName" -}}
{{- default (printf "%s-jwt" (include "chat.fullname" .)) .Values.jwt.existingSecret }}
{{- end }}

{{/*
A value for a generated Secret: the one given, else the one already in the cluster (so that
upgrades keep it), else a random one. Argument: (dict "root" $ "secret" NAME "key" KEY "given" VALUE).
*/}}
{{- define "chat.secretValue" -}}
{{- if .given }}
{{- .given | b64enc }}
{{- else }}
{{- $existing := lookup "v1" "Secret" .root.Release.Namespace .secret }}
{{- if and $existing (hasKey $existing "data") (hasKey $existing.data .key) }}
{{- index $existing.data .key }}
{{- else }}
{{- randAlphaNum 40 | b64enc }}
{{- end }}
{{- end }}
{{- end }}

{{/* The environment of one service; argument: (dict "root" $ "component" NAME). */}}
{{- define "chat.env" -}}
{{- $root := .root }}
{{- $v := $root.Values }}
{{- $c := index $v .component }}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: ADMIN_LISTEN
  value: {{ printf "0.0.0.0:%v" $c.adminPort | quote }}
- name: NATS_URL
  value: {{ include "chat.natsUrl" $root | quote }}
{{- if eq $v.natsAuth.mode "password" }}
- name: NATS_USER
  value: {{ index $v.natsAuth.users .component | quote }}
- name: NATS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $v.natsAuth.secretName }}
      key: {{ .component }}
{{- else if eq $v.natsAuth.mode "creds" }}
- name: NATS_CREDS
  value: {{ printf "/etc/chat/nats-creds/%s.creds" .component | quote }}
{{- end }}
{{- if $v.natsClient.tls.enabled }}
- name: NATS_TLS_CA
  value: /etc/chat/nats-tls/ca.crt
{{- if $v.natsClient.tls.clientCert }}
- name: NATS_TLS_CERT
  value: /etc/chat/nats-tls/tls.crt
- name: NATS_TLS_KEY
  value: /etc/chat/nats-tls/tls.key
{{- end }}
{{- end }}
- name: CHAT_STREAM_REPLICAS
  value: {{ $v.stream.replicas | quote }}
- name: CHAT_STREAM_MAX_AGE
  value: {{ $v.stream.maxAge | quote }}
- name: RUST_LOG
  value: {{ $v.chat.logLevel | quote }}
- name: LOG_FORMAT
  value: {{ $v.chat.logFormat | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ printf "chat-%s" .component | quote }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: "service.instance.id=$(POD_NAME),k8s.pod.name=$(POD_NAME)"
{{- with $v.tracing.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ $v.tracing.otlpProtocol | quote }}
- name: OTEL_TRACES_SAMPLER
  value: {{ $v.tracing.sampler | quote }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ $v.tracing.samplerArg | quote }}
{{- end }}
{{- if eq .component "edge" }}
- name: EDGE_LISTEN
  value: {{ printf "0.0.0.0:%v" $c.port | quote }}
{{- if $v.jwt.jwks }}
{{- /* With an identity provider, HS256 stays off: no shared secret to leak or guess. */}}
{{- if not $v.jwt.audience }}
{{- fail "jwt.audience is required with jwt.jwks: without it the edge accepts tokens the provider issued for any of its clients" }}
{{- end }}
- name: CHAT_JWT_JWKS
  value: {{ $v.jwt.jwks | quote }}
{{- else }}
- name: CHAT_JWT_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "chat.jwtSecretName" $root }}
      key: {{ $v.jwt.secretKey }}
{{- end }}
{{- with $v.jwt.issuer }}
- name: CHAT_JWT_ISSUER
  value: {{ . | quote }}
{{- end }}
{{- with $v.jwt.audience }}
- name: CHAT_JWT_AUDIENCE
  value: {{ . | quote }}
{{- end }}
- name: CHAT_ALLOWED_ORIGINS
  value: {{ $v.chat.allowedOrigins | quote }}
- name: CHAT_MAX_BODY
  value: {{ $v.chat.maxBody | quote }}
- name: CHAT_MAX_FRAME
  value: {{ $v.chat.maxFrame | quote }}
- name: CHAT_RATE_PER_S
  value: {{ $v.chat.ratePerSecond | quote }}
- name: CHAT_DEV_LOGIN
  value: {{ $v.chat.devLogin | quote }}
- name: CHAT_WEB_DIR
  value: /app/web
{{- end }}
{{- if eq .component "api" }}
- name: CHAT_API_ADDR
  value: {{ printf "0.0.0.0:%v" $c.port | quote }}
- name: CHAT_MAX_BODY
  value: {{ $v.chat.maxBody | quote }}
- name: CHAT_MAX_FRAME
  value: {{ $v.chat.maxFrame | quote }}
{{- end }}
{{- if or (eq .component "edge") (eq .component "presence") }}
- name: CHAT_HEARTBEAT_MS
  value: {{ $v.chat.heartbeatMs | quote }}
{{- end }}
{{- if or (eq .component "history") (eq .component "notify") }}
{{- if $v.database.urlSecret.name }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $v.database.urlSecret.name }}
      key: {{ $v.database.urlSecret.key }}
{{- else }}
- name: DATABASE_URL
  value: {{ include "chat.databaseUrl" $root | quote }}
{{- with include "chat.databasePasswordSecret" $root }}
- name: PGPASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $v.database.passwordSecret.key }}
{{- end }}
{{- end }}
{{- end }}
{{- if and (eq .component "history") $v.integrationWebhooks.secret.name }}
- name: CHAT_INTEGRATION_WEBHOOKS
  valueFrom:
    secretKeyRef:
      name: {{ $v.integrationWebhooks.secret.name }}
      key: {{ $v.integrationWebhooks.secret.key }}
{{- end }}
{{- with $c.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}
