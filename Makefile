# wasmlet — run `make help` for the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# Heavy builds (the control plane, buf and its plugins) are cached here and
# reused across clones; delete it to rebuild from scratch.
WASMLET_CACHE ?= $(HOME)/.cache/wasmlet
export WASMLET_CACHE
TOOLS := $(WASMLET_CACHE)/bin
export PATH := $(TOOLS):$(PATH)

BUF_VERSION := v1.75.0
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
GO_BUILD_FLAGS := -trimpath -ldflags '-s -w'
# grpcnotrace: gRPC without golang.org/x/net/trace (wasmlet never turns gRPC
# tracing on), whose html/template made the linker keep every exported
# method; --gc-sections: the C linker drops wasmtime's unreferenced sections
# (Go does not ask it to).
GO_TAGS := grpcnotrace
WASMTIME_LDFLAGS := -s -w -extldflags=-Wl,--gc-sections

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-z][a-z-]*:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

# As root, `make up` gives the node a pod network (a CNI bridge) and runs
# kube-proxy: it needs the CNI plugins too.
.PHONY: up
up: deps build controlplane $(if $(filter 0,$(shell id -u)),cni) ## start a local wasmlet node (control plane, NATS, registry, services) and run the example pods; as root with a pod network and kube-proxy
	go run ./hack/localstack up

.PHONY: down
down: ## stop everything `make up` started and, as root, remove its pod network and kube-proxy rules
	go run ./hack/localstack down

.PHONY: test
test: deps tools controlplane metrics-server cni check ## run unit, integration and end-to-end tests (the CI command)
	WASMLET_REQUIRE_CLUSTER=1 go test -count=1 -timeout 40m ./...

.PHONY: test-short
test-short: ## unit tests only (no control plane needed)
	go test -short -count=1 ./...

.PHONY: bench-registry
bench-registry: ## measure the registry cache against a local docker-registry (hit latency, 100 concurrent pulls, second node)
	go run ./bench/cmd/registry-bench

.PHONY: bench
bench: controlplane ## run the benchmark suite on the local stack (ONLY=a,b picks sections); writes bench/results/<date>.json and .md
	go run ./bench/cmd/wasmlet-bench $(if $(ONLY),-only $(ONLY))

# Minimizing a new input takes up to a minute by default; the targets that
# write files would spend their time there.
FUZZTIME ?= 60s
FUZZMINIMIZE ?= 100x

.PHONY: fuzz
fuzz: ## run every Fuzz target in the repo for FUZZTIME each (default 60s), one after another (not part of `make test`)
	@set -e; grep -rlE --include='*_test.go' --exclude-dir=.git '^func Fuzz[A-Za-z0-9_]*\(' . | sort | while read -r f; do \
	  for n in $$(sed -nE 's/^func (Fuzz[A-Za-z0-9_]*)\(.*/\1/p' "$$f"); do \
	    echo "== $$n $$(dirname $$f)"; \
	    go test -run '^$$' -fuzz "^$$n\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) -parallel 1 "$$(dirname $$f)/"; \
	  done; \
	done

.PHONY: build
# A node runs one engine: bin/executor has wasmtime (the default), and
# bin/executor-wazero, pure Go, has wazero (a node agent with
# --default-executor wazero supervises it); an executor built without tags
# has both.
build: ## build the services into bin/ (the executor once per engine) and the example module into bin/wasm/
	go build $(GO_BUILD_FLAGS) -tags $(GO_TAGS) -o bin/ ./services/nodeagent ./services/registry-cache
	go build -trimpath -ldflags '$(WASMTIME_LDFLAGS)' -tags $(GO_TAGS),nowazero -o bin/executor ./services/executor
	CGO_ENABLED=0 go build $(GO_BUILD_FLAGS) -tags $(GO_TAGS),nowasmtime -o bin/executor-wazero ./services/executor
	go build $(GO_BUILD_FLAGS) -o bin/nats-server github.com/nats-io/nats-server/v2
	GOOS=wasip1 GOARCH=wasm go build -trimpath -o bin/wasm/hello.wasm ./examples/hello
	GOOS=wasip1 GOARCH=wasm go build -trimpath -o bin/wasm/httpserver.wasm ./examples/httpserver
	wat2wasm -o bin/wasm/wagi-hello.wasm examples/wagi-hello/hello.wat
	GOOS=wasip1 GOARCH=wasm go build -trimpath -o bin/wasm/wagi-hello-go.wasm ./examples/wagi-hello-go

.PHONY: deps
deps: ## install the Debian packages the stack and tests need (docker-registry, wabt, apache2-utils)
	@hack/deps.sh

.PHONY: controlplane
controlplane: ## build (once, then cached) etcd, kube-apiserver, kube-scheduler and kube-controller-manager
	@hack/controlplane/build.sh >/dev/null

.PHONY: metrics-server
metrics-server: ## build (once, then cached) metrics-server, which the `kubectl top` end-to-end test runs
	@hack/metrics-server/build.sh >/dev/null

.PHONY: cni
cni: ## build (once, then cached) the standard CNI plugins (bridge, host-local, loopback, portmap) that give pods their IPs in the local stack and tests
	@hack/cni/build.sh >/dev/null

.PHONY: tools
tools: $(TOOLS)/buf $(TOOLS)/protoc-gen-go $(TOOLS)/protoc-gen-go-grpc ## install buf and the protoc plugins into the cache

$(TOOLS)/buf:
	GOBIN=$(TOOLS) go install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
$(TOOLS)/protoc-gen-go:
	GOBIN=$(TOOLS) go install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
$(TOOLS)/protoc-gen-go-grpc:
	GOBIN=$(TOOLS) go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)

.PHONY: generate
generate: tools ## regenerate gen/ from proto/ (offline, local plugins)
	rm -rf gen && buf generate

.PHONY: check
check: tools ## buf lint and breaking, gen/ up to date, gofmt, go vet
	buf lint
	buf breaking --against '.git#branch=main'
	@tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT && \
	  buf generate -o $$tmp && \
	  diff -r $$tmp/gen gen >/dev/null || { echo "gen/ differs from a fresh 'buf generate': run 'make generate' and commit"; diff -r $$tmp/gen gen | head -20; exit 1; }
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '^gen/')); [ -z "$$out" ] || { echo "gofmt needed: $$out"; exit 1; }
	go vet ./...

.PHONY: compose-images
compose-images: ## build the compose stack's images FROM scratch from static binaries (deploy/compose; nothing is pulled)
	@hack/compose/build.sh

.PHONY: compose-up
compose-up: compose-images ## start the compose stack (control plane, NATS, registry, registry cache, two nodes, executors), wait for both Nodes Ready
	@hack/compose/stack.sh up

.PHONY: compose-down
compose-down: ## stop the compose stack and remove its containers, networks and volumes
	@hack/compose/stack.sh down

.PHONY: compose-test
compose-test: ## test the compose stack from nothing with docker compose and kubectl (skips, saying why, when no Docker engine answers)
	@if docker info >/dev/null 2>&1; then hack/compose/build.sh; \
	  else echo "compose-test: no Docker engine answers (docker info failed): no images built; the test will skip"; fi
	WASMLET_COMPOSE_TEST=1 go test -count=1 -v -timeout 20m ./test/compose

.PHONY: clean
clean: ## remove bin/ and the local stack's state
	rm -rf bin .state
