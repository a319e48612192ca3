// Package agent wires the node agent together: NATS (embedded unless a URL
// is given), the registry cache (in-process unless an address is given;
// then served on a private unix socket for the executors), the executors
// (one supervised child process unless addresses are given or
// NoExecutorChild is set, run as an unprivileged user when the node agent
// is root, with the directories it needs made usable by that user
// (executoruser.go); plus every executor that announces itself for this
// node on NATS), and
// virtual-kubelet's node and pod controllers with wasmlet's provider, plus
// the kubelet API. It holds no logic of its own beyond that wiring.
package agent

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/virtual-kubelet/virtual-kubelet/node"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"

	"github.com/wasmlet/wasmlet/internal/binpages"
	"github.com/wasmlet/wasmlet/internal/grpcutil"
	"github.com/wasmlet/wasmlet/internal/natsutil"
	"github.com/wasmlet/wasmlet/internal/natsutil/natsserver"
	"github.com/wasmlet/wasmlet/services/nodeagent/internal/clientcert"
	"github.com/wasmlet/wasmlet/services/nodeagent/internal/executors"
	"github.com/wasmlet/wasmlet/services/nodeagent/internal/kubeletapi"
	"github.com/wasmlet/wasmlet/services/nodeagent/internal/metrics"
	"github.com/wasmlet/wasmlet/services/nodeagent/internal/nodestatus"
	"github.com/wasmlet/wasmlet/services/nodeagent/internal/podlogs"
	"github.com/wasmlet/wasmlet/services/nodeagent/internal/podworker"
	"github.com/wasmlet/wasmlet/services/nodeagent/internal/provider"
	"github.com/wasmlet/wasmlet/services/nodeagent/internal/servingcert"
	"github.com/wasmlet/wasmlet/services/nodeagent/internal/supervisor"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/local"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/proxy"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/server"
)

