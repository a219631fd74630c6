# The test control plane (tests/cluster, docs/development-cluster.md): real kube-apiserver, etcd,
# controller-manager, scheduler, kwok, MinIO and Prometheus on 127.0.0.1.
#   make cluster       build the binaries once into ~/.cache/cai-cluster/<version-key>/bin (link: .cache/cluster/bin)
#   make cluster-up    start everything; kubeconfig in .cache/cluster/kubeconfig, S3 in .cache/cluster/s3.env
#   make cluster-down  stop it
CLUSTER_DIR ?= .cache/cluster

.PHONY: cluster cluster-up cluster-down cluster-status

cluster:
	@bash tests/cluster/build.sh

cluster-up: cluster env
	$(BIN)/python -m tests.cluster.control_plane up --root $(CLUSTER_DIR)

cluster-down:
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m tests.cluster.control_plane down --root $(CLUSTER_DIR); \
	else python3 -m tests.cluster.control_plane down --root $(CLUSTER_DIR); fi

cluster-status:
	$(BIN)/python -m tests.cluster.control_plane status --root $(CLUSTER_DIR)
