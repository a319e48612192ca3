#!/usr/bin/env bash
# Installs the Debian packages wasmlet's local stack and tests need, if any
# is missing: docker-registry (the OCI registry), wabt (wat2wasm for test
# modules), apache2-utils (htpasswd for the registry's basic auth), and
# iptables and iproute2 (the CNI plugins' rules and the network namespace
# tests), and conntrack (kube-proxy's iptables mode clears stale UDP flows with it).
set -euo pipefail
missing=()
for pkg in docker-registry wabt apache2-utils iptables iproute2 conntrack; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages: ${missing[*]}; install them (sudo apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "installing: ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
