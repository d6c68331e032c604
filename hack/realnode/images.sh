#!/usr/bin/env bash
# Build every image the local real node runs and load the new ones into its
# containerd. No registry is reachable here, so nothing is pulled:
#   flipserve.local/debian-python:bookworm  base, from Debian packages (debootstrap)
#   flipserve.local/pause:3.10              the pod sandbox (hack/realnode/pause)
#   flipserve.local/seaweedfs:dev           the chart's S3 server (weed, built by build.sh)
#   flipserve:dev                           the repository's Dockerfile on that base,
#                                           torch from the default package index
# Usage: images.sh [CONTAINERD_SOCKET REALNODE_BIN_DIR]  (no arguments: build the base
# and the flipserve image only, load nothing)
# Docker's data (and so BuildKit's cache) lives in $FLIPSERVE_CACHE/realnode/docker,
# so a second run rebuilds only what changed; when nothing it is built from changed and
# containerd still has it, nothing is built or imported at all. A dockerd this script
# starts, it stops (by process id).
set -euo pipefail

sock=${1:-} bin=${2:-}
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${FLIPSERVE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/flipserve}/realnode"
BASE=flipserve.local/debian-python:bookworm
PAUSE=flipserve.local/pause:3.10
WEED=flipserve.local/seaweedfs:dev
APP=${FLIPSERVE_IMAGE:-flipserve:dev}
# What the flipserve image is built from: when none of it changed and containerd still
# has the image, nothing is built (dockerd is not even started).
app_key="$(cd "$repo" && { cat Dockerfile .dockerignore pyproject.toml README.md requirements/lock.txt;
  find src -type f -not -path '*/__pycache__/*' -print0 | sort -z | xargs -0 cat; } | sha256sum | cut -c1-16)"
# Debian's own docker client: it speaks the API of Debian's dockerd.
docker=$(command -v /usr/bin/docker || command -v docker)
log() { echo "realnode/images.sh: $* ($((SECONDS))s)" >&2; }

containerd_ref() {  # the name containerd gives an image (docker.io/library/ for a bare name)
  local ref=$1
  [[ $ref == */* ]] || ref=library/$ref
  [[ ${ref%%/*} == *.* ]] || ref=docker.io/$ref
  echo "$ref"
}
loaded() {  # loaded <image> <key>: containerd has it, imported from inputs with that key
  local mark
  mark="$cache/imported/$(printf %s "$1" | tr '/:' '__')"
  [[ -n $sock && -f $mark && $(cat "$mark") == "$2" ]] &&
    ctr --address "$sock" -n k8s.io images ls -q | grep -qxF "$(containerd_ref "$1")"
}
bin_key=""
[[ -n $bin ]] && bin_key="$(cat "$bin/pause" "$bin/weed" | sha256sum | cut -c1-16)"
if loaded "$APP" "$app_key" && { [[ -z $bin ]] || { loaded "$PAUSE" "$bin_key" && loaded "$WEED" "$bin_key"; }; }; then
  log "images unchanged and loaded"
  exit 0
fi

export DOCKER_HOST="unix://$cache/docker.sock" DOCKER_BUILDKIT=1
started=""
stop_docker() {
  if [[ -n $started ]]; then kill "$started" 2>/dev/null || true; wait "$started" 2>/dev/null || true; fi
}
trap stop_docker EXIT
if ! "$docker" info >/dev/null 2>&1; then
  mkdir -p "$cache/docker" "$cache/docker-exec"
  # No bridge and no iptables rules of its own: builds use the host's network.
  dockerd --data-root "$cache/docker" --exec-root "$cache/docker-exec" \
    --pidfile "$cache/docker.pid" -H "$DOCKER_HOST" --bridge=none --iptables=false \
    --ip-masq=false >"$cache/dockerd.log" 2>&1 &
  started=$!
  for _ in $(seq 100); do "$docker" info >/dev/null 2>&1 && break; sleep 0.2; done
  "$docker" info >/dev/null 2>&1 || { tail -20 "$cache/dockerd.log" >&2; exit 1; }
fi

have() { "$docker" image inspect "$1" >/dev/null 2>&1; }
secret=()
[[ -s ${SSL_CERT_FILE:-} ]] && secret=(--secret "id=ca,src=$SSL_CERT_FILE")

if ! have "$BASE"; then
  log "building $BASE with debootstrap"
  root="$(mktemp -d "$cache/rootfs.XXXXXX")"
  # shellcheck disable=SC2064
  trap "rm -rf '$root'; stop_docker" EXIT
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$root" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$cache/debootstrap.log" 2>&1 \
    || { tail -20 "$cache/debootstrap.log" >&2; exit 1; }
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | "$docker" import \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'CMD ["python3"]' - "$BASE" >/dev/null
  rm -rf "$root"
fi

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"; stop_docker' EXIT
scratch_image() {  # scratch_image <tag> <binary> <entrypoint: its path in the image>
  rm -rf "$ctx"/* && cp "$bin/$2" "$ctx/$2"
  printf 'FROM scratch\nCOPY %s %s\nENTRYPOINT ["%s"]\n' "$2" "$3" "$3" >"$ctx/Dockerfile"
  "$docker" build -q -t "$1" "$ctx" >/dev/null
}
if [[ -n $bin ]]; then
  log "building $PAUSE and $WEED"
  scratch_image "$PAUSE" pause /pause
  # where the upstream image has it too, so the chart's `command` fits both
  scratch_image "$WEED" weed /usr/bin/weed
fi

log "building $APP from the repository's Dockerfile (first build: torch and its CUDA wheels)"
"$docker" build --network host --progress plain -t "$APP" \
  --build-arg BASE_IMAGE="$BASE" --build-arg TORCH_INDEX= "${secret[@]}" "$repo" \
  >"$cache/build-app.log" 2>&1 || { tail -40 "$cache/build-app.log" >&2; exit 1; }

# Superseded images and old build steps: the image is ~7 GB (torch's CUDA wheels), and
# the disk is shared. The newest 12 GB of BuildKit's cache (the uv cache among it) stay.
"$docker" image prune -f >/dev/null
"$docker" builder prune -f --keep-storage 12GB >/dev/null

[[ -n $sock ]] || { log "built (no containerd socket given: nothing loaded)"; exit 0; }
mkdir -p "$cache/imported"
load() {  # load <image> <key>
  local image=$1 key=$2 ref target
  loaded "$image" "$key" && return 0
  log "loading $image into containerd"
  ref="$(containerd_ref "$image")"
  "$docker" save "$image" | ctr --address "$sock" -n k8s.io images import - >/dev/null
  # Once unpacked into snapshots, the layer blobs are a second copy of the image that
  # nothing here reads again (containerd 1.7's --discard-unpacked-layers does the same):
  # the manifest and config stay, so the image is still listed and runs.
  target="$(ctr --address "$sock" -n k8s.io images ls | awk -v r="$ref" '$1 == r {print $3}')"
  ctr --address "$sock" -n k8s.io content get "$target" | python3 -c '
import json, sys
doc = json.load(sys.stdin)
print("\n".join(layer["digest"] for layer in doc.get("layers", [])))' |
    xargs -r ctr --address "$sock" -n k8s.io content rm >/dev/null
  echo "$key" >"$cache/imported/$(printf %s "$image" | tr '/:' '__')"
}
if [[ -n $bin ]]; then
  load "$PAUSE" "$bin_key"
  load "$WEED" "$bin_key"
fi
load "$APP" "$app_key"
log "images ready"