// Config is the node agent's configuration.
type Config struct {
	// Kubeconfig is the node's identity (CN=system:node:<name>,
	// O=system:nodes); written when the node bootstraps (default, then,
	// <StateDir>/kubeconfig).
	Kubeconfig string
	// BootstrapKubeconfig, when set, holds a bootstrap token with which
	// the node requests its client certificate (package clientcert) when
	// Kubeconfig is missing or its certificate unusable.
	BootstrapKubeconfig string
	// CertDir keeps the node's key pairs, as the kubelet's --cert-dir: the
	// client pairs, the kubelet API's serving pairs (issued or
	// self-signed). Default <StateDir>/pki.
	CertDir string
	// RotateCertificates renews the client certificate before it expires;
	// the API connections take the new one without a restart.
	RotateCertificates bool

	NodeName    string
	NodeIP      string // the node's address; the kubelet API listens here
	KubeletPort int
	StateDir    string
	Labels      map[string]string
	MaxPods     int64

	ClientCAFile            string // CA of clients the kubelet API accepts
	TLSCertFile, TLSKeyFile string // kubelet API serving pair (else self-signed)
	NATSURL, NATSToken      string // empty URL: embedded NATS
	RegistryCache           string // empty: in-process cache
	InsecureRegistries      []string
	RegistryCAFile          string
	Executors               map[string]string // flavour -> address; empty: one child (unless NoExecutorChild)
	// ExecutorListenerSockets: flavour -> the --listener-socket of that
	// flavour's executor in Executors, where pods' listeners are handed
	// over to it (optional; see executors.Executor.ListenerSocket).
	ExecutorListenerSockets map[string]string
	DefaultExecutor         string
	RuntimeHandlers         map[string]string // RuntimeClass handler -> flavour
	ExecutorBinary          string
	Backoff                 podworker.Backoff
	AllowedHostPaths        []string // roots that hostPath volumes may use
	VolumeRefresh           time.Duration
	InstanceResync          time.Duration // 0: podworker.DefaultResync
	RegistryMaxBytes        int64         // in-process cache's size budget; 0: none
	PodSyncWorkers          int           // virtual-kubelet's pod sync workers (status writes run on them)
	CPUCgroup               string        // passed to the supervised executor: where CPU limits are enforced
	// ExecutorArtifactKeyFile is the supervised executor's key for the
	// precompiled modules it shares (--artifact-key-file); empty: one of
	// its own, so that it shares with no other node's executor.
	ExecutorArtifactKeyFile string
	// PodNetwork is PodNetworkAuto (""), PodNetworkBridge or
	// PodNetworkOff: whether and how pods that declare ports get a network
	// namespace and an address of their own (CNI). CNIConfDir and
	// CNIBinDir are where the network configs and plugins are (defaults
	// /etc/cni/net.d, or <StateDir>/cni/net.d for the bridge, and
	// /opt/cni/bin).
	PodNetwork, CNIConfDir, CNIBinDir string
	// MaxLogFollows is how many kubectl logs -f the kubelet API serves at
	// once (0: kubeletapi.DefaultMaxFollows); one more is answered 429.
	MaxLogFollows int

	// EventQPS and EventBurst pace event writes, as the kubelet's
	// --event-qps and --event-burst do (and with its defaults, 50 and
	// 100), so that pod status writes are not held up behind events in a
	// burst of starts; events wait in a queue (see queuedSink). EventQPS
	// < 0: unlimited.
	EventQPS, EventBurst int

	// ExecutorUser is the unprivileged user, UID[:GID] as numbers, that a
	// node agent running as root runs its supervised executor as
	// (--run-as-user, --run-as-group); "" or "root": root, as before.
	// Its state dir, socket directory, the registry cache's socket and the
	// pods' directories are made usable by that user (executorPaths).
	// With separately run executors (Executors), a root node agent shares
	// the pods' directories and its registry cache's socket with that
	// user's group, for executors started as that user (their
	// --run-as-user, --run-as-group). Ignored when the node agent is not
	// root.
	ExecutorUser string
	// NoExecutorChild: with no Executors, supervise no child; pods run on
	// the executors that announce themselves on NATS for this node.
	NoExecutorChild bool
	// GRPCTLS is the mutual TLS of the gRPC clients to tcp:// executors
	// (given or announced) and registry cache, and of a supervised child's
	// client to a tcp:// RegistryCache; unix sockets never use it.
	GRPCTLS grpcutil.TLS
	// LogLimits bound the logs stream (zero: natsutil.DefaultStreamLimits);
	// the node agent sets them on the stream at start, also on a shared
	// NATS (the last node agent to start wins).
	LogLimits natsutil.StreamLimits

	// RotateServerCertificates: the kubelet API's serving certificate is
	// requested from the cluster (kubernetes.io/kubelet-serving CSR) and
	// renewed before it expires, instead of TLSCertFile or a self-signed one.
	RotateServerCertificates bool
	// Metrics receives the node agent's metrics, served at /metrics on the
	// kubelet API; nil: a registry of its own.
	Metrics *prometheus.Registry
	Log     *slog.Logger
}

