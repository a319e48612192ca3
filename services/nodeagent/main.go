// Command nodeagent is the wasmlet node agent: it registers a Kubernetes
// Node and runs the WebAssembly pods scheduled to it. With no addresses
// given it embeds NATS and the registry cache and supervises one executor
// child process, so one binary and a kubeconfig are enough to join a cluster.
// Executors that announce themselves on its NATS for this node are used
// beside those given with --executor: several replicas of a flavour share
// its pods.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/wasmlet/wasmlet/internal/gcpercent"
	"github.com/wasmlet/wasmlet/internal/grpcutil"
	"github.com/wasmlet/wasmlet/internal/natsutil"
	"github.com/wasmlet/wasmlet/internal/profiling"
	"github.com/wasmlet/wasmlet/services/nodeagent/internal/agent"
	"github.com/wasmlet/wasmlet/services/nodeagent/internal/kubeletapi"
	"github.com/wasmlet/wasmlet/services/nodeagent/internal/podworker"
)

func main() {
	cfg, level, err := parseFlags(os.Args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "nodeagent:", err)
		os.Exit(2)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	cfg.Log = log
	// Served at /metrics on the kubelet API (nodes/metrics).
	cfg.Metrics = prometheus.NewRegistry()
	cfg.Metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	gcpercent.Set()
	stopProfile, err := profiling.Start("nodeagent")
	if err != nil {
		log.Warn("no CPU profile", "err", err)
	}
	defer stopProfile()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := agent.Run(ctx, cfg); err != nil {
		stopProfile()
		log.Error("node agent failed", "err", err)
		os.Exit(1)
	}
}

// kv is a repeatable KEY=VALUE flag.
type kv map[string]string

func (m kv) String() string { return fmt.Sprint(map[string]string(m)) }
func (m kv) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("%q: want KEY=VALUE", s)
	}
	m[k] = v
	return nil
}

// executorFlag is the repeatable --executor
// FLAVOUR=ADDRESS[,listener-socket=PATH]: a separately run executor's gRPC
// address and, optionally, its --listener-socket, over which the node agent
// hands it the listening sockets it opens for pods' containerPorts (in the
// pod's network namespace, or on the node's address). PATH must name the
// executor's socket from where the node agent runs: one host, or a
// directory both containers mount at the same path. Without it the
// executor opens pods' listeners itself, which a confined executor cannot
// do in a pod's network namespace.
type executorFlag struct{ addrs, sockets map[string]string }

func (f executorFlag) String() string { return fmt.Sprint(f.addrs) }
func (f executorFlag) Set(s string) error {
	const want = "want FLAVOUR=ADDRESS or FLAVOUR=ADDRESS,listener-socket=PATH"
	flavour, rest, ok := strings.Cut(s, "=")
	opts := strings.Split(rest, ",")
	if !ok || flavour == "" || opts[0] == "" {
		return fmt.Errorf("%q: %s", s, want)
	}
	socket := ""
	for _, o := range opts[1:] {
		k, v, _ := strings.Cut(o, "=")
		switch {
		case k != "listener-socket":
			return fmt.Errorf("%q: unknown option %q; %s", s, o, want)
		case !filepath.IsAbs(v) || len(v) > maxSocketPath:
			return fmt.Errorf("%q: listener-socket %q: want an absolute path of at most %d bytes", s, v, maxSocketPath)
		}
		socket = v
	}
	f.addrs[flavour] = opts[0]
	delete(f.sockets, flavour)
	if socket != "" {
		f.sockets[flavour] = socket
	}
	return nil
}

// maxSocketPath is the longest path a unix socket address holds on Linux.
const maxSocketPath = 107

// list is a repeatable string flag.
type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(s string) error { *l = append(*l, s); return nil }

