package localcluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/wasmlet/wasmlet/internal/testharness/testpki"
)

// ErrNotRunning is returned by Attach when no cluster runs in the directory.
var ErrNotRunning = errors.New("no local cluster is running")

// Config says where a cluster keeps its state and where its binaries are.
type Config struct {
	// Dir holds the cluster's state (see the package doc). Required. It is created
	// when absent; a Dir used before keeps its PKI and etcd data.
	Dir string
	// BinDir holds etcd, kube-apiserver, kube-scheduler and kube-controller-manager
	// (what hack/controlplane/build.sh prints). Required. Its kube-proxy, which
	// build.sh builds too, is needed by StartKubeProxy only.
	BinDir string
	// Logs receives this package's progress messages (not the components' output,
	// which goes to Dir/logs). Optional: nil discards them.
	Logs io.Writer
	// ClusterSigningDuration is the longest certificate that
	// kube-controller-manager's CSR signers issue (--cluster-signing-duration);
	// zero keeps its default of a year. Tests of certificate renewal set a
	// few minutes. (The signer backdates NotBefore by 5 minutes, so a client
	// that renews at 70–90% of a certificate's span needs more than about 2
	// minutes here not to renew at once.)
	ClusterSigningDuration time.Duration
	// BootstrapTokenAuth lets kube-apiserver authenticate bootstrap tokens
	// (--enable-bootstrap-token-auth): Secrets kube-system/bootstrap-token-<id>
	// of type bootstrap.kubernetes.io/token, as user system:bootstrap:<id>
	// in group system:bootstrappers, with which a node requests its client
	// certificate. Off by default, as in kube-apiserver.
	BootstrapTokenAuth bool

	// dieWithParent makes the components die with the process that started them
	// (set by the test helpers only; see startProcess).
	dieWithParent bool
}

// Timeouts for each start-up phase; generous because the machines that run the
// tests are small and busy.
const (
	etcdTimeout       = 60 * time.Second
	apiserverTimeout  = 120 * time.Second
	componentsTimeout = 90 * time.Second
	pollInterval      = 100 * time.Millisecond
)

// state is what Attach needs to find a running cluster; stored as Dir/cluster.json.
type state struct {
	BinDir                string `json:"binDir"`
	EtcdClientPort        int    `json:"etcdClientPort"`
	EtcdPeerPort          int    `json:"etcdPeerPort"`
	APIServerPort         int    `json:"apiserverPort"`
	SchedulerPort         int    `json:"schedulerPort"`
	ControllerManagerPort int    `json:"controllerManagerPort"`
}

func (s *state) ports() []*int {
	return []*int{&s.EtcdClientPort, &s.EtcdPeerPort, &s.APIServerPort, &s.SchedulerPort, &s.ControllerManagerPort}
}

// Cluster is a running local control plane.
type Cluster struct {
	dir string
	st  state
	log *slog.Logger
	// procs holds the components this process started (nil after Attach).
	procs         map[string]*process
	dieWithParent bool
	// signingDuration is Config.ClusterSigningDuration.
	signingDuration time.Duration
	// bootstrapTokens is Config.BootstrapTokenAuth.
	bootstrapTokens bool
	// nodeMu serialises NodeKubeconfig's writes.
	nodeMu sync.Mutex
}

