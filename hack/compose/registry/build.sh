#!/usr/bin/env bash
# Builds the OCI registry (github.com/distribution/distribution/v3/cmd/registry),
# static and without cgo, from this module into
# $WASMLET_CACHE/registry/<version>-<hash>/ and prints that directory. A directory
# that already holds the binary is reused.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${WASMLET_CACHE:-$HOME/.cache/wasmlet}
version=$(go -C "$here" list -m -f "{{.Version}}" github.com/distribution/distribution/v3)
key=$(cat "$here/go.mod" "$here/go.sum" "$here/build.sh" | sha256sum | cut -c1-12)
out="$cache/registry/$version-$key"

if [ -x "$out/registry" ]; then echo "$out"; exit 0; fi

mkdir -p "$out.tmp"
cd "$here"
export CGO_ENABLED=0
echo "building the OCI registry (distribution $version) into $out" >&2
go build -trimpath -tags netgo,osusergo -ldflags "-s -w -X github.com/distribution/distribution/v3/version.version=$version" \
  -o "$out.tmp/registry" github.com/distribution/distribution/v3/cmd/registry >&2
rm -rf "$out" && mv "$out.tmp" "$out"
echo "$out"
