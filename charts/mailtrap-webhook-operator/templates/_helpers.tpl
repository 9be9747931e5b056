{{/*
Naming and labels shared by every template. Names are cut to 63 characters,
the limit of a label value and of most Kubernetes names.
*/}}

{{- define "mailtrap-webhook-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mailtrap-webhook-operator.fullname" -}}
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

{{- define "mailtrap-webhook-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mailtrap-webhook-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mailtrap-webhook-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mailtrap-webhook-operator.labels" -}}
helm.sh/chart: {{ include "mailtrap-webhook-operator.chart" . }}
{{ include "mailtrap-webhook-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mailtrap-webhook-operator
{{- end }}

{{- define "mailtrap-webhook-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mailtrap-webhook-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "mailtrap-webhook-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* kopf peering lets several operator Pods share the work with one active at a time. */}}
{{- define "mailtrap-webhook-operator.peering" -}}
{{- if gt (int .Values.replicaCount) 1 }}{{ include "mailtrap-webhook-operator.fullname" . }}{{ end }}
{{- end }}

{{/* The receivers' default image: the receiver image of the operator's release. */}}
{{- define "mailtrap-webhook-operator.receiverImage" -}}
{{- $tag := .Values.receiver.image.tag | default .Values.image.tag | default .Chart.AppVersion }}
{{- printf "%s:%s" .Values.receiver.image.repository $tag }}
{{- end }}

{{/* Its pull policy: receiver.imagePullPolicy, else the operator image's. */}}
{{- define "mailtrap-webhook-operator.receiverImagePullPolicy" -}}
{{- default .Values.image.pullPolicy .Values.receiver.imagePullPolicy }}
{{- end }}