// Start brings up etcd, kube-apiserver, kube-scheduler and kube-controller-manager
// on free loopback ports and returns once the API server is ready, the scheduler and
// controller-manager are healthy and the default ServiceAccount exists (pods are
// rejected before that). When a component fails Start stops the others and returns
// an error with the end of the failing component's log. The processes outlive ctx
// and the calling process: stop them with Stop.
func Start(ctx context.Context, cfg Config) (*Cluster, error) {
	begin := time.Now()
	if cfg.Dir == "" || cfg.BinDir == "" {
		return nil, errors.New("start local cluster: Config.Dir and Config.BinDir are required")
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("start local cluster: %w", err)
	}
	binDir, err := filepath.Abs(cfg.BinDir)
	if err != nil {
		return nil, fmt.Errorf("start local cluster: %w", err)
	}
	if err := checkBinDir(binDir); err != nil {
		return nil, fmt.Errorf("start local cluster: %w", err)
	}
	logs := cfg.Logs
	if logs == nil {
		logs = io.Discard
	}
	c := &Cluster{
		dir: dir, log: slog.New(slog.NewTextHandler(logs, nil)),
		procs: map[string]*process{}, dieWithParent: cfg.dieWithParent,
		signingDuration: cfg.ClusterSigningDuration, bootstrapTokens: cfg.BootstrapTokenAuth,
	}
	if running := c.PIDs(); len(running) > 0 {
		return nil, fmt.Errorf("start local cluster in %s: already running (PIDs %v): use Attach, or Stop it first", dir, running)
	}
	for _, sub := range []string{"logs", "pids", "etcd", "nodes", "run"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			return nil, fmt.Errorf("start local cluster: %w", err)
		}
	}
	if _, err := ensurePKI(c.pki()); err != nil {
		return nil, fmt.Errorf("start local cluster: generate PKI in %s: %w", c.pki().dir, err)
	}
	if err := c.ensureServingCerts(); err != nil {
		return nil, fmt.Errorf("start local cluster: %w", err)
	}
	prev, _ := readState(dir) // reuse last run's ports when free: kubeconfigs stay valid
	c.st = state{BinDir: binDir}
	if err := pickPorts(c.st.ports(), prev.ports()); err != nil {
		return nil, fmt.Errorf("start local cluster: %w", err)
	}
	if err := c.writeKubeconfigs(); err != nil {
		return nil, fmt.Errorf("start local cluster: %w", err)
	}
	if err := writeState(dir, c.st); err != nil {
		return nil, fmt.Errorf("start local cluster: %w", err)
	}
	if err := c.startAll(ctx, begin); err != nil {
		if serr := stopDir(dir); serr != nil {
			err = errors.Join(err, fmt.Errorf("clean up: %w", serr))
		}
		return nil, fmt.Errorf("start local cluster in %s: %w", dir, err)
	}
	return c, nil
}

func (c *Cluster) startAll(ctx context.Context, begin time.Time) error {
	etcd, err := c.start(etcdName, c.etcdArgs())
	if err != nil {
		return err
	}
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d/health", c.st.EtcdClientPort)
	if err := waitFor(ctx, etcd, etcdTimeout, httpOK(http.DefaultClient, etcdURL)); err != nil {
		return err
	}
	c.log.Info("etcd ready", "elapsed", time.Since(begin).Round(time.Millisecond))

	apiserver, err := c.start(apiserverProc, c.apiserverArgs())
	if err != nil {
		return err
	}
	admin, err := c.adminHTTPClient()
	if err != nil {
		return err
	}
	if err := waitFor(ctx, apiserver, apiserverTimeout, httpOK(admin, c.Server()+"/readyz")); err != nil {
		return err
	}
	c.log.Info("kube-apiserver ready", "elapsed", time.Since(begin).Round(time.Millisecond))

	scheduler, err := c.start(schedulerProc, c.schedulerArgs())
	if err != nil {
		return err
	}
	cm, err := c.start(cmProc, c.controllerManagerArgs())
	if err != nil {
		return err
	}
	pool, err := c.caPool()
	if err != nil {
		return err
	}
	healthClient := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	if err := waitFor(ctx, scheduler, componentsTimeout, httpOK(healthClient, fmt.Sprintf("https://127.0.0.1:%d/healthz", c.st.SchedulerPort))); err != nil {
		return err
	}
	if err := waitFor(ctx, cm, componentsTimeout, httpOK(healthClient, fmt.Sprintf("https://127.0.0.1:%d/healthz", c.st.ControllerManagerPort))); err != nil {
		return err
	}
	cs, err := c.Clientset()
	if err != nil {
		return err
	}
	// The serviceaccount controller creates default/default; until then the API
	// server rejects every pod in the namespace.
	defaultSA := func(ctx context.Context) error {
		_, err := cs.CoreV1().ServiceAccounts(metav1.NamespaceDefault).Get(ctx, "default", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return errors.New("ServiceAccount default/default not created yet")
		}
		return err
	}
	if err := waitFor(ctx, cm, componentsTimeout, defaultSA); err != nil {
		return err
	}
	c.log.Info("control plane ready", "server", c.Server(), "kubeconfig", c.KubeconfigPath(), "elapsed", time.Since(begin).Round(time.Millisecond))
	return nil
}