func (c *Config) defaults() error {
	if c.NodeName == "" || c.StateDir == "" {
		return errors.New("node name and state dir are required")
	}
	if c.Kubeconfig == "" && c.BootstrapKubeconfig != "" {
		c.Kubeconfig = filepath.Join(c.StateDir, "kubeconfig")
	}
	if c.Kubeconfig == "" {
		return errors.New("a kubeconfig (or a bootstrap kubeconfig) is required")
	}
	if c.CertDir == "" {
		c.CertDir = filepath.Join(c.StateDir, "pki")
	}
	if c.NodeIP == "" {
		c.NodeIP = "127.0.0.1"
	}
	if c.RotateServerCertificates && c.TLSCertFile != "" {
		return errors.New("--rotate-server-certificates and --tls-cert-file exclude each other: drop one")
	}
	if c.KubeletPort == 0 {
		c.KubeletPort = 10250
	}
	if c.PodSyncWorkers == 0 {
		c.PodSyncWorkers = 16
	}
	if c.EventQPS == 0 {
		c.EventQPS = 50
	}
	if c.EventBurst <= 0 {
		c.EventBurst = 100
	}
	if c.MaxPods == 0 {
		c.MaxPods = 110
	}
	if c.DefaultExecutor == "" {
		c.DefaultExecutor = "wasmtime"
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
	if c.Metrics == nil {
		c.Metrics = prometheus.NewRegistry()
	}
	return nil
}

// podInformerResync is the pod informer's resync period (see Run).
const podInformerResync = 10 * time.Minute

// Run runs the node agent until ctx ends.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.defaults(); err != nil {
		return err
	}
	log := cfg.Log
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return err
	}
	// Deferred in this order so that an early return cancels the
	// background parts before waiting for them.
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Every background part ends the agent when it fails.
	var runErr error
	var errOnce sync.Once
	goRun := func(name string, f func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(ctx); err != nil && ctx.Err() == nil {
				errOnce.Do(func() { runErr = fmt.Errorf("%s: %w", name, err) })
				cancel()
			}
		}()
	}

	// The node's identity comes first: a bad bootstrap token or a denied
	// CSR stops the agent before anything else starts.
	restCfg, err := nodeRESTConfig(ctx, cfg, goRun)
	if err != nil {
		return err
	}

	// NATS.
	natsURL, natsToken := cfg.NATSURL, cfg.NATSToken
	if natsURL == "" {
		natsToken = randomToken()
		srv, err := natsserver.Start(natsserver.Config{StoreDir: filepath.Join(cfg.StateDir, "nats"), Token: natsToken})
		if err != nil {
			return err
		}
		defer srv.Shutdown()
		natsURL = srv.URL
		log.Info("embedded NATS started", "url", natsURL)
	}
	nc, err := natsutil.Connect(natsURL, natsToken, "wasmlet-nodeagent-"+cfg.NodeName)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	sctx, scancel := context.WithTimeout(ctx, 30*time.Second)
	logLimits := cfg.LogLimits
	if logLimits == (natsutil.StreamLimits{}) {
		logLimits = natsutil.DefaultStreamLimits
	}
	err = natsutil.EnsureStreams(sctx, js, logLimits)
	scancel()
	if err != nil {
		return err
	}

	m := metrics.New(cfg.Metrics)

	supervised := len(cfg.Executors) == 0 && !cfg.NoExecutorChild
	execBin := cfg.ExecutorBinary
	if execBin == "" {
		execBin = executorBinary(cfg.DefaultExecutor)
	}
	execUser, err := parseExecutorUser(cfg.ExecutorUser)
	if err != nil {
		return err
	}
	if execUser != nil && os.Geteuid() != 0 {
		if supervised {
			log.Info("executor runs as the node agent's user: only root can start it as another", "executor_user", execUser.String())
		}
		execUser = nil
	}
	execPaths := newExecutorPaths(cfg.StateDir)
	if supervised {
		if err := execPaths.prepare(execUser, execBin); err != nil {
			return err
		}
	} else if execUser != nil {
		// Separately run executors started as that user (--run-as-user,
		// --run-as-group) reach the pods' volumes and the registry
		// cache's socket through its group.
		if err := execPaths.share(execUser); err != nil {
			return err
		}
	}

	// Registry cache.
	var cache regcache.Cache
	registryAddr := cfg.RegistryCache
	if registryAddr == "" {
		lc, err := local.New(local.Config{
			Dir: filepath.Join(cfg.StateDir, "registry"), InsecureHosts: cfg.InsecureRegistries,
			CAFile: cfg.RegistryCAFile, MaxStoreBytes: cfg.RegistryMaxBytes, Logger: log,
		})
		if err != nil {
			return err
		}
		cache = lc
		registryAddr = "unix://" + filepath.Join(cfg.StateDir, "sockets", "registry.sock")
		l, err := grpcutil.Listen(registryAddr)
		if err != nil {
			return err
		}
		if err := shareSocket(filepath.Join(cfg.StateDir, "sockets", "registry.sock"), execUser); err != nil {
			l.Close()
			return err
		}
		gs := grpc.NewServer(grpc.KeepaliveEnforcementPolicy(grpcutil.KeepaliveEnforcement))
		server.New(lc).Register(gs)
		goRun("registry cache server", func(ctx context.Context) error { return grpcutil.Serve(ctx, gs, l, 5*time.Second) })
	} else {
		conn, err := grpcutil.DialTLS(registryAddr, cfg.GRPCTLS)
		if err != nil {
			return err
		}
		defer conn.Close()
		cache = proxy.New(conn)
	}

	// Executors.
	execAddrs := cfg.Executors
	listenerSockets := cfg.ExecutorListenerSockets
	if supervised {
		addr := "unix://" + filepath.Join(execPaths.socketDir, "executor.sock")
		execAddrs = map[string]string{cfg.DefaultExecutor: addr}
		args := []string{"--listen", addr, "--registry", registryAddr, "--nats", natsURL,
			"--state-dir", filepath.Join(cfg.StateDir, "executor"),
			// The node admits pods up to MaxPods; its executor's cap on
			// instances leaves room for a few containers (and a kept exited
			// instance) per pod, so that the node's capacity is what binds.
			"--max-instances", fmt.Sprint(4 * cfg.MaxPods),
			// Preopens may lie only under the pods' directories and the
			// hostPath roots, as the node agent resolves them.
			"--mount-root", execPaths.podsDir}
		// A default flavour named after an engine runs on that engine
		// (the executor's own default is wasmtime).
		if cfg.DefaultExecutor == "wazero" || cfg.DefaultExecutor == "wasmtime" {
			args = append(args, "--engine", cfg.DefaultExecutor)
		}
		for _, p := range cfg.AllowedHostPaths {
			if real, err := filepath.EvalSymlinks(p); err == nil {
				p = real
			}
			args = append(args, "--mount-root", p)
		}
		if cfg.ExecutorArtifactKeyFile != "" {
			args = append(args, "--artifact-key-file", cfg.ExecutorArtifactKeyFile)
		}
		if cfg.CPUCgroup != "" {
			args = append(args, "--cpu-cgroup", cfg.CPUCgroup)
		}
		if network, _, _ := grpcutil.Split(registryAddr); network == "tcp" && cfg.GRPCTLS.Enabled() {
			args = append(args, "--registry-tls-cert", cfg.GRPCTLS.CertFile, "--registry-tls-key", cfg.GRPCTLS.KeyFile,
				"--registry-tls-ca", cfg.GRPCTLS.CAFile)
		}
		var confinement supervisor.Confinement
		if execUser != nil {
			if err := checkExecutorFiles(cfg, execUser); err != nil {
				return err
			}
			confinement.RunAsUser, confinement.RunAsGroup = fmt.Sprint(execUser.uid), fmt.Sprint(execUser.gid)
			log.Info("supervised executor runs unprivileged", "uid", execUser.uid, "gid", execUser.gid)
		}
		sup, err := supervisor.New(supervisor.Config{
			Binary:      execBin,
			Args:        args,
			Env:         []string{"WASMLET_NATS_TOKEN=" + natsToken},
			Log:         log.With("component", "supervisor"),
			Confinement: confinement,
		})
		if err != nil {
			return err
		}
		if ls := sup.ListenerSocket(); ls != "" {
			listenerSockets = map[string]string{cfg.DefaultExecutor: ls}
		}
		goRun("executor supervisor", sup.Run)
	}
	// Executors that announce themselves for this node are discovered on
	// NATS beside the static ones (an announcement from a static one's
	// address is recognised as that one).
	pool, err := executors.New(executors.Config{
		Executors: execAddrs, ListenerSockets: listenerSockets, NATS: nc, Node: cfg.NodeName,
		Default: cfg.DefaultExecutor, Handlers: cfg.RuntimeHandlers, TLS: cfg.GRPCTLS, DialOptions: m.ExecutorDialOptions, Log: log,
	})
	if err != nil {
		return err
	}
	defer pool.Close()
	cache = m.Cache(cache)
	wctx, wcancel := context.WithTimeout(ctx, 60*time.Second)
	err = pool.WaitReady(wctx)
	wcancel()
	if err != nil {
		return err
	}

	// Kubernetes.
	// client-go's default 5 QPS caps a node near 5 pod starts a second.
	restCfg.QPS, restCfg.Burst = 500, 1000
	// Protobuf, as the kubelet speaks: cheaper to encode and decode than
	// JSON for pods, events and watches. Custom resources (none here) would
	// need JSON.
	restCfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	restCfg.ContentType = "application/vnd.kubernetes.protobuf"
	restCfg.UserAgent = "wasmlet/" + nodestatus.Version
	restCfg.Wrap(m.Transport)
	client, err := newNodeClientset(restCfg)
	if err != nil {
		return err
	}

	nodeObj, err := nodestatus.Node(nodestatus.Config{
		Name: cfg.NodeName, InternalIP: cfg.NodeIP, KubeletPort: int32(cfg.KubeletPort),
		MaxPods: cfg.MaxPods, Labels: cfg.Labels,
	})
	if err != nil {
		return err
	}
	nodeProvider := nodestatus.NewProvider(nodeObj, pool, cfg.StateDir)

	sink := newQueuedSink(restEventSink{client.CoreV1().RESTClient()}, eventQueueLimit, cfg.Log, cfg.Metrics)
	if cfg.EventQPS >= 0 {
		sink.pace = rate.NewLimiter(rate.Limit(cfg.EventQPS), cfg.EventBurst)
	}
	sinkCtx, stopSink := context.WithCancel(context.Background())
	sinkDone := make(chan struct{})
	go func() { defer close(sinkDone); sink.Run(sinkCtx) }()
	defer func() { // after the broadcaster's shutdown below: write what it handed over
		stopSink()
		select {
		case <-sinkDone:
		case <-time.After(6 * time.Second):
		}
	}()
	eb := record.NewBroadcaster()
	eb.StartRecordingToSink(sink)
	defer eb.Shutdown()
	recorder := eb.NewRecorder(scheme.Scheme, v1.EventSource{Component: "kubelet", Host: cfg.NodeName})

	// The pod informer's resync handed virtual-kubelet every pod again,
	// which it compared with itself by reflection (go-cmp) to find nothing
	// to do: every minute, at 5,000 idle pods that was 60% of the node
	// agent's CPU. virtual-kubelet no longer sees resyncs (nor status-only
	// updates: statusOnlyFiltered), so each is now a pointer comparison;
	// the period stays long anyway.
	podInformers, podFactory := newCoreInformers(client, podInformerResync, func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", cfg.NodeName).String()
	})
	// virtual-kubelet requires these informers, but a node identity may not
	// list secrets or config maps cluster-wide: they are never started, and
	// the pod worker reads what a pod references with GET instead.
	unstarted, _ := newCoreInformers(client, 0, nil)

	podNet, err := startPodNetwork(ctx, cfg, client, log)
	if err != nil {
		return err
	}
	prov, err := provider.New(ctx, provider.Config{
		Network: podNet, Client: client, Cache: cache, Pool: pool, Recorder: recorder,
		Logs:     &podlogs.Reader{JS: js, Node: cfg.NodeName, Log: log},
		NodeName: cfg.NodeName, NodeIP: cfg.NodeIP, StateDir: cfg.StateDir,
		Backoff: cfg.Backoff, AllowedHostPaths: cfg.AllowedHostPaths, VolumeRefresh: cfg.VolumeRefresh, InstanceResync: cfg.InstanceResync, Log: log,
	})
	if err != nil {
		return err
	}
	m.PodPhases(cfg.Metrics, prov.GetPods)
	podInformer := podInformers.Pods()
	pc, err := node.NewPodController(node.PodControllerConfig{
		PodClient:                            client.CoreV1(),
		PodInformer:                          statusOnlyFiltered{podInformer},
		EventRecorder:                        quietRecorder{recorder},
		Provider:                             measured{prov, m},
		ConfigMapInformer:                    unstarted.ConfigMaps(),
		SecretInformer:                       unstarted.Secrets(),
		ServiceInformer:                      unstarted.Services(),
		SkipDownwardAPIResolution:            true,
		SyncPodsFromKubernetesRateLimiter:    fastLimiter(),
		DeletePodsFromKubernetesRateLimiter:  fastLimiter(),
		SyncPodStatusFromProviderRateLimiter: fastLimiter(),
	})
	if err != nil {
		return err
	}
	nc2, err := node.NewNodeController(nodeProvider, nodeObj, client.CoreV1().Nodes(),
		node.WithNodeEnableLeaseV1(client.CoordinationV1().Leases(v1.NamespaceNodeLease), node.DefaultLeaseDuration),
		node.WithNodeStatusUpdateInterval(10*time.Second),
	)
	if err != nil {
		return err
	}

	podFactory.Start(ctx.Done())
	goRun("pod controller", func(ctx context.Context) error { return pc.Run(ctx, cfg.PodSyncWorkers) })
	goRun("executors", func(ctx context.Context) error { pool.Run(ctx, prov); return nil })
	goRun("node status", func(ctx context.Context) error { nodeProvider.Run(ctx, 2*time.Second); return nil })
	select {
	case <-pc.Ready():
	case <-ctx.Done():
		return runErr
	}
	goRun("node controller", nc2.Run)
	// Instances whose pods were deleted while this agent was away: the pod
	// informer has synced, so a pod it lacks is gone.
	prov.RemoveOrphans(ctx, func(ns, name, uid string) bool {
		pod, err := podInformer.Lister().Pods(ns).Get(name)
		return err == nil && string(pod.UID) == uid
	})
	if pods, err := podInformer.Lister().List(labels.Everything()); err == nil {
		uids := map[string]bool{}
		for _, pod := range pods {
			uids[string(pod.UID)] = true
		}
		prov.RemoveOrphanVolumes(func(uid string) bool { return uids[uid] })
	}

	routes := kubeletapi.Routes{
		Pods: func(context.Context) ([]*v1.Pod, error) {
			return podInformer.Lister().List(labels.Everything())
		},
		ContainerLogs:   prov.GetContainerLogs,
		StatsSummary:    prov.GetStatsSummary,
		MetricsResource: prov.GetMetricsResource,
		Refuse:          prov.Refuse,
		Metrics:         promhttp.HandlerFor(cfg.Metrics, promhttp.HandlerOpts{}),
		// With or without a pod network: a pod without an address of
		// its own is reached at the node's, on the ports it declares.
		PortForward: prov,
	}
	getCert, err := servingCertificate(cfg, client, recorder, goRun)
	if err != nil {
		return err
	}
	goRun("kubelet API", func(ctx context.Context) error {
		return kubeletapi.Serve(ctx, kubeletapi.Config{
			Addr:     fmt.Sprintf("%s:%d", cfg.NodeIP, cfg.KubeletPort),
			NodeName: cfg.NodeName, NodeIP: cfg.NodeIP, GetCertificate: getCert,
			CertFile: cfg.TLSCertFile, KeyFile: cfg.TLSKeyFile, CertDir: cfg.CertDir,
			ClientCAFile: cfg.ClientCAFile, Client: client, Routes: routes, Log: log,
			Limits: kubeletapi.Limits{MaxFollows: cfg.MaxLogFollows},
		})
	})
	log.Info("node agent running", "node", cfg.NodeName, "kubelet_api", fmt.Sprintf("%s:%d", cfg.NodeIP, cfg.KubeletPort))
	// Start-up is over: its pages of the binary are not the idle node's
	// (package binpages).
	goRun("start-up pages", func(ctx context.Context) error { binpages.DropAfter(ctx, binpages.Settle, log); return nil })
	<-ctx.Done()
	cancel()
	wg.Wait()
	return runErr
}

