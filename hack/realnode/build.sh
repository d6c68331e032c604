#!/usr/bin/env bash
# Build the real node's own binaries: CoreDNS (cluster DNS, a few plugins only),
# SeaweedFS's `weed` (the chart's embedded S3 server) and the pod sandbox's
# pause. kubelet and kube-proxy come from the control plane's pinned
# k8s.io/kubernetes module (hack/controlplane/build.sh).
#
# Binaries land in $FLIPSERVE_CACHE/realnode/<key>/bin, <key> hashing every
# input here, so an unchanged tree reuses them. Prints the bin directory on
# stdout; progress goes to stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${FLIPSERVE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/flipserve}"
key="$(cat "$here"/*/go.mod "$here"/*/go.sum "$here"/*/*.go "$here"/pause/pause.c "$here/build.sh" \
  | sha256sum | cut -c1-16)"
bin="$cache/realnode/$key/bin"
binaries=(coredns weed pause)

complete() {
  local b
  for b in "${binaries[@]}"; do [[ -x "$bin/$b" ]] || return 1; done
}
if complete; then echo "$bin"; exit 0; fi

command -v go >/dev/null || { echo "realnode/build.sh: the Go toolchain is needed" >&2; exit 1; }
command -v gcc >/dev/null || { echo "realnode/build.sh: gcc is needed (apt-get install gcc libc6-dev)" >&2; exit 1; }
mkdir -p "$bin"
tmp="$(mktemp -d "$bin/../build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
export CGO_ENABLED=0 GOFLAGS=-mod=mod
start=$SECONDS

gobuild() {  # gobuild <module dir> <output name> <package>
  local dir=$1 name=$2 pkg=$3
  [[ -x "$bin/$name" ]] && return 0
  echo "realnode/build.sh: building $name ($((SECONDS - start))s elapsed)" >&2
  (cd "$here/$dir" && go build -trimpath -ldflags "-s -w" -o "$tmp/$name" "$pkg")
  mv "$tmp/$name" "$bin/$name"
}

if [[ ! -x "$bin/pause" ]]; then
  gcc -Os -static -o "$tmp/pause" "$here/pause/pause.c" && strip "$tmp/pause"
  mv "$tmp/pause" "$bin/pause"
fi
gobuild coredns coredns .
gobuild seaweedfs weed github.com/seaweedfs/seaweedfs/weed

echo "realnode/build.sh: built in $((SECONDS - start))s" >&2
echo "$bin"
