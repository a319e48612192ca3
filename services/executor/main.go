// Command executor runs WebAssembly module instances for the wasmlet node
// agent over gRPC (wasmlet.executor.v1). It fetches modules by digest from
// the registry cache, runs them with one engine (wasmtime, the default, or
// wazero, pure Go), and publishes their output and state changes to NATS
// when given one, announcing itself there for its node's agent.
//
//	executor --listen unix:///run/wasmlet/executor.sock --registry unix:///run/wasmlet/regcache.sock \
//	    [--nats nats://127.0.0.1:4222] [--state-dir DIR] [--engine wasmtime|wazero] [--max-instances 1000] [--id ID] \
//	    [--flavour NAME] [--node NODE] [--advertise-address ADDRESS] [--announce-period 5s] \
//	    [--cpu-cgroup /sys/fs/cgroup/cpu/wasmlet] [--metrics-listen 127.0.0.1:PORT] [--log-spool-bytes 67108864] \
//	    [--tls-cert F --tls-key F --tls-ca F] [--registry-tls-cert F --registry-tls-key F --registry-tls-ca F] \
//	    [--listener-socket /var/lib/wasmlet/executor/listeners.sock]
//
// `executor --help` lists every flag; README says what each part does
// (security defaults, the second wall, mutual TLS, logs, limits). Two
// rules worth knowing here: the gRPC API starts native code and mounts
// host paths, so it is served only on a unix socket (0600) or over TCP
// with mutual TLS, and it mounts only directories under --mount-root. The
// NATS token, if any, is read from WASMLET_NATS_TOKEN. On SIGINT or
// SIGTERM every instance is killed and the process exits.
//
// main only turns flags into a service.Config, confines the process
// (first: it re-executes the executor; internal/confine), and hands the
// config, with a context that ends on SIGINT or SIGTERM, to
// internal/service.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"

	"github.com/wasmlet/wasmlet/internal/gcpercent"
	"github.com/wasmlet/wasmlet/internal/grpcutil"
	"github.com/wasmlet/wasmlet/internal/profiling"
	"github.com/wasmlet/wasmlet/services/executor/internal/announce"
	"github.com/wasmlet/wasmlet/services/executor/internal/confine"
	"github.com/wasmlet/wasmlet/services/executor/internal/modules"
	"github.com/wasmlet/wasmlet/services/executor/internal/service"
)

// config is the service's, and what only main acts on.
type config struct {
	service.Config
	// confineCheck: try what an escaped module might, print it, exit.
	confineCheck bool
}

func main() {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	cfg, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "executor:", err)
		os.Exit(2)
	}
	// The first call execve's the executor again, confined.
	confined, err := confine.Apply(cfg.ConfineConfig())
	if err != nil {
		fmt.Fprintln(os.Stderr, "executor:", err)
		os.Exit(1)
	}
	cfg.Confinement = confined
	cfg.NATSToken = os.Getenv("WASMLET_NATS_TOKEN")
	cfg.Logger = log
	gcpercent.Set()
	stopProfile, err := profiling.Start("executor")
	if err != nil {
		log.Warn("no CPU profile", "error", err)
	}
	defer stopProfile()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if cfg.confineCheck {
		// What an escaped module would meet, on this host, with these flags.
		fmt.Println("confinement:", confined.String())
		confine.Check(os.Stdout, cfg.StateDir)
		return
	}
	log.Info("executor confinement", "confinement", confined.String())
	if err := service.Run(ctx, cfg.Config); err != nil {
		stopProfile()
		log.Error("executor failed", "error", err)
		os.Exit(1)
	}
}

