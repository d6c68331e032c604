#!/usr/bin/env bash
# What the local real node needs from Debian's packages: containerd + runc, the CNI
# plugins, iptables and iproute2 for the node's network, docker.io (BuildKit) and
# debootstrap for the images, gcc + libc6-dev for the pause binary. As root, installs
# what is missing with apt-get; otherwise says in one line what to install.
set -euo pipefail

declare -A wants=(
  [containerd]=containerd [ctr]=containerd [runc]=runc
  [/usr/lib/cni/bridge]=containernetworking-plugins [iptables]=iptables [ip]=iproute2
  [dockerd]=docker.io [/usr/bin/docker]=docker.io [debootstrap]=debootstrap
  [gcc]=gcc [/usr/lib/x86_64-linux-gnu/libc.a]=libc6-dev [mount]=mount
)
missing=()
for tool in "${!wants[@]}"; do
  if [[ $tool == /* ]]; then [[ -e $tool ]] && continue; else command -v "$tool" >/dev/null && continue; fi
  missing+=("${wants[$tool]}")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
if [[ $(id -u) -ne 0 ]]; then
  echo "the real node needs root and these Debian packages: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "realnode/deps.sh: apt-get install ${missing[*]}" >&2
apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