func (c *Cluster) start(name string, args []string) (*process, error) {
	p, err := startProcess(c.dir, name, filepath.Join(c.st.BinDir, name), args, nil, c.dieWithParent)
	if err != nil {
		return nil, err
	}
	c.procs[name] = p
	c.log.Info("started", "component", name, "pid", p.pid, "log", p.logPath)
	return p, nil
}

func (c *Cluster) etcdArgs() []string {
	client := fmt.Sprintf("http://127.0.0.1:%d", c.st.EtcdClientPort)
	peer := fmt.Sprintf("http://127.0.0.1:%d", c.st.EtcdPeerPort)
	return []string{
		"--name=default",
		"--data-dir=" + filepath.Join(c.dir, "etcd"),
		"--listen-client-urls=" + client,
		"--advertise-client-urls=" + client,
		"--listen-peer-urls=" + peer,
		"--initial-advertise-peer-urls=" + peer,
		"--initial-cluster=default=" + peer,
		"--unsafe-no-fsync",
		"--log-level=warn",
	}
}

func (c *Cluster) apiserverArgs() []string {
	p := c.pki()
	args := []string{
		"--etcd-servers=" + fmt.Sprintf("http://127.0.0.1:%d", c.st.EtcdClientPort),
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(c.st.APIServerPort),
		"--endpoint-reconciler-type=none",
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		"--service-cluster-ip-range=10.0.0.0/24",
		"--allow-privileged=true",
		"--cert-dir=" + filepath.Join(c.dir, "run"),
		"--client-ca-file=" + p.crt(caName),
		"--tls-cert-file=" + p.crt(apiserverName),
		"--tls-private-key-file=" + p.key(apiserverName),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + p.saPub(),
		"--service-account-signing-key-file=" + p.saKey(),
		"--kubelet-client-certificate=" + p.crt(kubeletClientName),
		"--kubelet-client-key=" + p.key(kubeletClientName),
		"--kubelet-preferred-address-types=InternalIP,Hostname",
		"--requestheader-client-ca-file=" + p.crt(frontProxyCAName),
		"--requestheader-allowed-names=front-proxy-client",
		"--requestheader-username-headers=X-Remote-User",
		"--requestheader-group-headers=X-Remote-Group",
		"--requestheader-extra-headers-prefix=X-Remote-Extra-",
		"--proxy-client-cert-file=" + p.crt(frontProxyClientName),
		"--proxy-client-key-file=" + p.key(frontProxyClientName),
		"--profiling=false",
	}
	if c.bootstrapTokens {
		args = append(args, "--enable-bootstrap-token-auth")
	}
	return args
}

// ClusterCIDR is the pods' range: private, used by nothing else on the
// machines the stack runs on (Docker's networks are 172.16.0.0/12), and
// apart from the Services' 10.0.0.0/24.
const ClusterCIDR = "10.244.0.0/16"

// componentArgs are the flags kube-scheduler and kube-controller-manager share.
func (c *Cluster) componentArgs(name string, port int) []string {
	kc := filepath.Join(c.dir, name+".kubeconfig")
	p := c.pki()
	return []string{
		"--kubeconfig=" + kc,
		"--authentication-kubeconfig=" + kc,
		"--authorization-kubeconfig=" + kc,
		"--leader-elect=false",
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(port),
		"--tls-cert-file=" + p.crt(name+"-serving"),
		"--tls-private-key-file=" + p.key(name+"-serving"),
		"--profiling=false",
	}
}

