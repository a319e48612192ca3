// Command executor runs WebAssembly module instances for the wasmlet node
// agent over gRPC (wasmlet.executor.v1). It fetches modules by digest from
// the registry cache, runs them with one engine (wasmtime, the default, or
// wazero, pure Go, for hosts wasmtime-go has no library for), and publishes their output
// and state changes to NATS when given one.
//
//	executor --listen unix:///run/wasmlet/executor.sock --registry unix:///run/wasmlet/regcache.sock \
//	    [--nats nats://127.0.0.1:4222] [--state-dir DIR] [--engine wasmtime|wazero] [--max-instances 1000] [--id ID] \
//	    [--flavour NAME] [--node NODE] [--advertise-address ADDRESS] [--announce-period 5s] \
//	    [--cpu-cgroup /sys/fs/cgroup/cpu/wasmlet] [--metrics-listen 127.0.0.1:PORT] [--log-spool-bytes 67108864] \
//	    [--tls-cert F --tls-key F --tls-ca F] [--registry-tls-cert F --registry-tls-key F --registry-tls-ca F]
//
// The gRPC API starts native code and mounts host paths, so it is served
// only on a unix socket (created 0600) or over TCP with mutual TLS: with
// --tls-cert/--tls-key/--tls-ca a tcp:// --listen may be any address, and
// every client must present a certificate signed by --tls-ca; without
// them a tcp:// --listen is refused, on loopback too. --registry-tls-* are the client's
// (its key pair, and the CA that signed the registry cache's certificate,
// which must name the host of --registry). Two sets because the two links
// may differ (a unix socket one way, TCP the other); one key pair valid
// for server and client authentication may be given to both. Without
// --registry-tls-*, a tcp:// --registry must be loopback.
//
// Log lines are written to a spool under --state-dir/logspool before they
// are published and removed once NATS acknowledges them; a new executor
// process publishes what a killed one left there (see internal/spool).
// Keep --state-dir across restarts for that.
//
// With --metrics-listen (loopback only) it serves Prometheus metrics at
// /metrics: instances by state, starts, start latency, kills, and NATS
// publishes, drops and errors of logs and events.
//
// With --nats it announces itself (internal/announce) on
// wasmlet.executors.<node>.<flavour>.<id> at start, every --announce-period,
// when a node agent asks, and once more when it stops cleanly, so that the
// node agent of --node finds every replica of a flavour without being given
// their addresses. --flavour (default: the engine's name) is what the node
// agent routes pods to; --advertise-address (default: --listen) is where it
// dials.
//
// CPU limits (InstanceSpec.cpu_limit_millis) are enforced only with
// --cpu-cgroup: a cgroup of the cpu controller the executor may write (see
// internal/cpulimit). Without it they are accepted and not enforced, and
// the executor says so at start and in GetInfo (cpu_limits).
//
// Precompiled modules are shared through the registry cache (unless
// --share-precompiled=false): on a miss in --state-dir/compiled the engine
// asks the registry cache for the artifact of (module digest, engine key:
// engine, version, settings, GOARCH, CPU features), checks its size and
// sha256 before loading it, and after every compile puts its artifact
// there in the background, so that the next executor of the same key
// loads instead of compiling (see internal/engine/wasmtime and
// internal/engine/wazero). Any client of the registry cache may put an
// artifact there, so each is signed with the key in --artifact-key-file
// (default --state-dir/artifact.key, created 0600 with random bytes when
// missing), and one that the key did not sign is refused and compiled
// instead (internal/artifactsign): executors that should share artifacts
// are given the same key file, and nothing else is. /metrics counts
// compiles and the shared store's hits, misses, corrupt and refused
// entries and puts.
//
// The executor confines itself (internal/confine), unless
// --confine=false: no_new_privs, a seccomp allow-list of the system calls
// its engines make, and Landlock, where the kernel has it, limiting the
// file system to --state-dir, its socket's directory, --mount-root and
// each --landlock-rw (read-write) and to what it must read. With
// --run-as-user/--run-as-group it drops to that user first (it must then
// be able to write --state-dir, given to it, and its socket's
// directory); with --isolate-network it has a network namespace of its
// own with no interfaces (unix sockets only: no --nats, no TCP). GetInfo
// (confinement) says what applies on this host.
//
// The NATS token, if any, is read from WASMLET_NATS_TOKEN. On SIGINT or
// SIGTERM every instance is killed and the process exits.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	executorv1 "github.com/wasmlet/wasmlet/gen/wasmlet/executor/v1"
	"github.com/wasmlet/wasmlet/internal/gcpercent"
	"github.com/wasmlet/wasmlet/internal/grpcutil"
	"github.com/wasmlet/wasmlet/internal/natsutil"
	"github.com/wasmlet/wasmlet/internal/profiling"
	"github.com/wasmlet/wasmlet/services/executor/instances"
	"github.com/wasmlet/wasmlet/services/executor/internal/announce"
	"github.com/wasmlet/wasmlet/services/executor/internal/artifactsign"
	"github.com/wasmlet/wasmlet/services/executor/internal/artifactstore"
	"github.com/wasmlet/wasmlet/services/executor/internal/confine"
	"github.com/wasmlet/wasmlet/services/executor/internal/cpulimit"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine/wasmtime"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine/wazero"
	"github.com/wasmlet/wasmlet/services/executor/internal/instance"
	"github.com/wasmlet/wasmlet/services/executor/internal/outbox"
	"github.com/wasmlet/wasmlet/services/executor/internal/server"
	"github.com/wasmlet/wasmlet/services/executor/internal/spool"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/proxy"
)