// nodeRESTConfig is the node's API identity: Kubeconfig's, bootstrapped
// first with BootstrapKubeconfig when it is missing or its certificate
// unusable (without one, such a kubeconfig is an error saying what to
// give), and renewed in the background with RotateCertificates (the
// returned config then presents the current certificate).
func nodeRESTConfig(ctx context.Context, cfg Config, goRun func(string, func(context.Context) error)) (*rest.Config, error) {
	cc := clientcert.Config{
		Kubeconfig: cfg.Kubeconfig, BootstrapKubeconfig: cfg.BootstrapKubeconfig, CertDir: cfg.CertDir,
		NodeName: cfg.NodeName, Log: cfg.Log,
		NewClient: func(c *rest.Config) (kubernetes.Interface, error) {
			cs, err := newNodeClientset(c)
			if err != nil {
				return nil, err
			}
			return cs, nil
		},
	}
	if err := clientcert.Bootstrap(ctx, cc); err != nil {
		return nil, err
	}
	restCfg, err := clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %q: %w", cfg.Kubeconfig, err)
	}
	if !cfg.RotateCertificates {
		return restCfg, nil
	}
	m, err := clientcert.New(cc, restCfg)
	if err != nil {
		return nil, err
	}
	goRun("client certificate", m.Run)
	return restCfg, nil
}

