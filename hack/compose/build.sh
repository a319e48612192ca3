#!/usr/bin/env bash
# Builds the images of the compose stack (deploy/compose), each FROM scratch
# from static binaries built here: nothing is pulled. The control plane and
# the OCI registry come from their cached builds (hack/controlplane/build.sh,
# hack/compose/registry/build.sh); wasmlet's services, nats-server and the
# stack's glue (hack/compose/wasmlet-compose) are built from this tree into
# bin/compose/. Images are built one after another (the machines have 2 cores)
# and tagged wasmlet-compose/<name>:${WASMLET_COMPOSE_TAG:-dev}.
#
# executor-arm64 is the executor built for linux/arm64 (cgo, cross-linked
# with Debian's gcc-aarch64-linux-gnu) and run by qemu-aarch64-static
# (qemu-user-static), both installed here when missing (as root, with apt).
#
# WASMLET_COMPOSE_SRC builds the Go binaries from another checkout of this
# module (e.g. a `git worktree` of the last commit while the tree is mid-edit).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
src=$(cd "${WASMLET_COMPOSE_SRC:-$root}" && pwd)
out=$root/bin/compose
tag=${WASMLET_COMPOSE_TAG:-dev}
export DOCKER_BUILDKIT=0 # the classic builder: no BuildKit front end to pull

missing=()
for pkg in qemu-user-static gcc-aarch64-linux-gnu libc6-dev-arm64-cross; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages for executor-arm64: ${missing[*]} (sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
  echo "installing: ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

cp_dir=$("$root/hack/controlplane/build.sh")
reg_dir=$("$root/hack/compose/registry/build.sh")

cd "$src"
start=$(date +%s)
mkdir -p "$out/bin" "$out/wasm"
# Tags and flags as make build's: gRPC without its tracing, and each
# executor with one engine (wasmtime's with the C linker's --gc-sections).
CGO_ENABLED=0 go build -trimpath -tags grpcnotrace -ldflags '-s -w' -o "$out/bin/" \
  ./hack/compose/wasmlet-compose ./services/nodeagent ./services/registry-cache
mkdir -p "$out/bin/wazero"
CGO_ENABLED=0 go build -trimpath -tags grpcnotrace,nowasmtime -ldflags '-s -w' -o "$out/bin/wazero/executor" ./services/executor
CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$out/bin/nats-server" github.com/nats-io/nats-server/v2
# wasmtime-go is cgo with a static libwasmtime: link everything in. The
# linker's warnings about getpwuid_r, getaddrinfo and dlopen concern code
# paths wasmlet does not take.
CGO_ENABLED=1 go build -trimpath -tags netgo,osusergo,grpcnotrace,nowazero \
  -ldflags "-s -w -linkmode external '-extldflags=-static -Wl,--gc-sections'" \
  -o "$out/bin/executor" ./services/executor 2> >(grep -v 'statically linked applications\|in function\|^/usr/bin/ld\|^# ' >&2 || true)
mkdir -p "$out/bin/arm64"
CGO_ENABLED=1 GOARCH=arm64 CC=aarch64-linux-gnu-gcc go build -trimpath -tags netgo,osusergo,grpcnotrace,nowazero \
  -ldflags "-s -w -linkmode external '-extldflags=-static -Wl,--gc-sections'" \
  -o "$out/bin/arm64/executor" ./services/executor 2> >(grep -v 'statically linked applications\|in function\|^/usr/bin/ld\|^# ' >&2 || true)
GOOS=wasip1 GOARCH=wasm go build -trimpath -o "$out/wasm/hello.wasm" ./examples/hello
GOOS=wasip1 GOARCH=wasm go build -trimpath -o "$out/wasm/httpserver.wasm" ./examples/httpserver
echo "built the binaries in $(( $(date +%s) - start ))s" >&2

# rootfs/ is the first layer of every image: the glue and an empty /tmp. Its
# files' times are fixed so that the layer is the same in every image (Docker
# stores it once) and from one build to the next.
rm -rf "$out/rootfs" && mkdir -p "$out/rootfs/bin" "$out/rootfs/tmp"
chmod 1777 "$out/rootfs/tmp"
cp "$out/bin/wasmlet-compose" "$out/rootfs/bin/"
find "$out/rootfs" -exec touch -h -d @0 {} +

# image name, then the files of its build context.
images=(
  "init"
  "etcd $cp_dir/etcd"
  "kube-apiserver $cp_dir/kube-apiserver"
  "kube-scheduler $cp_dir/kube-scheduler"
  "kube-controller-manager $cp_dir/kube-controller-manager"
  "nats $out/bin/nats-server"
  "registry $reg_dir/registry $root/deploy/compose/images/registry.yml"
  "registry-cache $out/bin/registry-cache"
  "nodeagent $out/bin/nodeagent"
  "executor $out/bin/executor"
  "executor-wazero $out/bin/wazero/executor"
  "executor-arm64 $out/bin/arm64/executor /usr/bin/qemu-aarch64-static"
)
for entry in "${images[@]}"; do
  read -r name files <<<"$entry"
  ctx=$out/ctx/$name
  rm -rf "$ctx" && mkdir -p "$ctx"
  cp -a "$out/rootfs" "$ctx/rootfs"
  for f in $files; do
    ln -f "$f" "$ctx/" 2>/dev/null || cp "$f" "$ctx/"
  done
  t0=$(date +%s)
  docker build -q --label io.wasmlet.compose=true -t "wasmlet-compose/$name:$tag" -f "$root/deploy/compose/images/$name.Dockerfile" "$ctx" >/dev/null \
    2> >(grep -v 'DEPRECATED: The legacy builder\|BuildKit is currently disabled\|environment-variable\.\|^$' >&2 || true)
  echo "image wasmlet-compose/$name:$tag ($(( $(date +%s) - t0 ))s)" >&2
done
# The images these replaced, now untagged: only ours (by label).
docker image prune -f --filter label=io.wasmlet.compose=true >/dev/null
echo "built the images in $(( $(date +%s) - start ))s" >&2