type config struct {
	listen, registry, nats, natsToken string
	stateDir, engine, id, cpuCgroup   string
	artifactKeyFile                   string
	metricsListen                     string
	maxInstances                      int
	sharePrecompiled                  bool
	logSpoolBytes                     int64

	// tls is the gRPC server's mutual TLS (--tls-*), registryTLS the
	// client's to the registry cache (--registry-tls-*).
	tls, registryTLS grpcutil.TLS

	// What it announces: the flavour, the node it serves, the address the
	// node agent dials, and how often.
	flavour, node, advertise string
	announcePeriod           time.Duration

	// The process's confinement (--confine, --run-as-*, --landlock-rw,
	// --isolate-network).
	confine               bool
	runAsUser, runAsGroup string
	landlockRW            []string
	// mountRoots hold every preopen (--mount-root).
	mountRoots     []string
	isolateNetwork bool
	confineCheck   bool
}

func main() {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	cfg, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "executor:", err)
		os.Exit(2)
	}
	confined, err := confineSelf(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "executor:", err)
		os.Exit(1)
	}
	cfg.natsToken = os.Getenv("WASMLET_NATS_TOKEN")
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
		confine.Check(os.Stdout, cfg.stateDir)
		return
	}
	log.Info("executor confinement", "confinement", confined.String())
	if err := run(ctx, cfg, confined, log); err != nil {
		stopProfile()
		log.Error("executor failed", "error", err)
		os.Exit(1)
	}
}

