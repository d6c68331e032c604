#!/usr/bin/env bash
# Build the local control plane's binaries (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kubectl, kwok, helm) and the real
# node's (kubelet, kube-proxy) from the pinned Go wrapper modules next to this
# script.
#
# Binaries land in $FLIPSERVE_CACHE/controlplane/<key>/bin, where <key> hashes
# every go.mod/go.sum here and this script, so a version bump builds afresh and
# an unchanged tree reuses the cache. Go's module and build caches are left in
# their usual places (go env GOMODCACHE / GOCACHE) so a second run is cheap.
# Prints the bin directory on stdout; progress goes to stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${FLIPSERVE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/flipserve}"

KUBE_VERSION=v1.34.4
HELM_VERSION=v3.19.5
KWOK_VERSION=v0.7.0

key="$(cat "$here"/*/go.mod "$here"/*/go.sum "$here/build.sh" | sha256sum | cut -c1-16)"
out="$cache/controlplane/$key"
bin="$out/bin"
binaries=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok helm kubelet kube-proxy)

complete() {
  local b
  for b in "${binaries[@]}"; do [[ -x "$bin/$b" ]] || return 1; done
}

if complete; then
  echo "$bin"
  exit 0
fi

command -v go >/dev/null || { echo "build.sh: the Go toolchain is needed (https://go.dev/dl)" >&2; exit 1; }
mkdir -p "$out"
tmp="$(mktemp -d "$out/build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
export CGO_ENABLED=0 GOFLAGS=-mod=mod
start=$SECONDS

build() {  # build <module dir> <output name> <package> [ldflags...]
  local dir=$1 name=$2 pkg=$3; shift 3
  if [[ -x "$bin/$name" ]]; then return 0; fi
  echo "build.sh: building $name ($((SECONDS - start))s elapsed)" >&2
  (cd "$here/$dir" && go build -trimpath -ldflags "-s -w $*" -o "$tmp/$name" "$pkg")
  mkdir -p "$bin"
  mv "$tmp/$name" "$bin/$name"
}

major=${KUBE_VERSION#v}; major=${major%%.*}
minor=${KUBE_VERSION#v*.}; minor=${minor%%.*}
kube_ldflags=()
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  kube_ldflags+=("-X $p.gitVersion=$KUBE_VERSION" "-X $p.gitMajor=$major"
    "-X $p.gitMinor=$minor" "-X $p.gitTreeState=clean"
    "-X $p.buildDate=1970-01-01T00:00:00Z")
done

build etcd etcd .
build kwok kwok sigs.k8s.io/kwok/cmd/kwok "-X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION"
build helm helm helm.sh/helm/v3/cmd/helm "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
for c in kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy; do
  build kube "$c" "k8s.io/kubernetes/cmd/$c" "${kube_ldflags[@]}"
done

secs=$((SECONDS - start))
echo "build.sh: built in ${secs}s" >&2
echo "$secs" > "$out/build-seconds"
echo "$bin"