func (c *Cluster) schedulerArgs() []string {
	// The default 50 QPS caps how fast a burst of pods is bound.
	return append(c.componentArgs(schedulerProc, c.st.SchedulerPort),
		"--kube-api-qps=500", "--kube-api-burst=1000")
}

func (c *Cluster) controllerManagerArgs() []string {
	p := c.pki()
	args := c.componentArgs(cmProc, c.st.ControllerManagerPort)
	if c.signingDuration > 0 {
		args = append(args, "--cluster-signing-duration="+c.signingDuration.String())
	}
	return append(args,
		"--controllers=*",
		"--use-service-account-credentials=true",
		"--service-account-private-key-file="+p.saKey(),
		"--root-ca-file="+p.crt(caName),
		"--cluster-signing-cert-file="+p.crt(caName),
		"--cluster-signing-key-file="+p.key(caName),
		"--cluster-name=wasmlet-local",
		"--kube-api-qps=100", "--kube-api-burst=200",
		// Each Node gets a spec.podCIDR, a /24 of ClusterCIDR, from which a
		// node agent with --pod-network=bridge gives its pods addresses.
		"--allocate-node-cidrs=true", "--cluster-cidr="+ClusterCIDR,
	)
}

// ensureServingCerts issues the scheduler's and controller-manager's serving certs
// from the cluster CA, so that their health endpoints can be checked with TLS
// verification instead of trusting a self-signed certificate.
func (c *Cluster) ensureServingCerts() error {
	p := c.pki()
	ca, err := testpki.LoadPair(p.crt(caName), p.key(caName))
	if err != nil {
		return fmt.Errorf("load cluster CA: %w", err)
	}
	for _, name := range []string{schedulerProc, cmProc} {
		spec := newLeafSpec(name+"-serving", pkix.Name{CommonName: name},
			[]x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)})
		if err := ensureLeaf(p, ca, spec, false); err != nil {
			return err
		}
	}
	return nil
}

// waitFor polls check until it succeeds, p exits, the timeout passes or ctx ends.
func waitFor(ctx context.Context, p *process, timeout time.Duration, check func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		last = check(cctx)
		ccancel()
		if last == nil {
			return nil
		}
		select {
		case <-p.exited:
			return p.failure(fmt.Sprintf("exited (%v)", p.waitErr))
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("%w (last check: %v)", p.failure(fmt.Sprintf("not ready after %s", timeout)), last)
			}
			return fmt.Errorf("wait for %s: %w", p.name, ctx.Err())
		case <-time.After(pollInterval):
		}
	}
}

// httpOK returns a check that GETs url and wants 200.
func httpOK(client *http.Client, url string) func(context.Context) error {
	return func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
		}
		return nil
	}
}

// Attach returns the cluster that a Start (possibly in another process) left
// running in dir. It checks that every component's process is alive, not that it
// is healthy. It returns an error wrapping ErrNotRunning when nothing runs there.
func Attach(dir string) (*Cluster, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("attach to local cluster: %w", err)
	}
	st, err := readState(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("attach to local cluster in %s: %w (no cluster.json): start one first", dir, ErrNotRunning)
	}
	if err != nil {
		return nil, fmt.Errorf("attach to local cluster in %s: %w", dir, err)
	}
	c := &Cluster{dir: dir, st: st, log: slog.New(slog.DiscardHandler)}
	running := c.PIDs()
	var missing []string
	for _, name := range components() {
		if running[name] == 0 {
			missing = append(missing, name)
		}
	}
	if len(missing) == len(components()) {
		return nil, fmt.Errorf("attach to local cluster in %s: %w: start it again", dir, ErrNotRunning)
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("attach to local cluster in %s: %s not running (see %s): stop the cluster and start it again",
			dir, strings.Join(missing, ", "), filepath.Join(dir, "logs"))
	}
	return c, nil
}

