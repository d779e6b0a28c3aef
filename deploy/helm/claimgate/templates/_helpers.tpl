{{/* The chart's name, or nameOverride. */}}
{{- define "claimgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The objects' name: the release name when it contains the chart's name ("claimgate"). */}}
{{- define "claimgate.fullname" -}}
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

{{- define "claimgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: immutable on a Deployment, so only name and instance. */}}
{{- define "claimgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "claimgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The standard labels, on every object and on the pods. */}}
{{- define "claimgate.labels" -}}
helm.sh/chart: {{ include "claimgate.chart" . }}
{{ include "claimgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/component: proxy
app.kubernetes.io/part-of: claimgate
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "claimgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "claimgate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret mounted at /etc/claimgate/secrets/. */}}
{{- define "claimgate.secretName" -}}
{{- if .Values.secret.create }}
{{- include "claimgate.fullname" . }}
{{- else }}
{{- default (include "claimgate.fullname" .) .Values.secret.existingSecret }}
{{- end }}
{{- end }}

{{/* claimgate.toml: the `config` value, or the chart's default files/claimgate.toml. */}}
{{- define "claimgate.config" -}}
{{- .Values.config | default (.Files.Get "files/claimgate.toml") }}
{{- end }}

{{/* revoked.toml: the `revocations` value, or files/revoked.toml. */}}
{{- define "claimgate.revocations" -}}
{{- .Values.revocations | default (.Files.Get "files/revoked.toml") }}
{{- end }}