// servingCertificate starts the CSR-based serving certificate manager when
// cfg.RotateServerCertificates is set and returns its GetCertificate; nil
// otherwise (the kubelet API then uses TLSCertFile or a self-signed pair).
func servingCertificate(cfg Config, client kubernetes.Interface, recorder record.EventRecorder,
	goRun func(string, func(context.Context) error)) (func(*tls.ClientHelloInfo) (*tls.Certificate, error), error) {
	if !cfg.RotateServerCertificates {
		return nil, nil
	}
	sc, err := servingcert.New(servingcert.Config{
		Client: client, NodeName: cfg.NodeName, Addresses: []string{cfg.NodeIP, cfg.NodeName},
		Dir: cfg.CertDir, Recorder: recorder, Log: cfg.Log,
	})
	if err != nil {
		return nil, err
	}
	goRun("serving certificate", sc.Run)
	return sc.GetCertificate, nil
}

// eventQueueLimit bounds the event writes waiting for the API server
// (see queuedSink): about 10 MB at most.
const eventQueueLimit = 10000

// fastLimiter retries failures with exponential back-off but, unlike
// client-go's default, does not rate-limit every add at 10/s.
func fastLimiter() workqueue.TypedRateLimiter[any] {
	return workqueue.NewTypedMaxOfRateLimiter(
		workqueue.NewTypedItemExponentialFailureRateLimiter[any](5*time.Millisecond, 30*time.Second),
		&workqueue.TypedBucketRateLimiter[any]{Limiter: rate.NewLimiter(rate.Limit(1000), 1000)},
	)
}

// executorBinary is the executor a node agent supervises unless told:
// beside it, the one make build names for the default flavour's engine
// (executor-wazero, pure Go, for wazero) when it is there, else executor.
func executorBinary(flavour string) string {
	if flavour == "wazero" {
		if p := siblingBinary("executor-wazero"); regularFile(p) {
			return p
		}
	}
	return siblingBinary("executor")
}

func regularFile(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular()
}

func siblingBinary(name string) string {
	self, err := os.Executable()
	if err != nil {
		return name
	}
	return filepath.Join(filepath.Dir(self), name)
}

func randomToken() string {
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// measured is the provider with its pod starts measured: when a pod was
// handed to the node, and its first Running status.
type measured struct {
	*provider.Provider
	m *metrics.Agent
}

func (p measured) CreatePod(ctx context.Context, pod *v1.Pod) error {
	p.m.PodCreated(pod)
	return p.Provider.CreatePod(ctx, pod)
}

func (p measured) NotifyPods(ctx context.Context, cb func(*v1.Pod)) {
	p.Provider.NotifyPods(ctx, func(pod *v1.Pod) {
		p.m.PodStatus(pod)
		cb(pod)
	})
}
