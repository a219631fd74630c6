{{/* Rules for the namespaces the operator serves: its four kinds, the Jobs, ConfigMaps, Services it
creates, the pods it reads termination messages from, and the events it posts. */}}
{{- define "cai-operator.rules.workload" -}}
- apiGroups: [cai.dev]
  resources: [constitutions, critiqueruns, preferencemodels, rlaifruns]
  verbs: [get, list, watch, patch]
- apiGroups: [cai.dev]
  resources: [constitutions/status, critiqueruns/status, preferencemodels/status, rlaifruns/status]
  verbs: [get, patch, update]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, create, delete]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end }}

{{/* What a kopf operator serving all namespaces reads cluster-wide: peering, namespaces, CRDs. */}}
{{- define "cai-operator.rules.clusterwide" -}}
- apiGroups: [kopf.dev]
  resources: [clusterkopfpeerings]
  verbs: [get, list, watch, patch]
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- end }}

{{- define "cai-operator.rules.namespacedPeering" -}}
- apiGroups: [kopf.dev]
  resources: [kopfpeerings]
  verbs: [get, list, watch, patch]
{{- end }}
