#!/usr/bin/env bash
# The test node's private view of this machine; tests/cluster/node.py starts containerd through it:
#   nsenter --net=<node netns> unshare --mount --propagation slave \
#     bash node-ns.sh NODE_DIR "vm/overcommit_memory kernel/panic ..." "/var/lib /var/log /run" -- containerd ...
# and the kubelet and kube-proxy then join containerd's namespaces with nsenter. Mounts made here (and by
# the kubelet, containerd and runc later) never propagate back to the host, and vanish when the last
# process of the namespace exits.
#  1. The kernel settings the kubelet sets at start (node.py's SYSCTLS, given as arguments) are
#     host-wide: each /proc/sys entry gets a plain file with its current value bind-mounted over it,
#     so the kubelet reads and writes that file and the machine's setting stays as it is.
#  2. /var/lib, /var/log and /run (node.py's OVERLAID) become overlays whose writes land in
#     NODE_DIR/overlay: the places the kubelet, containerd, CNI and iptables write to without a setting
#     to move them (/var/lib/kubelet/device-plugins, /var/log/containers, /run/containerd/s,
#     /var/lib/cni, /run/xtables.lock) stay per node and are removed with NODE_DIR.
set -euo pipefail
node="$1" sysctls="$2" overlaid="$3"
shift 3
[[ "${1:-}" == "--" ]] && shift

mkdir -p "$node/sysctl"
for key in $sysctls; do
  copy="$node/sysctl/${key//\//.}"
  cat "/proc/sys/$key" >"$copy"
  mount --bind "$copy" "/proc/sys/$key"
done

for dir in $overlaid; do
  layer="$node/overlay/${dir//\//_}"
  mkdir -p "$layer/upper" "$layer/work"
  mount -t overlay overlay -o "lowerdir=$dir,upperdir=$layer/upper,workdir=$layer/work" "$dir"
done

exec "$@"