// Stop stops the cluster whose state is in dir, whichever process started it:
// SIGTERM to every component (clients before servers), up to 10 s each to exit,
// then SIGKILL. Stopping a cluster that is not running is not an error. etcd data
// and the PKI stay in dir for the next Start.
func Stop(dir string) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("stop local cluster: %w", err)
	}
	if err := stopDir(dir); err != nil {
		return fmt.Errorf("stop local cluster in %s: %w", dir, err)
	}
	return nil
}

// Stop stops the cluster; see the package-level Stop. It may be called more than once.
func (c *Cluster) Stop() error {
	err := Stop(c.dir)
	for _, p := range c.procs {
		select {
		case <-p.exited:
		case <-time.After(killWait):
		}
	}
	return err
}

// PIDs returns the PID of every component process that is running, by name.
func (c *Cluster) PIDs() map[string]int {
	pids := map[string]int{}
	for _, name := range components() {
		if pid, err := runningPID(c.dir, name); err == nil && pid != 0 {
			pids[name] = pid
		}
	}
	return pids
}

// Dir returns the cluster's state directory.
func (c *Cluster) Dir() string { return c.dir }

// Server returns the API server's URL.
func (c *Cluster) Server() string { return fmt.Sprintf("https://127.0.0.1:%d", c.st.APIServerPort) }

// KubeconfigPath returns the admin (system:masters) kubeconfig.
func (c *Cluster) KubeconfigPath() string { return filepath.Join(c.dir, "admin.kubeconfig") }

// CACertPath returns the cluster CA certificate (PEM): it signed the API server's
// serving certificate and every client certificate the API server accepts.
func (c *Cluster) CACertPath() string { return c.pki().crt(caName) }

// KubeletClientCAPath returns the CA that signed the API server's client
// certificate towards kubelets: a kubelet API must accept clients it signed. It is
// the cluster CA.
func (c *Cluster) KubeletClientCAPath() string { return c.pki().crt(caName) }

// LogPath returns the log file of a component (etcd, kube-apiserver, ...).
func (c *Cluster) LogPath(component string) string {
	return filepath.Join(c.dir, "logs", component+".log")
}

// RESTConfig returns an admin client configuration.
func (c *Cluster) RESTConfig() *rest.Config {
	p := c.pki()
	return &rest.Config{
		Host: c.Server(),
		TLSClientConfig: rest.TLSClientConfig{
			CAFile: p.crt(caName), CertFile: p.crt(adminName), KeyFile: p.key(adminName),
		},
		QPS:   200,
		Burst: 400,
	}
}

// Clientset returns an admin clientset.
func (c *Cluster) Clientset() (*kubernetes.Clientset, error) {
	cs, err := kubernetes.NewForConfig(c.RESTConfig())
	if err != nil {
		return nil, fmt.Errorf("admin clientset for %s: %w", c.Server(), err)
	}
	return cs, nil
}

// NodeKubeconfig issues a client certificate for the node nodeName (CN
// system:node:<name>, O system:nodes), signed by the cluster CA, and writes a
// kubeconfig with it to Dir/nodes/<name>.kubeconfig. This is the identity a node
// agent must use: the Node authorizer and NodeRestriction then limit it to its own
// Node, Lease and pods. Each call issues a new certificate.
func (c *Cluster) NodeKubeconfig(nodeName string) (string, error) {
	// A Node name is an RFC 1123 subdomain; checking it also keeps it safe as a file name.
	nodeNameRE := regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
	if len(nodeName) > 253 || !nodeNameRE.MatchString(nodeName) {
		return "", fmt.Errorf("node kubeconfig: %q is not a valid node name (lower-case RFC 1123 subdomain)", nodeName)
	}
	path := filepath.Join(c.dir, "nodes", nodeName+".kubeconfig")
	subject := pkix.Name{CommonName: "system:node:" + nodeName, Organization: []string{"system:nodes"}}
	if err := c.clientKubeconfig(path, subject); err != nil {
		return "", fmt.Errorf("node kubeconfig for %s: %w", nodeName, err)
	}
	return path, nil
}

