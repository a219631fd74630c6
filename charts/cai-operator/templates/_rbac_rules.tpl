{{/*
The operator's permissions, derived from what it calls (docs/rbac.md; tests/integration/test_rbac.py runs
the operator with exactly these and checks that everything else is denied):
  cai.dev kinds      list/watch (kopf's indexes and events); status patch (conditions, outputs)
  batch jobs         list/watch (index of stage Jobs), create, get (409: whose is it?), patch (suspend)
  configmaps         get (the run's frozen plan, the namespace's cai-storage), create (the plan)
  services           create (headless Service of a multi-node stage; garbage-collected with the run)
  pods               list (termination message of a failed stage pod)
  events             create (core/v1 Events on every transition)
No delete anywhere (ownerReferences let Kubernetes collect children), no Secrets (credentials reach pods by
secretKeyRef), no wildcards, and nothing cluster-wide beyond these kinds: kopf's scanning of CRDs and
namespaces is off (it serves the kinds present at start-up), so it lists neither.
*/}}
{{- define "cai-operator.rules.workload" -}}
- apiGroups: [cai.dev]
  resources: [constitutions, critiqueruns, preferencemodels, rlaifruns]
  verbs: [list, watch]
- apiGroups: [cai.dev]
  resources: [constitutions/status, critiqueruns/status, preferencemodels/status, rlaifruns/status]
  verbs: [patch]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, patch]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, create]
- apiGroups: [""]
  resources: [services]
  verbs: [create]
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}

{{/* Leader election: one Lease, named after the release, in the release namespace. create cannot be
limited to a name (the object does not exist yet); get and update can. */}}
{{- define "cai-operator.rules.lease" -}}
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [create]
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  resourceNames: [{{ include "cai-operator.fullname" . }}]
  verbs: [get, update]
{{- end }}