func parseFlags(args []string) (agent.Config, slog.Level, error) {
	host, _ := os.Hostname()
	cfg := agent.Config{Labels: kv{}, Executors: kv{}, ExecutorListenerSockets: map[string]string{}, RuntimeHandlers: kv{}}
	var insecure, hostPaths list
	var level slog.Level
	fs := flag.NewFlagSet("nodeagent", flag.ContinueOnError)
	fs.StringVar(&cfg.Kubeconfig, "kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig of the node's identity (CN=system:node:<name>, O=system:nodes); with --bootstrap-kubeconfig, written by the node (default <state-dir>/kubeconfig)")
	fs.StringVar(&cfg.BootstrapKubeconfig, "bootstrap-kubeconfig", "", "kubeconfig holding a bootstrap token: when --kubeconfig is missing or its client certificate expired or unusable, the node sends a CSR for its client certificate (signer kubernetes.io/kube-apiserver-client-kubelet, CN=system:node:<name>, O=system:nodes), waits for its approval, keeps the pair in --cert-dir and writes --kubeconfig pointing at it, as the kubelet does")
	fs.StringVar(&cfg.CertDir, "cert-dir", "", "directory of the node's key pairs, as the kubelet's: client (kubelet-client-current.pem), kubelet API serving (kubelet-server-current.pem, or the self-signed kubelet.crt); default <state-dir>/pki")
	fs.BoolVar(&cfg.RotateCertificates, "rotate-certificates", false, "renew the node's client certificate before it expires (a CSR sent as the node; kube-controller-manager approves it when system:nodes is bound to ClusterRole system:certificates.k8s.io:certificatesigningrequests:selfnodeclient) and use the new one without a restart")
	fs.StringVar(&cfg.NodeName, "node-name", strings.ToLower(host), "name of the Node to register")
	fs.StringVar(&cfg.NodeIP, "node-ip", "127.0.0.1", "the node's address: reported as InternalIP, and where the kubelet API listens")
	fs.IntVar(&cfg.KubeletPort, "port", 10250, "kubelet API port")
	fs.StringVar(&cfg.StateDir, "state-dir", "/var/lib/wasmlet", "directory for NATS data, the registry cache, sockets and pod volumes")
	fs.StringVar(&cfg.ClientCAFile, "client-ca-file", "", "CA bundle of client certificates the kubelet API accepts (the cluster CA)")
	fs.StringVar(&cfg.TLSCertFile, "tls-cert-file", "", "kubelet API serving certificate (default: self-signed, kept in --cert-dir)")
	fs.StringVar(&cfg.TLSKeyFile, "tls-private-key-file", "", "kubelet API serving key")
	fs.BoolVar(&cfg.RotateServerCertificates, "rotate-server-certificates", false, "request the kubelet API serving certificate from the cluster (kubernetes.io/kubelet-serving CSR, approved with 'kubectl certificate approve') and renew it before it expires; kept in --cert-dir")
	fs.StringVar(&cfg.NATSURL, "nats", "", "NATS URL (token from WASMLET_NATS_TOKEN); empty: run NATS in-process")
	fs.StringVar(&cfg.RegistryCache, "registry-cache", "", "registry cache gRPC address; empty: in-process cache")
	fs.Var(&insecure, "insecure-registry", "registry host:port reached over plain HTTP (repeatable; in-process cache only)")
	fs.StringVar(&cfg.RegistryCAFile, "registry-ca-file", "", "extra CA bundle for registries (in-process cache only)")
	fs.Var(executorFlag{cfg.Executors, cfg.ExecutorListenerSockets}, "executor", "FLAVOUR=ADDRESS of a separately run executor (repeatable); none: supervise one child. FLAVOUR=ADDRESS,listener-socket=PATH also names its --listener-socket (as the node agent sees it), where pods' listening sockets are handed over to it (an executor that announces itself on NATS names its own)")
	cfg.GRPCTLS.AddFlags(fs, "grpc-", "the node agent's gRPC clients to tcp:// executors (--executor or announced) and --registry-cache (also given to a supervised executor for --registry-cache)")
	supervise := true
	fs.BoolVar(&supervise, "supervise-executor", true, "with no --executor, start and supervise one executor child; false: run pods only on executors that announce themselves on NATS for this node (executor --node NAME --flavour FLAVOUR --nats URL)")
	fs.StringVar(&cfg.DefaultExecutor, "default-executor", "wasmtime", "flavour for pods that name no RuntimeClass; the supervised executor serves it, on the engine of that name when it is wasmtime or wazero (only wazero hands pods their listening sockets)")
	fs.Var(kv(cfg.RuntimeHandlers), "runtime-handler", "HANDLER=FLAVOUR: RuntimeClass handler routed to an executor flavour (repeatable)")
	fs.StringVar(&cfg.ExecutorUser, "executor-user", agent.DefaultExecutorUser, "UID[:GID] (numbers; no /etc/passwd entry needed) that a root node agent runs its supervised executor as; its state dir, socket, the registry cache's socket and the pods' volumes are made usable by it (emptyDir writable, other volumes readable), hostPath volumes are as the host's modes let that user; with separately run executors (--executor), the pods' volumes and the embedded registry cache's socket are shared with that user's group, for executors started with --run-as-user/--run-as-group of that user; root or empty: the executor runs as root")
	fs.StringVar(&cfg.ExecutorBinary, "executor-binary", "", "executor binary to supervise (default: beside this binary, 'executor-wazero' when --default-executor is wazero and it is there, else 'executor')")
	fs.Var(kv(cfg.Labels), "node-label", "KEY=VALUE label for the Node (repeatable)")
	fs.Var(&hostPaths, "allowed-host-path", "host directory that hostPath volumes may name, with what is below it (repeatable; default none)")
	fs.Int64Var(&cfg.RegistryMaxBytes, "registry-max-bytes", 0, "size budget of the in-process registry cache (least recently used modules not in use are evicted); 0: none")
	fs.StringVar(&cfg.ExecutorArtifactKeyFile, "executor-artifact-key-file", "", "key file (32-4096 bytes, mode 0600 or 0400) with which the supervised executor signs the precompiled modules it shares and checks those it loads; give every node's executor of a flavour the same file to share compiles across nodes (default: a key of its own under --state-dir)")
	fs.StringVar(&cfg.CPUCgroup, "cpu-cgroup", "", "writable cgroup directory (cpu controller) for the supervised executor to enforce limits.cpu in; empty: CPU limits are not enforced")
	fs.IntVar(&cfg.PodSyncWorkers, "pod-sync-workers", 16, "pod sync workers: how many pod creations and status writes go to the API server at once")
	fs.IntVar(&cfg.EventQPS, "event-qps", 50, "events written per second at most, as the kubelet's flag (status writes go first); events wait in a queue of 10,000; 0: unlimited")
	fs.IntVar(&cfg.EventBurst, "event-burst", 100, "events written at once before --event-qps applies, as the kubelet's flag")
	fs.DurationVar(&cfg.VolumeRefresh, "volume-refresh", time.Minute, "how often configMap, secret, downwardAPI and projected volumes are rewritten from their sources")
	fs.DurationVar(&cfg.InstanceResync, "instance-resync", podworker.DefaultResync, "how often each pod's instances are listed again from its executor, beside the watch that reports each change (a safety net: an instance deleted behind the node agent's back is noticed within it)")
	fs.Int64Var(&cfg.MaxPods, "max-pods", 110, "pods this node accepts")
	fs.StringVar(&cfg.PodNetwork, "pod-network", agent.PodNetworkAuto, "how pods that declare containerPorts get an address of their own and their ports served: auto (the CNI network in --cni-conf-dir, when run as root and a config is there), bridge (write a bridge network on the Node's spec.podCIDR, allocated by kube-controller-manager --allocate-node-cidrs; root), off (pods keep the node's address, and their ports are opened on it); pods without ports always keep the node's address")
	fs.StringVar(&cfg.CNIConfDir, "cni-conf-dir", "", "CNI network configs, as a container runtime's (default /etc/cni/net.d; with --pod-network=bridge, <state-dir>/cni/net.d)")
	fs.StringVar(&cfg.CNIBinDir, "cni-bin-dir", "", "CNI plugin binaries (default /opt/cni/bin)")
	fs.IntVar(&cfg.MaxLogFollows, "max-log-follows", kubeletapi.DefaultMaxFollows, "followed logs (kubectl logs -f) the kubelet API serves at once; one more is answered 429 Too Many Requests")
	fs.DurationVar(&cfg.Backoff.Initial, "backoff-initial", podworker.DefaultBackoff.Initial, "first crash-loop/image-pull back-off")
	fs.DurationVar(&cfg.Backoff.Max, "backoff-max", podworker.DefaultBackoff.Max, "longest back-off")
	fs.DurationVar(&cfg.Backoff.Reset, "backoff-reset", podworker.DefaultBackoff.Reset, "a run this long resets the back-off")
	fs.TextVar(&level, "log-level", slog.LevelInfo, "debug, info, warn or error")
	cfg.LogLimits = natsutil.DefaultStreamLimits
	fs.Int64Var(&cfg.LogLimits.LogMessagesPerContainer, "log-messages-per-container", cfg.LogLimits.LogMessagesPerContainer, "log messages kept per container (per pod and container; the oldest go first); a message is one write by the module, 1 to 1024 lines of at most 64 KiB together; 0: no per-container bound")
	fs.Int64Var(&cfg.LogLimits.LogMessagesPerContainer, "log-lines-per-container", cfg.LogLimits.LogMessagesPerContainer, "deprecated: the old name of --log-messages-per-container (it always counted messages, one line each before executors batched lines)")
	fs.DurationVar(&cfg.LogLimits.LogAge, "log-max-age", cfg.LogLimits.LogAge, "age after which a log line is discarded (every pod's lines alike)")
	fs.Int64Var(&cfg.LogLimits.LogBytes, "log-retention-bytes", cfg.LogLimits.LogBytes, "bytes of log lines kept in all (the whole NATS stream, every pod; the oldest go first)")
	fs.DurationVar(&cfg.LogLimits.LogDuplicates, "log-duplicate-window", cfg.LogLimits.LogDuplicates, "how long NATS drops a log line published twice (an executor's retry, or its replay after a kill)")
	if err := fs.Parse(args); err != nil {
		return cfg, level, err
	}
	if cfg.EventQPS <= 0 {
		cfg.EventQPS = -1 // unlimited; agent.Config reads 0 as its default
	}
	cfg.InsecureRegistries = insecure
	cfg.NoExecutorChild = !supervise
	cfg.AllowedHostPaths = hostPaths
	cfg.NATSToken = os.Getenv("WASMLET_NATS_TOKEN")
	if cfg.Kubeconfig == "" && cfg.BootstrapKubeconfig == "" {
		return cfg, level, errors.New("--kubeconfig (or KUBECONFIG) is required, unless --bootstrap-kubeconfig is given")
	}
	if err := checkGRPCAddresses(cfg); err != nil {
		return cfg, level, err
	}
	if cfg.LogLimits.LogAge <= 0 || cfg.LogLimits.LogBytes <= 0 || cfg.LogLimits.LogMessagesPerContainer < 0 || cfg.LogLimits.LogDuplicates <= 0 {
		return cfg, level, errors.New("--log-max-age, --log-retention-bytes and --log-duplicate-window must be positive, --log-messages-per-container at least 0")
	}
	if cfg.MaxLogFollows < 1 {
		return cfg, level, errors.New("--max-log-follows must be at least 1")
	}
	if cfg.Backoff.Initial <= 0 || cfg.Backoff.Max < cfg.Backoff.Initial {
		return cfg, level, errors.New("--backoff-initial must be positive and at most --backoff-max")
	}
	return cfg, level, nil
}

