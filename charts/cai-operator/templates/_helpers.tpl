{{/* Names, labels and the little logic shared by the templates. */}}

{{- define "cai-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cai-operator.fullname" -}}
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

{{/* Labels of every object (without app.kubernetes.io/part-of, which the generated CRDs carry). */}}
{{- define "cai-operator.chartLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{- define "cai-operator.labels" -}}
{{ include "cai-operator.chartLabels" . }}
app.kubernetes.io/name: {{ include "cai-operator.name" . }}
app.kubernetes.io/part-of: cai-operator
{{- end }}

{{- define "cai-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cai-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "cai-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "cai-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository[:tag|@digest] of an image values block; the tag defaults to the appVersion. */}}
{{- define "cai-operator.image" -}}
{{- $img := index . 0 }}{{- $root := index . 1 }}
{{- if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository (default $root.Chart.AppVersion $img.tag) }}
{{- end }}
{{- end }}

{{/* The namespaces the operator serves, as a list (empty: all, cluster scope only). */}}
{{- define "cai-operator.watchNamespaces" -}}
{{- if .Values.watchNamespaces }}
{{- toJson (uniq .Values.watchNamespaces) }}
{{- else if eq .Values.rbac.scope "namespaced" }}
{{- toJson (list .Release.Namespace) }}
{{- else }}
{{- toJson list }}
{{- end }}
{{- end }}

{{/* Default storage root s3://bucket/prefix, or empty. */}}
{{- define "cai-operator.storageUri" -}}
{{- if .Values.storage.bucket }}
{{- $prefix := trimAll "/" .Values.storage.prefix }}
{{- if $prefix }}{{ printf "s3://%s/%s" .Values.storage.bucket $prefix }}{{ else }}{{ printf "s3://%s" .Values.storage.bucket }}{{ end }}
{{- end }}
{{- end }}
