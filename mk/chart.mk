# Packaging: the Helm chart (charts/cai-operator), its lint and generated files.
#   make chart-crds    regenerate crds/ and the chart's CRD templates (also run by `make crds`)
#   make chart-sync    everything the chart generates: CRD templates, RBAC rules (from cai.controller.rbac),
#                      values.schema.json (hack/schema.py), docs/configuration.md
#   make chart-lint    helm lint (helm from `make cluster`)
# The container images (make images, images-lock, lint-images) are in mk/images.mk.
CHART := charts/cai-operator
HELM ?= $(firstword $(wildcard .cache/cluster/bin/helm) helm)

.PHONY: chart-crds chart-rbac chart-docs chart-sync chart-lint

# `make crds` (root Makefile) also refreshes the chart's copy: this runs first, the root recipe then
# finds crds/ up to date.
crds: chart-crds

chart-crds: env
	$(BIN)/cai crds
	$(BIN)/python $(CHART)/hack/sync-crds.py

chart-rbac: env
	$(BIN)/python $(CHART)/hack/sync-rbac.py

chart-sync: chart-crds chart-rbac chart-docs

chart-docs: env
	$(BIN)/python $(CHART)/hack/schema.py
	$(BIN)/python $(CHART)/hack/gen-docs.py

chart-lint: cluster
	$(HELM) lint --strict $(CHART)
