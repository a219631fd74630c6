#!/usr/bin/env bash
# Builds the test control plane's binaries (see docs/development-cluster.md), called by `make cluster`.
#
# Everything is built from the Go modules pinned in this directory (go.mod: Kubernetes v1.34 + etcd +
# helm; kwok/go.mod; minio/go.mod; coredns/go.mod; pause/, our own sandbox program) into a cache outside
# git keyed by those pins:
#   ${CAI_CLUSTER_CACHE:-~/.cache/cai-cluster}/<version-key>/bin
# and .cache/cluster/bin (in the repository) is made a symlink to it. Only missing binaries are built,
# so a second run does nothing. From Debian (apt, installed when missing): Prometheus and promtool
# (linked in too), and the real node's containerd, runc, CNI plugins, iptables and static busybox. The
# node's two small images (pause, busybox) are written next to the binaries by oci_image.py.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="${GOFLAGS:--buildvcs=false}"
NICE="${NICE:-nice -n 10}"

K8S_VERSION=v1.34.10      # keep in step with go.mod
HELM_VERSION=v3.19.5
# etcd v3.6.4 comes from go.mod (the version k8s 1.34 uses)

k8s_ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=34"
  k8s_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

# helm's stamps, as helm's own Makefile sets them: its version, and the Kubernetes version it assumes
# without a cluster (`helm template`/`lint` check charts' kubeVersion against it; unstamped it is 1.20).
helm_ldflags="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
  helm_ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=34"
done

# MinIO's version stamp, from its pseudo-version in minio/go.mod (commit time and hash)
minio_pv="$(awk '{for (i = 1; i < NF; i++) if ($i == "github.com/minio/minio") print $(i + 1)}' "$here/minio/go.mod")"
minio_ts="$(cut -d- -f2 <<<"$minio_pv")"; minio_commit="$(cut -d- -f3 <<<"$minio_pv")"
minio_time="${minio_ts:0:4}-${minio_ts:4:2}-${minio_ts:6:2}T${minio_ts:8:2}:${minio_ts:10:2}:${minio_ts:12:2}Z"
minio_ldflags="-X github.com/minio/minio/cmd.Version=$minio_time"
minio_ldflags+=" -X github.com/minio/minio/cmd.ReleaseTag=DEVELOPMENT.${minio_time//:/-}"
minio_ldflags+=" -X github.com/minio/minio/cmd.CommitID=$minio_commit -X github.com/minio/minio/cmd.ShortCommitID=$minio_commit"

# name | module dir | package | extra ldflags
targets=(
  "etcd|.|go.etcd.io/etcd/server/v3|"
  "kube-apiserver|.|k8s.io/kubernetes/cmd/kube-apiserver|$k8s_ldflags"
  "kube-controller-manager|.|k8s.io/kubernetes/cmd/kube-controller-manager|$k8s_ldflags"
  "kube-scheduler|.|k8s.io/kubernetes/cmd/kube-scheduler|$k8s_ldflags"
  "kubectl|.|k8s.io/kubernetes/cmd/kubectl|$k8s_ldflags"
  "kubelet|.|k8s.io/kubernetes/cmd/kubelet|$k8s_ldflags"
  "kube-proxy|.|k8s.io/kubernetes/cmd/kube-proxy|$k8s_ldflags"
  "helm|.|helm.sh/helm/v3/cmd/helm|$helm_ldflags"
  "kwok|kwok|sigs.k8s.io/kwok/cmd/kwok|"
  "minio|minio|github.com/minio/minio|$minio_ldflags"
  "coredns|coredns|github.com/coredns/coredns|"
  "pause|pause|.|"
)

# The cache key: everything that decides what the binaries are (pins, build flags, Go), not comments.
key_inputs() {
  cat "$here/go.mod" "$here/go.sum" "$here/kwok/go.mod" "$here/kwok/go.sum" \
      "$here/minio/go.mod" "$here/minio/go.sum" "$here/coredns/go.mod" "$here/coredns/go.sum" \
      "$here/pause/go.mod" "$here/pause/main.go" "$here/oci_image.py"
  printf '%s\n' "${targets[@]}" "$CGO_ENABLED"
  "$GO" env GOVERSION GOARCH GOOS
}
key="k8s-${K8S_VERSION}-$(key_inputs | sha256sum | cut -c1-12)"
cache_root="${CAI_CLUSTER_CACHE:-$HOME/.cache/cai-cluster}"
dest="$cache_root/$key/bin"
mkdir -p "$dest" "$repo/.cache/cluster"

built=0
for t in "${targets[@]}"; do
  IFS='|' read -r name dir pkg extra <<<"$t"
  [[ -x "$dest/$name" ]] && continue
  echo ">> building $name ($pkg) into $dest"
  start=$SECONDS
  tmp="$dest/.$name.$$.tmp"  # several builds at once each link their own file; the last rename wins
  (cd "$here/$dir" && $NICE "$GO" build -trimpath -ldflags="-s -w $extra" -o "$tmp" "$pkg") \
    || { rm -f "$tmp"; exit 1; }
  mv -f "$tmp" "$dest/$name"
  echo ">> $name built in $((SECONDS - start))s"
  built=1
done

# From Debian: Prometheus and promtool; the real node's runtime (tests/cluster/node.py).
debian=(prometheus containerd runc containernetworking-plugins iptables busybox-static)
need=()
for pkg in "${debian[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if ((${#need[@]})); then
  echo ">> installing Debian packages: ${need[*]}"
  sudo_=""; [[ $(id -u) -eq 0 ]] || sudo_="sudo"
  $sudo_ apt-get install -y --no-install-recommends "${need[@]}" \
    || { $sudo_ apt-get update && $sudo_ apt-get install -y --no-install-recommends "${need[@]}"; }
fi
for tool in prometheus promtool; do
  ln -sfn "$(command -v $tool)" "$dest/$tool"
done

# The node's images, as archives for `ctr images import` (no registry here): the sandbox ("pause")
# image from our program, and a busybox image for tests that need a shell in a pod.
image() {  # name ref oci_image.py-args...
  local out="$dest/$1-image.tar"; shift
  [[ -s "$out" ]] && return 0
  python3 "$here/oci_image.py" --out "$out" --ref "$@" >/dev/null
  echo ">> image $(basename "$out") written"
}
image pause cai.local/pause:1 --file /pause="$dest/pause":0755 --entrypoint /pause --user 65535:65535
busybox_links=()
for cmd in sh cat echo env grep hostname httpd id ls mkdir nc nslookup sleep test true false wget; do
  busybox_links+=(--link "/bin/$cmd=busybox")
done
image busybox cai.local/busybox:1 --file /bin/busybox=/bin/busybox:0755 "${busybox_links[@]}" \
  --dir /tmp:1777 --entrypoint /bin/sh

echo "$key" >"$cache_root/$key/KEY"
ln -sfn "$dest" "$repo/.cache/cluster/bin"
if [[ $built == 1 ]]; then echo ">> cluster binaries ready in $dest"; else echo ">> cluster binaries up to date ($key)"; fi