func parseFlags(args []string) (config, error) {
	host, _ := os.Hostname()
	var cfg config
	fs := flag.NewFlagSet("executor", flag.ContinueOnError)
	fs.StringVar(&cfg.Listen, "listen", "", "gRPC address to serve: unix:///path (created 0600), or tcp://HOST:port with --tls-* (mutual TLS; plaintext TCP is refused, on loopback too) (required)")
	fs.StringVar(&cfg.ListenerSocket, "listener-socket", "", "unix socket path (created 0600) on which the node agent hands over listening sockets it opened in pods' network namespaces, for instances created with handed listeners (default off); announced with --nats and --node, else give it to the node agent: --executor FLAVOUR=ADDRESS,listener-socket=PATH. The node agent must see the socket at this path (same host, or a directory both containers mount at the same path)")
	fs.StringVar(&cfg.Registry, "registry", "", "registry cache gRPC address; tcp:// beyond loopback needs --registry-tls-* (required)")
	cfg.TLS.AddFlags(fs, "", "the executor's gRPC server (--listen)")
	cfg.RegistryTLS.AddFlags(fs, "registry-", "the executor's client to the registry cache (--registry; may be the same files as --tls-*)")
	fs.StringVar(&cfg.NATS, "nats", "", "NATS URL for logs and events (optional; token from WASMLET_NATS_TOKEN)")
	fs.StringVar(&cfg.StateDir, "state-dir", filepath.Join(os.TempDir(), "wasmlet-executor"), "directory for modules and precompiled artifacts")
	fs.StringVar(&cfg.Engine, "engine", service.DefaultEngine(), "engine: wasmtime or wazero (this build has "+strings.Join(service.Engines(), " and ")+")")
	fs.StringVar(&cfg.CPUCgroup, "cpu-cgroup", "", "cgroup directory (cpu controller, writable) in which CPU limits are enforced; empty: not enforced")
	fs.StringVar(&cfg.MetricsListen, "metrics-listen", "", "loopback host:port to serve Prometheus metrics on at /metrics (default off)")
	fs.BoolVar(&cfg.SharePrecompiled, "share-precompiled", true, "get precompiled modules from the registry cache on a local miss, and put there what this executor compiles")
	fs.StringVar(&cfg.ArtifactKeyFile, "artifact-key-file", "", "secret key (32 to 4096 bytes, mode 0600) that signs the precompiled modules this executor shares and must have signed those it loads from the registry cache; give it to the executors that should share them and to nothing else (default --state-dir/artifact.key, created when missing)")
	fs.IntVar(&cfg.MaxInstances, "max-instances", 1000, "instances held at once")
	fs.Int64Var(&cfg.CompiledCacheBytes, "compiled-cache-bytes", 0, "bound of the compiled modules the engine keeps on disk (under --state-dir/compiled), least recently used removed first; a module whose code was removed is compiled again at its next start (0: 2 GiB)")
	fs.BoolVar(&cfg.InterpretFirst, "interpret-first", true, "wazero: start a module that has no compiled code yet (in memory or on disk) on wazero's interpreter (about a tenth of the compile; its code runs several times slower) and compile it in the background, one module at a time, for the instances started after it; an instance started interpreted stays interpreted until it ends, so instances with listeners (servers) wait for the compile. false: every start waits for the compile")
	fs.IntVar(&cfg.Handlers.Pool, "handler-pool", 0, "handler mode (WAGI): instances of a handler's module kept instantiated ahead of requests, per handler instance (0: one per core)")
	fs.IntVar(&cfg.Handlers.MaxInFlight, "handler-max-in-flight", 0, "handler mode (WAGI): requests a handler instance runs at once, each with the spec's memory and CPU limits; more wait (0: four per core)")
	fs.DurationVar(&cfg.Handlers.QueueTimeout, "handler-queue-timeout", 0, "handler mode (WAGI): how long a request waits for a run before it is answered 503 (0: 10s)")
	fs.BoolVar(&cfg.QuickFirstCompile, "quick-first-compile", false, "wasmtime: compile a module that has no precompiled artifact yet (on disk or in the registry cache) with Cranelift's quick settings first (about half the CPU; slower code), start its instances from that, and compile the optimised artifact in the background for the instances started after it (only that one is kept and shared)")
	fs.Int64Var(&cfg.ModuleCacheBytes, "module-cache-bytes", 0, "bound of the modules fetched from the registry cache kept on disk (under --state-dir/modules), least recently used removed first; the module of an instance not yet deleted is kept, and one removed is fetched again when an instance is next created from it; at least the largest module, 256 MiB, and best well above what runs at once (0: 4 GiB)")
	fs.Int64Var(&cfg.LogSpoolBytes, "log-spool-bytes", 64<<20, "bound of the on-disk spool (under --state-dir/logspool) of log lines not yet acknowledged by NATS; lines beyond it are published from memory only and a kill loses them")
	fs.StringVar(&cfg.ID, "id", fmt.Sprintf("%s-%d", host, os.Getpid()), "executor id, in events")
	fs.StringVar(&cfg.Flavour, "flavour", "", "flavour announced to the node agent, which routes pods by RuntimeClass handler to flavours (default: the engine's name)")
	fs.StringVar(&cfg.Node, "node", strings.ToLower(host), "name of the node whose agent this executor serves (announced with --nats)")
	fs.StringVar(&cfg.Advertise, "advertise-address", "", "gRPC address announced to the node agent (default: --listen)")
	fs.DurationVar(&cfg.AnnouncePeriod, "announce-period", announce.DefaultPeriod, "how often the executor announces itself on NATS")
	fs.BoolVar(&cfg.Confine, "confine", runtime.GOOS == "linux", "confine the process: no_new_privs, a seccomp allow-list, Landlock where the kernel has it (Linux)")
	fs.StringVar(&cfg.RunAsUser, "run-as-user", "", "user (name or uid) to run as, dropped to at start (needs root)")
	fs.StringVar(&cfg.RunAsGroup, "run-as-group", "", "group (name or gid) to run as (default: --run-as-user's primary group)")
	fs.Func("mount-root", "directory under which the host paths of instances' preopens must lie: the node agent's pod directory, and each hostPath root it allows (repeatable; a preopen elsewhere is refused, and with none every preopen is)", func(p string) error {
		if !filepath.IsAbs(p) {
			return fmt.Errorf("%q is not an absolute path", p)
		}
		cfg.MountRoots = append(cfg.MountRoots, filepath.Clean(p))
		return nil
	})
	fs.Func("landlock-rw", "directory the executor may read and write under Landlock beyond --state-dir, its socket's and --mount-root (repeatable; e.g. hostPath roots)", func(p string) error {
		if !filepath.IsAbs(p) {
			return fmt.Errorf("%q is not an absolute path", p)
		}
		cfg.LandlockRW = append(cfg.LandlockRW, p)
		return nil
	})
	fs.BoolVar(&cfg.confineCheck, "confine-check", false, "confine the process as the other flags say, try what an escaped module might (ptrace, mount, execve, netlink, files outside), print what happened, and exit")
	fs.BoolVar(&cfg.IsolateNetwork, "isolate-network", false, "run in a network namespace of its own with no interfaces (needs root; unix:// --listen and --registry, no --nats or --metrics-listen)")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	switch {
	case cfg.Listen == "":
		return cfg, errors.New("--listen is required")
	case cfg.Registry == "":
		return cfg, errors.New("--registry is required")
	case service.CheckEngine(cfg.Engine) != nil:
		return cfg, fmt.Errorf("--%w", service.CheckEngine(cfg.Engine))
	case cfg.MaxInstances <= 0:
		return cfg, errors.New("--max-instances must be positive")
	case cfg.Handlers.Pool < 0 || cfg.Handlers.MaxInFlight < 0 || cfg.Handlers.QueueTimeout < 0:
		return cfg, errors.New("--handler-pool, --handler-max-in-flight and --handler-queue-timeout must not be negative (0: the default)")
	case cfg.ListenerSocket != "" && !filepath.IsAbs(cfg.ListenerSocket):
		return cfg, fmt.Errorf("--listener-socket %q: want an absolute path", cfg.ListenerSocket)
	case cfg.ModuleCacheBytes < 0 || cfg.ModuleCacheBytes > 0 && cfg.ModuleCacheBytes < modules.DefaultMaxBytes:
		return cfg, fmt.Errorf("--module-cache-bytes %d is below %d, the size of the largest module; give well above it, or 0 for 4 GiB", cfg.ModuleCacheBytes, modules.DefaultMaxBytes)
	case cfg.MetricsListen != "" && !grpcutil.IsLoopback(cfg.MetricsListen):
		return cfg, fmt.Errorf("--metrics-listen %s is not a loopback address; metrics are served on loopback only (e.g. 127.0.0.1:9465)", cfg.MetricsListen)
	}
	if err := cfg.TLS.CheckServerFlags("listen", cfg.Listen, ""); err != nil {
		return cfg, err
	}
	if err := cfg.RegistryTLS.CheckFlags("registry", cfg.Registry, "registry-"); err != nil {
		return cfg, err
	}
	if cfg.Flavour == "" {
		cfg.Flavour = cfg.Engine
	}
	if cfg.Advertise == "" {
		if unspecifiedHost(cfg.Listen) && cfg.NATS != "" {
			return cfg, fmt.Errorf("--listen %s names no host the node agent can dial: give --advertise-address tcp://HOST:PORT (a host named in --tls-cert)", cfg.Listen)
		}
		cfg.Advertise = cfg.Listen
	}
	if cfg.AnnouncePeriod <= 0 {
		return cfg, errors.New("--announce-period must be positive")
	}
	if cfg.IsolateNetwork {
		for _, a := range []string{cfg.Listen, cfg.Registry} {
			if network, _, _ := grpcutil.Split(a); network != "unix" {
				return cfg, fmt.Errorf("--isolate-network: %s is not a unix socket; an executor without a network reaches only unix sockets", a)
			}
		}
		if cfg.NATS != "" || cfg.MetricsListen != "" {
			return cfg, errors.New("--isolate-network: --nats and --metrics-listen need a network")
		}
	}
	return cfg, nil
}

// unspecifiedHost reports whether addr is TCP on every interface
// (0.0.0.0, ::, or no host).
func unspecifiedHost(addr string) bool {
	network, target, err := grpcutil.Split(addr)
	if err != nil || network != "tcp" {
		return false
	}
	host, _, _ := net.SplitHostPort(target)
	ip := net.ParseIP(host)
	return host == "" || (ip != nil && ip.IsUnspecified())
}