func (c *Cluster) pki() pkiPaths { return pkiPaths{dir: filepath.Join(c.dir, "pki")} }

// writeKubeconfigs writes the admin, scheduler and controller-manager kubeconfigs.
func (c *Cluster) writeKubeconfigs() error {
	p := c.pki()
	for _, kc := range []struct{ file, pair, user string }{
		{"admin.kubeconfig", adminName, "admin"},
		{schedulerProc + ".kubeconfig", schedulerName, "system:kube-scheduler"},
		{cmProc + ".kubeconfig", controllerManagerName, "system:kube-controller-manager"},
	} {
		certPEM, err := os.ReadFile(p.crt(kc.pair))
		if err != nil {
			return fmt.Errorf("write %s: %w", kc.file, err)
		}
		keyPEM, err := os.ReadFile(p.key(kc.pair))
		if err != nil {
			return fmt.Errorf("write %s: %w", kc.file, err)
		}
		if err := c.writeKubeconfig(filepath.Join(c.dir, kc.file), kc.user, certPEM, keyPEM); err != nil {
			return err
		}
	}
	return nil
}

// writeKubeconfig writes a self-contained kubeconfig (certificates inline), so
// that it can be copied or mounted on its own.
func (c *Cluster) writeKubeconfig(path, user string, certPEM, keyPEM []byte) error {
	caPEM, err := os.ReadFile(c.CACertPath())
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return testpki.WriteKubeconfig(path, testpki.Kubeconfig{
		Name: "wasmlet-local", Server: c.Server(), CA: caPEM, User: user, Cert: certPEM, Key: keyPEM,
	})
}

func (c *Cluster) caPool() (*x509.CertPool, error) {
	b, err := os.ReadFile(c.CACertPath())
	if err != nil {
		return nil, fmt.Errorf("read cluster CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("read cluster CA: no certificate in %s", c.CACertPath())
	}
	return pool, nil
}

func (c *Cluster) adminHTTPClient() (*http.Client, error) {
	pool, err := c.caPool()
	if err != nil {
		return nil, err
	}
	p := c.pki()
	cert, err := tls.LoadX509KeyPair(p.crt(adminName), p.key(adminName))
	if err != nil {
		return nil, fmt.Errorf("load admin certificate: %w", err)
	}
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}},
	}}, nil
}

func checkBinDir(binDir string) error {
	for _, name := range components() {
		st, err := os.Stat(filepath.Join(binDir, name))
		if err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			return fmt.Errorf("%s has no executable %s: build the control plane with hack/controlplane/build.sh", binDir, name)
		}
	}
	return nil
}

// pickPorts fills ports with free loopback ports, preferring prev's where free. All
// listeners are held until every port is chosen so that no two are the same.
func pickPorts(ports, prev []*int) error {
	var held []net.Listener
	defer func() {
		for _, l := range held {
			_ = l.Close()
		}
	}()
	for i, p := range ports {
		if i < len(prev) && *prev[i] > 0 {
			if l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", *prev[i])); err == nil {
				held = append(held, l)
				*p = *prev[i]
				continue
			}
		}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return fmt.Errorf("pick a free loopback port: %w", err)
		}
		held = append(held, l)
		*p = l.Addr().(*net.TCPAddr).Port
	}
	return nil
}

func statePath(dir string) string { return filepath.Join(dir, "cluster.json") }

func readState(dir string) (state, error) {
	var st state
	b, err := os.ReadFile(statePath(dir))
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("read %s: %w", statePath(dir), err)
	}
	return st, nil
}

func writeState(dir string, st state) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("write %s: %w", statePath(dir), err)
	}
	return testpki.WriteFile(statePath(dir), append(b, '\n'), 0o644)
}
