#!/usr/bin/env bash
# make compose-up / compose-down: drives docker compose on deploy/compose.
#
#   stack.sh up     start the stack (images from hack/compose/build.sh), wait
#                   until both Nodes are Ready, push examples/hello to the
#                   stack's registry, write .state/compose/kubeconfig
#   stack.sh down   remove the stack's containers, networks and volumes
#   stack.sh push FILE REF   push a module to the stack's registry
#
# WASMLET_COMPOSE_PROJECT (default wasmlet) names the compose project;
# WASMLET_COMPOSE_API_PORT (6443) and WASMLET_COMPOSE_NATS_MONITOR_PORT
# (8222) are the host's 127.0.0.1 ports of the API server and NATS monitoring.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
project=${WASMLET_COMPOSE_PROJECT:-wasmlet}
state=$root/.state/compose
kubeconfig=$state/kubeconfig

if docker compose version >/dev/null 2>&1; then compose=(docker compose); else compose=(docker-compose); fi
compose+=(-p "$project" -f "$root/deploy/compose/compose.yaml")

push() { # FILE REF: through the registry cache's push command, on the compose network
  local file=$1 ref=$2
  "${compose[@]}" run --rm --no-deps -T -v "$(cd "$(dirname "$file")" && pwd)/$(basename "$file"):/module.wasm:ro" \
    --entrypoint /bin/registry-cache registry-cache push --plain-http /module.wasm "$ref"
}

wait_nodes() { # both Nodes Ready, within $1 seconds
  local deadline=$(( $(date +%s) + $1 ))
  until [ "$(kubectl --kubeconfig "$kubeconfig" get nodes wasmlet-1 wasmlet-2 \
      -o 'jsonpath={range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' 2>/dev/null | grep -c True)" = 2 ]; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "the Nodes were not Ready in time:" >&2
      "${compose[@]}" ps >&2 || true
      kubectl --kubeconfig "$kubeconfig" get nodes -o wide >&2 || true
      return 1
    fi
    sleep 1
  done
}

case ${1:-} in
up)
  start=$(date +%s)
  "${compose[@]}" up -d --remove-orphans
  mkdir -p "$state"
  docker cp "$("${compose[@]}" ps -q init)":/pki/host.kubeconfig "$kubeconfig"
  chmod 600 "$kubeconfig"
  wait_nodes 180
  push "$root/bin/compose/wasm/hello.wasm" registry:5000/examples/hello:v1 >/dev/null
  echo "stack up in $(( $(date +%s) - start ))s; examples/hello pushed as registry:5000/examples/hello:v1"
  kubectl --kubeconfig "$kubeconfig" get nodes -o wide
  cat <<EOT

  export KUBECONFIG=$kubeconfig
  kubectl get nodes -o wide
  ${compose[*]} ps

Stop and remove it all with: make compose-down
EOT
  ;;
down)
  "${compose[@]}" down -v --remove-orphans --timeout 10
  rm -f "$kubeconfig"
  ;;
push)
  push "$2" "$3"
  ;;
*)
  echo "usage: $0 up|down|push FILE REF" >&2
  exit 2
  ;;
esac
