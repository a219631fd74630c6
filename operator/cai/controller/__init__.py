"""The Kubernetes operator (`cai operator`): kopf handlers → pure reconcile → pure builders → kube I/O.

Where it sits (docs/design.md#the-operator):

* `handlers`   kopf registrations, a few lines each: keep indexes of the four kinds and of the stage Jobs,
               and put the affected run on the work queue.
* `controller` the worker: takes a key off the queue, gathers what reconcile asks for, applies the outcome.
* `reconcile`  pure: (typed resource, observed children) → outcome (objects to create, status, events).
* `builders`   pure: Job / ConfigMap / Service / Event dicts, names, labels, ownerReferences.
* `kube`       the only module that talks to the Kubernetes API.
* `leader`     Lease-based leader election (two replicas, one acts).
* `metrics`    Prometheus metrics and the /metrics, /healthz, /readyz endpoints.
* `config`     operator settings from the environment (the contract with the Helm chart).

Nothing here imports torch or transformers: the operator image installs `cai-operator` without extras.
"""