// checkGRPCAddresses checks --grpc-tls-* (all three or none) and that every
// separately run service given at a tcp:// address beyond loopback is
// reached over mutual TLS. Executors found on NATS are checked when they
// are dialled (package executors).
func checkGRPCAddresses(cfg agent.Config) error {
	if err := cfg.GRPCTLS.Validate(); err != nil {
		return fmt.Errorf("--grpc-tls-cert, --grpc-tls-key, --grpc-tls-ca: %w", err)
	}
	type given struct{ flag, value, addr string }
	var all []given
	if cfg.RegistryCache != "" {
		all = append(all, given{"--registry-cache", cfg.RegistryCache, cfg.RegistryCache})
	}
	for flavour, addr := range cfg.Executors {
		all = append(all, given{"--executor", flavour + "=" + addr, addr})
	}
	for _, g := range all {
		network, target, err := grpcutil.Split(g.addr)
		if err != nil {
			return fmt.Errorf("%s %s: %w", g.flag, g.value, err)
		}
		if network == "tcp" && !cfg.GRPCTLS.Enabled() && !grpcutil.IsLoopback(target) {
			return fmt.Errorf("%s %s is beyond loopback, and gRPC leaves the host only over mutual TLS: give --grpc-tls-cert, --grpc-tls-key and --grpc-tls-ca (or use a loopback or unix:// address)", g.flag, g.value)
		}
	}
	return nil
}