func parseFlags(args []string) (config, error) {
	host, _ := os.Hostname()
	var cfg config
	fs := flag.NewFlagSet("executor", flag.ContinueOnError)
	fs.StringVar(&cfg.listen, "listen", "", "gRPC address to serve: unix:///path (created 0600), or tcp://HOST:port with --tls-* (mutual TLS; plaintext TCP is refused, on loopback too) (required)")
	fs.StringVar(&cfg.registry, "registry", "", "registry cache gRPC address; tcp:// beyond loopback needs --registry-tls-* (required)")
	cfg.tls.AddFlags(fs, "", "the executor's gRPC server (--listen)")
	cfg.registryTLS.AddFlags(fs, "registry-", "the executor's client to the registry cache (--registry; may be the same files as --tls-*)")
	fs.StringVar(&cfg.nats, "nats", "", "NATS URL for logs and events (optional; token from WASMLET_NATS_TOKEN)")
	fs.StringVar(&cfg.stateDir, "state-dir", filepath.Join(os.TempDir(), "wasmlet-executor"), "directory for modules and precompiled artifacts")
	fs.StringVar(&cfg.engine, "engine", "wasmtime", "engine: wasmtime or wazero")
	fs.StringVar(&cfg.cpuCgroup, "cpu-cgroup", "", "cgroup directory (cpu controller, writable) in which CPU limits are enforced; empty: not enforced")
	fs.StringVar(&cfg.metricsListen, "metrics-listen", "", "loopback host:port to serve Prometheus metrics on at /metrics (default off)")
	fs.BoolVar(&cfg.sharePrecompiled, "share-precompiled", true, "get precompiled modules from the registry cache on a local miss, and put there what this executor compiles")
	fs.StringVar(&cfg.artifactKeyFile, "artifact-key-file", "", "secret key (32 to 4096 bytes, mode 0600) that signs the precompiled modules this executor shares and must have signed those it loads from the registry cache; give it to the executors that should share them and to nothing else (default --state-dir/artifact.key, created when missing)")
	fs.IntVar(&cfg.maxInstances, "max-instances", 1000, "instances held at once")
	fs.Int64Var(&cfg.logSpoolBytes, "log-spool-bytes", 64<<20, "bound of the on-disk spool (under --state-dir/logspool) of log lines not yet acknowledged by NATS; lines beyond it are published from memory only and a kill loses them")
	fs.StringVar(&cfg.id, "id", fmt.Sprintf("%s-%d", host, os.Getpid()), "executor id, in events")
	fs.StringVar(&cfg.flavour, "flavour", "", "flavour announced to the node agent, which routes pods by RuntimeClass handler to flavours (default: the engine's name)")
	fs.StringVar(&cfg.node, "node", strings.ToLower(host), "name of the node whose agent this executor serves (announced with --nats)")
	fs.StringVar(&cfg.advertise, "advertise-address", "", "gRPC address announced to the node agent (default: --listen)")
	fs.DurationVar(&cfg.announcePeriod, "announce-period", announce.DefaultPeriod, "how often the executor announces itself on NATS")
	fs.BoolVar(&cfg.confine, "confine", runtime.GOOS == "linux", "confine the process: no_new_privs, a seccomp allow-list, Landlock where the kernel has it (Linux)")
	fs.StringVar(&cfg.runAsUser, "run-as-user", "", "user (name or uid) to run as, dropped to at start (needs root)")
	fs.StringVar(&cfg.runAsGroup, "run-as-group", "", "group (name or gid) to run as (default: --run-as-user's primary group)")
	fs.Func("mount-root", "directory under which the host paths of instances' preopens must lie: the node agent's pod directory, and each hostPath root it allows (repeatable; a preopen elsewhere is refused, and with none every preopen is)", func(p string) error {
		if !filepath.IsAbs(p) {
			return fmt.Errorf("%q is not an absolute path", p)
		}
		cfg.mountRoots = append(cfg.mountRoots, filepath.Clean(p))
		return nil
	})
	fs.Func("landlock-rw", "directory the executor may read and write under Landlock beyond --state-dir, its socket's and --mount-root (repeatable; e.g. hostPath roots)", func(p string) error {
		if !filepath.IsAbs(p) {
			return fmt.Errorf("%q is not an absolute path", p)
		}
		cfg.landlockRW = append(cfg.landlockRW, p)
		return nil
	})
	fs.BoolVar(&cfg.confineCheck, "confine-check", false, "confine the process as the other flags say, try what an escaped module might (ptrace, mount, execve, netlink, files outside), print what happened, and exit")
	fs.BoolVar(&cfg.isolateNetwork, "isolate-network", false, "run in a network namespace of its own with no interfaces (needs root; unix:// --listen and --registry, no --nats or --metrics-listen)")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	switch {
	case cfg.listen == "":
		return cfg, errors.New("--listen is required")
	case cfg.registry == "":
		return cfg, errors.New("--registry is required")
	case cfg.engine != "wasmtime" && cfg.engine != "wazero":
		return cfg, fmt.Errorf("--engine %q: want wasmtime or wazero", cfg.engine)
	case cfg.maxInstances <= 0:
		return cfg, errors.New("--max-instances must be positive")
	case cfg.metricsListen != "" && !grpcutil.IsLoopback(cfg.metricsListen):
		return cfg, fmt.Errorf("--metrics-listen %s is not a loopback address; metrics are served on loopback only (e.g. 127.0.0.1:9465)", cfg.metricsListen)
	}
	if err := cfg.tls.CheckServerFlags("listen", cfg.listen, ""); err != nil {
		return cfg, err
	}
	if err := cfg.registryTLS.CheckFlags("registry", cfg.registry, "registry-"); err != nil {
		return cfg, err
	}
	if cfg.flavour == "" {
		cfg.flavour = cfg.engine
	}
	if cfg.advertise == "" {
		if unspecifiedHost(cfg.listen) && cfg.nats != "" {
			return cfg, fmt.Errorf("--listen %s names no host the node agent can dial: give --advertise-address tcp://HOST:PORT (a host named in --tls-cert)", cfg.listen)
		}
		cfg.advertise = cfg.listen
	}
	if cfg.announcePeriod <= 0 {
		return cfg, errors.New("--announce-period must be positive")
	}
	if cfg.isolateNetwork {
		for _, a := range []string{cfg.listen, cfg.registry} {
			if network, _, _ := grpcutil.Split(a); network != "unix" {
				return cfg, fmt.Errorf("--isolate-network: %s is not a unix socket; an executor without a network reaches only unix sockets", a)
			}
		}
		if cfg.nats != "" || cfg.metricsListen != "" {
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

// confineSelf confines the process as the flags say (see
// internal/confine): the first call execve's the executor again, confined.
func confineSelf(cfg config) (confine.Status, error) {
	c := confine.Config{
		ReadWrite:      append(append([]string{cfg.stateDir}, cfg.mountRoots...), cfg.landlockRW...),
		Own:            []string{cfg.stateDir},
		User:           cfg.runAsUser,
		Group:          cfg.runAsGroup,
		IsolateNetwork: cfg.isolateNetwork,
		Landlock:       cfg.confine,
		Seccomp:        cfg.confine,
	}
	if network, path, _ := grpcutil.Split(cfg.listen); network == "unix" {
		c.ReadWrite = append(c.ReadWrite, filepath.Dir(path))
	}
	if network, path, _ := grpcutil.Split(cfg.registry); network == "unix" {
		c.Connect = append(c.Connect, filepath.Dir(path))
	}
	if cfg.cpuCgroup != "" {
		c.ReadWrite = append(c.ReadWrite, cfg.cpuCgroup)
	}
	if d := os.Getenv(profiling.EnvDir); d != "" {
		c.ReadWrite = append(c.ReadWrite, d)
	}
	if f := cfg.artifactKeyFile; f != "" {
		if _, err := os.Stat(f); err == nil {
			c.ReadOnly = append(c.ReadOnly, f)
		} else {
			c.ReadWrite = append(c.ReadWrite, filepath.Dir(f)) // it creates the key
		}
	}
	for _, f := range []string{cfg.tls.CertFile, cfg.tls.KeyFile, cfg.tls.CAFile, cfg.registryTLS.CertFile, cfg.registryTLS.KeyFile, cfg.registryTLS.CAFile} {
		if f != "" {
			// The directory: files rotated by rename are new inodes.
			c.ReadOnly = append(c.ReadOnly, filepath.Dir(f))
		}
	}
	return confine.Apply(c)
}

func run(ctx context.Context, cfg config, confined confine.Status, log *slog.Logger) error {
	var cpu engine.ThreadLimiter
	cpuWords := "not enforced: the executor has no --cpu-cgroup"
	if cfg.cpuCgroup != "" {
		l, err := cpulimit.New(cfg.cpuCgroup)
		if err != nil {
			return err
		}
		cpu = l
		cpuWords = fmt.Sprintf("CFS bandwidth control in cgroup %s (--cpu-cgroup), per instance thread", cfg.cpuCgroup)
	} else {
		log.Warn("CPU limits are not enforced: no --cpu-cgroup")
	}
	regConn, err := grpcutil.DialTLS(cfg.registry, cfg.registryTLS)
	if err != nil {
		return err
	}
	defer regConn.Close()
	var shared engine.ArtifactStore
	if cfg.sharePrecompiled {
		if shared, err = signedStore(cfg, proxy.New(regConn), log); err != nil {
			return err
		}
	}
	eng, err := newEngine(cfg.engine, filepath.Join(cfg.stateDir, "compiled"), cpu, shared, log)
	if err != nil {
		return err
	}

	var nc *nats.Conn
	var js jetstream.JetStream
	var logOutbox outbox.Config
	if cfg.nats != "" {
		nc, err = natsutil.Connect(cfg.nats, cfg.natsToken, "wasmlet-executor-"+cfg.id)
		if err != nil {
			return err
		}
		defer nc.Close()
		if js, err = jetstream.New(nc); err != nil {
			return fmt.Errorf("jetstream: %w", err)
		}
		// NATS may not be up yet: the streams are ensured in the background
		// and publishing queues meanwhile.
		go ensureStreams(ctx, js, log)
		sp, err := openLogSpool(filepath.Join(cfg.stateDir, "logspool"), cfg.logSpoolBytes, js, log)
		if err != nil {
			return err
		}
		defer sp.Close()
		logOutbox.Spool = sp
	}

	mgr, err := instance.New(instance.Config{
		ExecutorID:   cfg.id,
		Engine:       eng,
		Cache:        proxy.New(regConn),
		ModuleDir:    filepath.Join(cfg.stateDir, "modules"),
		JetStream:    js,
		LogOutbox:    logOutbox,
		MaxInstances: cfg.maxInstances,
		MountRoots:   cfg.mountRoots,
		Logger:       log,

		CPULimitsEnforced: cpu != nil,
		CPULimitsWords:    cpuWords,
		Confinement:       confinement(confined),
	})
	if err != nil {
		return err
	}
	if cfg.metricsListen != "" {
		reg := prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), mgr.Collector())
		ml, err := net.Listen("tcp", cfg.metricsListen)
		if err != nil {
			return fmt.Errorf("metrics: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
		hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go hs.Serve(ml)
		defer hs.Close()
		log.Info("serving metrics", "address", ml.Addr().String())
	}
	srv, l, err := grpcutil.NewServer(cfg.listen, cfg.tls)
	if err != nil {
		return err
	}
	executorv1.RegisterExecutorServiceServer(srv, server.New(mgr))
	log.Info("executor serving", "listen", cfg.listen, "mutual_tls", cfg.tls.Enabled(), "id", cfg.id, "engine", eng.Name(), "engine_version", eng.Version())
	stopAnnouncing, err := startAnnouncer(ctx, cfg, nc, mgr, eng, cpu != nil, log)
	if err != nil {
		return err
	}
	err = grpcutil.Serve(ctx, srv, l, 5*time.Second)
	stopAnnouncing()

	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if serr := mgr.Shutdown(sctx); serr != nil {
		log.Warn("shutdown incomplete", "error", serr)
	}
	waitShared(sctx, eng, log)
	log.Info("executor stopped")
	return err
}

// confinement is what GetInfo reports of the walls confineSelf put up.
func confinement(st confine.Status) instances.Confinement {
	return instances.Confinement{
		NoNewPrivs:            st.NoNewPrivs,
		Seccomp:               st.Seccomp,
		LandlockABI:           st.LandlockABI,
		LandlockMissingReason: st.LandlockWhy,
		UID:                   uint32(st.UID),
		GID:                   uint32(st.GID),
		NetworkIsolated:       st.NetworkIsolated,
		Description:           st.String(),
	}
}

// signedStore is the registry cache's store of precompiled modules, with
// what is put there signed and what is got from it verified with the key
// of --artifact-key-file.
func signedStore(cfg config, pc regcache.PrecompiledStore, log *slog.Logger) (engine.ArtifactStore, error) {
	path := cfg.artifactKeyFile
	if path == "" {
		path = filepath.Join(cfg.stateDir, "artifact.key")
	}
	key, created, err := artifactsign.LoadKey(path)
	if err != nil {
		return nil, fmt.Errorf("%w (or run with --share-precompiled=false)", err)
	}
	s, err := artifactsign.New(artifactstore.New(pc), key)
	if err != nil {
		return nil, err
	}
	if created {
		log.Info("created an artifact key: executors that should share precompiled modules with this one need the same --artifact-key-file", "file", path, "key_id", s.KeyID())
	}
	return s, nil
}

// newEngine makes the engine named by --engine; each keeps its artifacts
// in a subdirectory of dir named for its version, and shares them through
// shared when it is not nil.
func newEngine(name, dir string, cpu engine.ThreadLimiter, shared engine.ArtifactStore, log *slog.Logger) (engine.Engine, error) {
	switch name {
	case "wazero":
		return wazero.New(wazero.Config{CacheDir: dir, CPU: cpu, Shared: shared, Logger: log})
	default:
		return wasmtime.New(wasmtime.Config{CacheDir: dir, CPU: cpu, Shared: shared, Logger: log})
	}
}

// waitShared gives the engine's background puts of precompiled artifacts
// to the registry cache until ctx ends to finish, so that what this
// executor compiled just before it stopped is not lost to the others.
func waitShared(ctx context.Context, eng engine.Engine, log *slog.Logger) {
	w, ok := eng.(interface{ WaitShared() })
	if !ok {
		return
	}
	done := make(chan struct{})
	go func() { w.WaitShared(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		log.Warn("stopping with precompiled artifacts not yet put to the registry cache; other executors will compile them")
	}
}

func ensureStreams(ctx context.Context, js jetstream.JetStream, log *slog.Logger) {
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := natsutil.EnsureStreamsExist(cctx, js)
		cancel()
		if err == nil {
			return
		}
		log.Warn("ensure NATS streams", "error", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(2 * time.Second):
		}
	}
}

// openLogSpool opens the log spool and publishes, in the background, what
// an earlier process left in it (lines of instances it ran when it was
// killed); JetStream drops the ones that had arrived (Nats-Msg-Id).
func openLogSpool(dir string, maxBytes int64, js jetstream.JetStream, log *slog.Logger) (*spool.Spool, error) {
	sp, err := spool.Open(spool.Config{Dir: dir, MaxBytes: maxBytes})
	if err != nil {
		return nil, fmt.Errorf("log spool: %w; remove %s to start without the unsent lines it holds", err, dir)
	}
	if r := sp.Replay(); len(r) > 0 {
		log.Info("publishing log lines left by an earlier executor", "records", len(r), "spool", dir)
		go func() {
			// Replayed lines are never displaced: the queue waits for NATS.
			ob := outbox.New(js, outbox.Config{Spool: sp, Capacity: 8192, BlockTimeout: 10 * time.Minute})
			ob.PublishReplayed(r)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			_ = ob.Close(ctx)
			st := ob.Stats()
			log.Info("log lines left by an earlier executor published", "published", st.Published, "left", st.Left, "dropped", st.Dropped)
		}()
	}
	go warnUnspooled(sp, dir, maxBytes, log)
	return sp, nil
}

// warnUnspooled says, at most once a minute, how many log lines found the
// spool full (published from memory only: a kill before their ack loses
// them).
func warnUnspooled(sp *spool.Spool, dir string, maxBytes int64, log *slog.Logger) {
	var seen uint64
	for range time.Tick(time.Minute) {
		st := sp.Stats()
		if st.Unspooled > seen {
			log.Warn("log spool full: lines published from memory only; raise --log-spool-bytes or check NATS",
				"lines", st.Unspooled-seen, "spool", dir, "bytes", st.Bytes, "max_bytes", maxBytes)
			seen = st.Unspooled
		}
	}
}

// startAnnouncer announces the executor on NATS to the node agent of
// --node (nothing without --nats); stop sends the leaving announcement and
// waits until NATS has it.
func startAnnouncer(ctx context.Context, cfg config, nc *nats.Conn, mgr *instance.Manager, eng engine.Engine, cpuLimits bool, log *slog.Logger) (stop func(), err error) {
	if nc == nil {
		return func() {}, nil
	}
	a, err := announce.New(announce.Config{
		Conn: nc, ExecutorID: cfg.id, Flavour: cfg.flavour, Node: cfg.node, Address: cfg.advertise,
		Engine: eng.Name(), EngineVersion: eng.Version(), MaxInstances: cfg.maxInstances, CPULimits: cpuLimits,
		Running: mgr.Count, Period: cfg.announcePeriod, Log: log,
	})
	if err != nil {
		return nil, err
	}
	actx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := a.Run(actx); err != nil {
			log.Warn("executor not announced; the node agent finds it only through --executor", "err", err)
		}
	}()
	log.Info("announcing executor", "node", cfg.node, "flavour", cfg.flavour, "address", cfg.advertise, "period", cfg.announcePeriod)
	return func() { cancel(); <-done }, nil
}
