// Package kubeletapi serves the kubelet API (:10250) of a wasmlet node over
// HTTPS, authenticated and authorised the way the kubelet's webhook mode
// does it (package kubeletauth): client certificates signed by the cluster
// CA (the API server's kubelet client) or bearer tokens checked with
// TokenReview; every request then checked with SubjectAccessReview on
// nodes/proxy, nodes/log, nodes/stats or nodes/metrics. Anonymous requests
// are refused with 401.
//
// It owns the listener, the self-signed serving certificate (or serves the
// one a GetCertificate func hands it, issued by the cluster) and the routes
// the kubelet serves that a wasmlet node has: /pods, /containerLogs,
// /stats/summary, /metrics/resource and /healthz; /exec, /attach and
// /portForward are answered with the refusal Routes.Refuse gives, as a
// kubelet-style Status. What each route returns is the provider's.
//
// The routes and the auth chain are its own rather than virtual-kubelet's
// (node/api and node/nodeutil, which DESIGN.md names): those link
// k8s.io/apiserver (its webhook authenticator and authorizer, and its
// httplog for the exec streams), and with it cel-go, etcd's API and
// OpenTelemetry: 13 MB of the node agent's 78 MB stripped binary and
// 12 MiB of its 71 MiB resident at idle (issue 7). wasmlet needs none of
// the streaming those packages implement.
//
// No request may crash or exhaust the node agent: numbers in a query are
// clamped (MaxLogCount, MaxSinceSeconds) or refused with 400, a handler's
// panic is recovered, logged and answered 500, the server has read-header,
// read and idle timeouts (no write timeout: a followed log is a response
// that lasts as long as its container), and at most Limits.MaxFollows
// followed logs are served at once; one more is answered 429.
package kubeletapi

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"sync/atomic"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	statsv1alpha1 "k8s.io/kubelet/pkg/apis/stats/v1alpha1"
	"k8s.io/kubelet/pkg/cri/streaming/portforward"

	"github.com/wasmlet/wasmlet/services/nodeagent/internal/kubeletauth"
)

// Config configures the server; all fields are required unless noted.
type Config struct {
	// Addr is host:port to listen on: the node's address, not all interfaces.
	Addr     string
	NodeName string
	NodeIP   string
	// GetCertificate, when set, gives the serving certificate on every
	// handshake (a certificate issued through a CSR and renewed in place:
	// see package servingcert); CertFile, KeyFile and CertDir are then unused.
	GetCertificate func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	// CertFile and KeyFile serve TLS; when empty, a self-signed pair is made
	// (and kept) in CertDir.
	CertFile, KeyFile string
	CertDir           string
	// ClientCAFile holds the CA(s) whose client certificates are accepted
	// (the cluster CA that signed the API server's kubelet client cert).
	// Empty: only bearer tokens authenticate.
	ClientCAFile string
	Client       kubernetes.Interface // for TokenReview and SubjectAccessReview
	Routes       Routes
	Limits       Limits // optional
	Log          *slog.Logger
}

// Limits bound what requests may hold of the node agent at once.
type Limits struct {
	// MaxFollows is how many followed logs (kubectl logs -f) are served at
	// once; one more is answered 429. 0: DefaultMaxFollows.
	MaxFollows int
}

// DefaultMaxFollows is Limits.MaxFollows' default. A follow holds a NATS
// consumer, a few goroutines and a 64 KiB buffer: a few hundred cost a few
// tens of MiB.
const DefaultMaxFollows = 256

// Bounds of /containerLogs' numbers. A larger tailLines or limitBytes is
// clamped (both are beyond what the logs stream can hold, so the answer is
// the same), and a larger sinceSeconds too (before any record). kubectl
// sends any int64.
const (
	MaxLogCount     = 1 << 40
	MaxSinceSeconds = 1 << 32 // 136 years
)

// The server's timeouts. There is no write timeout: a followed log is one
// response that lasts as long as its container. The read timeout bounds
// reading a request; net/http lifts it once a request without a body is
// read (HTTP/1) or applies it to bodies only (HTTP/2), so it does not cut
// a response (TestServerTimeouts).
const (
	readHeaderTimeout = 10 * time.Second
	readTimeout       = time.Minute
	idleTimeout       = 2 * time.Minute
)

// LogOptions are the query parameters of /containerLogs (those of
// kubectl logs).
type LogOptions struct {
	Tail         int // lines from the end; 0: all
	LimitBytes   int // 0: no limit
	Timestamps   bool
	Follow       bool
	Previous     bool
	SinceSeconds int
	SinceTime    time.Time
}

// Routes are what the kubelet API serves. Pods, ContainerLogs and Refuse
// are required; a nil StatsSummary or MetricsResource answers 501.
// Errors made with virtual-kubelet's errdefs map to 404 (NotFound) and 400
// (InvalidInput); any other to 500.
type Routes struct {
	// Pods lists the pods bound to the node (GET /pods).
	Pods func(context.Context) ([]*v1.Pod, error)
	// ContainerLogs opens a container's log (GET /containerLogs/ns/pod/container).
	ContainerLogs func(ctx context.Context, namespace, pod, container string, opts LogOptions) (io.ReadCloser, error)
	// StatsSummary serves GET /stats/summary (kubectl top, metrics-server).
	StatsSummary func(context.Context) (*statsv1alpha1.Summary, error)
	// MetricsResource serves GET /metrics/resource.
	MetricsResource func(context.Context) ([]*dto.MetricFamily, error)
	// Refuse gives the error /exec, /attach and /portForward answer with;
	// action is "exec", "attach" or "portforward", container is empty for
	// portforward.
	Refuse func(ctx context.Context, action, namespace, pod, container string) error
	// Metrics, when set, serves /metrics (the node agent's own).
	Metrics http.Handler
	// PortForward, when set, serves /portForward (kubectl port-forward),
	// in SPDY and WebSocket as the kubelet speaks them; nil: Refuse
	// answers.
	PortForward PortForwarder
}

// PortForwarder forwards kubectl port-forward's streams to pods' ports.
type PortForwarder interface {
	// Forwardable says, before the connection is upgraded (so that its
	// error is answered as a Status), whether the pod's ports can be
	// reached, and gives its UID.
	Forwardable(ctx context.Context, namespace, pod string) (types.UID, error)
	// Forward copies data between stream and the pod's port until either
	// side ends.
	Forward(ctx context.Context, namespace, pod string, port int32, stream io.ReadWriteCloser) error
}

// The kubelet's defaults (--streaming-connection-idle-timeout, and the
// time a client has to open a port's streams).
const (
	portForwardIdleTimeout    = 4 * time.Hour
	portForwardStreamCreation = 30 * time.Second
)

// podForwarder is one pod's portforward.PortForwarder.
type podForwarder struct {
	f         PortForwarder
	namespace string
}

func (p podForwarder) PortForward(ctx context.Context, name string, _ types.UID, port int32, stream io.ReadWriteCloser) error {
	return p.f.Forward(ctx, p.namespace, name, port, stream)
}

// Serve listens and serves until ctx ends.
func Serve(ctx context.Context, cfg Config) error {
	if cfg.Addr == "" || cfg.Client == nil || cfg.NodeName == "" {
		return errors.New("kubeletapi: Addr, NodeName and Client are required")
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	tlsConfig := &tls.Config{
		MinVersion: tls.VersionTLS12,
		// Verified by the authenticator against ClientCAFile, so that a
		// token-bearing client without a certificate is still heard.
		ClientAuth:     tls.RequestClientCert,
		GetCertificate: cfg.GetCertificate,
	}
	if cfg.GetCertificate == nil {
		cert, err := servingCert(cfg)
		if err != nil {
			return err
		}
		tlsConfig.Certificates = []tls.Certificate{cert}
	}
	var cas *x509.CertPool
	if cfg.ClientCAFile != "" {
		pemBytes, err := os.ReadFile(cfg.ClientCAFile)
		if err != nil {
			return fmt.Errorf("kubeletapi: client CA: %w", err)
		}
		cas = x509.NewCertPool()
		if !cas.AppendCertsFromPEM(pemBytes) {
			return fmt.Errorf("kubeletapi: client CA %s holds no PEM certificate: pass the cluster CA with --client-ca-file", cfg.ClientCAFile)
		}
	}
	auth, err := kubeletauth.New(kubeletauth.Config{Client: cfg.Client, NodeName: cfg.NodeName, ClientCAs: cas, Log: cfg.Log})
	if err != nil {
		return fmt.Errorf("kubeletapi: auth: %w", err)
	}
	h, err := Handler(cfg.Routes, cfg.Limits, cfg.Log)
	if err != nil {
		return err
	}

	l, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("kubeletapi: listen %s: %w", cfg.Addr, err)
	}
	srv := newServer(recoverPanics(auth.Wrap(h), cfg.Log), cfg.Log)
	srv.TLSConfig = tlsConfig
	errc := make(chan error, 1)
	go func() { errc <- srv.ServeTLS(l, "", "") }()
	cfg.Log.Info("kubelet API listening", "addr", l.Addr().String())
	select {
	case err := <-errc:
		return fmt.Errorf("kubeletapi: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	return nil
}

// newServer returns the kubelet API's server, with its timeouts.
func newServer(h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
}

// Handler returns the kubelet API's routes, without authentication (Serve
// puts them behind it).
func Handler(r Routes, lim Limits, log *slog.Logger) (http.Handler, error) {
	if r.Pods == nil || r.ContainerLogs == nil || r.Refuse == nil {
		return nil, errors.New("kubeletapi: Routes.Pods, ContainerLogs and Refuse are required")
	}
	if log == nil {
		log = slog.Default()
	}
	if lim.MaxFollows <= 0 {
		lim.MaxFollows = DefaultMaxFollows
	}
	follows := make(chan struct{}, lim.MaxFollows)
	// The API server passes kubectl a generic "too many requests" for a
	// 429, without this message: the node's log says why, at most every
	// 10 s (a flood of refusals must not flood the log).
	var lastRefusalLog atomic.Int64
	mux := http.NewServeMux()
	handle := func(pattern string, f func(http.ResponseWriter, *http.Request) error) {
		mux.HandleFunc(pattern, func(w http.ResponseWriter, req *http.Request) {
			if err := f(w, req); err != nil {
				writeError(w, req, err, log)
			}
		})
	}
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })
	if r.Metrics != nil {
		mux.Handle("/metrics", r.Metrics)
	}
	handle("GET /pods", func(w http.ResponseWriter, req *http.Request) error {
		pods, err := r.Pods(req.Context())
		if err != nil {
			return err
		}
		list := v1.PodList{TypeMeta: metav1.TypeMeta{Kind: "PodList", APIVersion: "v1"}, Items: make([]v1.Pod, 0, len(pods))}
		for _, p := range pods {
			list.Items = append(list.Items, *p)
		}
		return writeJSON(w, &list)
	})
	handle("GET /containerLogs/{namespace}/{pod}/{container}", func(w http.ResponseWriter, req *http.Request) error {
		opts, err := parseLogOptions(req)
		if err != nil {
			return err
		}
		if opts.Follow {
			select {
			case follows <- struct{}{}:
				defer func() { <-follows }()
			default:
				if now := time.Now().UnixNano(); now-lastRefusalLog.Load() >= int64(10*time.Second) {
					lastRefusalLog.Store(now)
					log.Warn("followed log refused: --max-log-follows reached", "max", lim.MaxFollows, "pod", req.PathValue("namespace")+"/"+req.PathValue("pod"))
				}
				return fmt.Errorf("%w: this node serves at most %d followed logs (kubectl logs -f) at once, and all are in use: "+
					"stop a kubectl logs -f that is no longer needed, or retry later; the node's operator can raise the node agent's --max-log-follows",
					errTooManyFollows, lim.MaxFollows)
			}
		}
		rc, err := r.ContainerLogs(req.Context(), req.PathValue("namespace"), req.PathValue("pod"), req.PathValue("container"), opts)
		if err != nil {
			return err
		}
		defer rc.Close()
		w.Header().Set("Content-Type", "text/plain")
		_, _ = io.Copy(flushWriter{w, http.NewResponseController(w)}, rc) // the client went away
		return nil
	})
	stats := func(w http.ResponseWriter, req *http.Request) error {
		if r.StatsSummary == nil {
			return errNotImplemented
		}
		s, err := r.StatsSummary(req.Context())
		if err != nil {
			return err
		}
		return writeJSON(w, s)
	}
	handle("GET /stats/summary", stats)
	handle("GET /stats/summary/", stats)
	metrics := func(w http.ResponseWriter, req *http.Request) error {
		if r.MetricsResource == nil {
			return errNotImplemented
		}
		fams, err := r.MetricsResource(req.Context())
		if err != nil {
			return err
		}
		format := expfmt.NewFormat(expfmt.TypeTextPlain)
		w.Header().Set("Content-Type", string(format))
		enc := expfmt.NewEncoder(w, format)
		for _, f := range fams {
			if err := enc.Encode(f); err != nil {
				return fmt.Errorf("encode metric family %s: %w", f.GetName(), err)
			}
		}
		return nil
	}
	handle("GET /metrics/resource", metrics)
	handle("GET /metrics/resource/", metrics)
	for _, action := range []string{"exec", "attach"} {
		f := func(_ http.ResponseWriter, req *http.Request) error {
			return r.Refuse(req.Context(), action, req.PathValue("namespace"), req.PathValue("pod"), req.PathValue("container"))
		}
		handle("GET /"+action+"/{namespace}/{pod}/{container}", f)
		handle("POST /"+action+"/{namespace}/{pod}/{container}", f)
	}
	pf := func(w http.ResponseWriter, req *http.Request) error {
		ns, pod := req.PathValue("namespace"), req.PathValue("pod")
		if r.PortForward == nil {
			return r.Refuse(req.Context(), "portforward", ns, pod, "")
		}
		uid, err := r.PortForward.Forwardable(req.Context(), ns, pod)
		if err != nil {
			return err
		}
		opts, err := portforward.NewV4Options(req)
		if err != nil {
			return errdefs.AsInvalidInput(err)
		}
		portforward.ServePortForward(w, req, podForwarder{r.PortForward, ns}, pod, uid, opts,
			portForwardIdleTimeout, portForwardStreamCreation, portforward.SupportedProtocols)
		return nil
	}
	handle("GET /portForward/{namespace}/{pod}", pf)
	handle("POST /portForward/{namespace}/{pod}", pf)
	return recoverPanics(mux, log), nil
}

// ErrUnavailable marks an error of a backend that cannot be reached for
// now (wrap it with Unavailable): answered 503 with Retry-After, as a
// request worth retrying, not a 500.
var ErrUnavailable = errors.New("temporarily unavailable")

// Unavailable marks err as ErrUnavailable, keeping its message.
func Unavailable(err error) error { return unavailable{err} }

type unavailable struct{ error }

func (u unavailable) Unwrap() []error { return []error{u.error, ErrUnavailable} }

var (
	errNotImplemented = errors.New("not implemented by this node")
	errTooManyFollows = errors.New("too many followed logs")
	errPanic          = errors.New("internal error in the node agent (logged on the node)")
)

// recoverPanics answers a handler's panic with 500 (if nothing was written
// yet) and logs it with its stack: one request's bug must not end the node
// agent, nor go unrecorded.
func recoverPanics(h http.Handler, log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		rw := &wroteWriter{ResponseWriter: w}
		defer func() {
			v := recover()
			if v == nil {
				return
			}
			if v == http.ErrAbortHandler {
				panic(v) // net/http's own way to abort a response
			}
			log.Error("kubelet API handler panicked", "path", req.URL.Path, "query", req.URL.RawQuery, "panic", v, "stack", string(debug.Stack()))
			if !rw.wrote {
				writeError(rw, req, errPanic, log)
			}
		}()
		h.ServeHTTP(rw, req)
	})
}

// wroteWriter records whether a response has begun.
type wroteWriter struct {
	http.ResponseWriter
	wrote bool
}

func (w *wroteWriter) WriteHeader(code int) {
	w.wrote = true
	w.ResponseWriter.WriteHeader(code)
}

func (w *wroteWriter) Write(p []byte) (int, error) {
	w.wrote = true
	return w.ResponseWriter.Write(p)
}

// Unwrap lets http.ResponseController reach the connection (flushes, the
// read deadline).
func (w *wroteWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Hijack hands the connection over (port-forward's upgrade asserts
// http.Hijacker on the writer it is given).
func (w *wroteWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	w.wrote = true
	return http.NewResponseController(w.ResponseWriter).Hijack()
}

// writeError answers with a metav1.Status, as the kubelet does: the API
// server and kubectl show its message (e.g. "unable to upgrade
// connection: exec is not supported for Wasm pods: ...").
func writeError(w http.ResponseWriter, req *http.Request, err error, log *slog.Logger) {
	code, reason := http.StatusInternalServerError, metav1.StatusReasonInternalError
	switch {
	case errdefs.IsNotFound(err):
		code, reason = http.StatusNotFound, metav1.StatusReasonNotFound
	case errdefs.IsInvalidInput(err):
		code, reason = http.StatusBadRequest, metav1.StatusReasonBadRequest
	case errors.Is(err, errNotImplemented):
		code, reason = http.StatusNotImplemented, metav1.StatusReasonMethodNotAllowed
	case errors.Is(err, errTooManyFollows):
		code, reason = http.StatusTooManyRequests, metav1.StatusReasonTooManyRequests
		w.Header().Set("Retry-After", "10")
	case errors.Is(err, ErrUnavailable):
		code, reason = http.StatusServiceUnavailable, metav1.StatusReasonServiceUnavailable
		w.Header().Set("Retry-After", "5")
	case errors.Is(err, context.Canceled):
		return
	}
	if code >= 500 {
		log.Error("kubelet API request failed", "path", req.URL.Path, "code", code, "err", err)
	} else {
		log.Debug("kubelet API request refused", "path", req.URL.Path, "code", code, "err", err)
	}
	st := metav1.Status{
		TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
		Status:   metav1.StatusFailure, Message: err.Error(), Reason: reason, Code: int32(code),
	}
	b, _ := json.Marshal(&st)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(b)
}

func writeJSON(w http.ResponseWriter, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode response: %w", err)
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(b)
	return nil
}

// flushWriter flushes after every write, so that kubectl logs -f shows a
// line as soon as it comes.
type flushWriter struct {
	w  io.Writer
	rc *http.ResponseController
}

func (f flushWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	if n > 0 {
		_ = f.rc.Flush()
	}
	return n, err
}

// parseLogOptions reads /containerLogs' query; a bad value is InvalidInput
// (400) naming the parameter; a number above its bound is clamped to it.
func parseLogOptions(req *http.Request) (LogOptions, error) {
	q := req.URL.Query()
	var o LogOptions
	var err error
	intParam := func(name string, dst *int, lo, hi int64) {
		v := q.Get(name)
		if v == "" || err != nil {
			return
		}
		n, perr := strconv.ParseInt(v, 10, 64)
		if errors.Is(perr, strconv.ErrRange) && n > 0 {
			n, perr = hi, nil // beyond int64: as large as can be
		}
		switch {
		case perr != nil:
			err = errdefs.InvalidInputf("%s=%q is not a whole number", name, v)
		case n < lo:
			err = errdefs.InvalidInputf("%s is %d: it must be at least %d", name, n, lo)
		default:
			*dst = int(min(n, hi, math.MaxInt))
		}
	}
	boolParam := func(name string, dst *bool) {
		v := q.Get(name)
		if v == "" || err != nil {
			return
		}
		b, perr := strconv.ParseBool(v)
		if perr != nil {
			err = errdefs.InvalidInputf("%s=%q is not true or false", name, v)
			return
		}
		*dst = b
	}
	intParam("tailLines", &o.Tail, 0, MaxLogCount)
	intParam("limitBytes", &o.LimitBytes, 1, MaxLogCount)
	intParam("sinceSeconds", &o.SinceSeconds, 1, MaxSinceSeconds)
	boolParam("follow", &o.Follow)
	boolParam("previous", &o.Previous)
	boolParam("timestamps", &o.Timestamps)
	if err != nil {
		return o, err
	}
	if v := q.Get("sinceTime"); v != "" {
		t, perr := time.Parse(time.RFC3339, v)
		if perr != nil {
			return o, errdefs.InvalidInputf("sinceTime=%q is not an RFC 3339 time", v)
		}
		if o.SinceSeconds > 0 {
			return o, errdefs.InvalidInput("sinceSeconds and sinceTime are both set: give one")
		}
		o.SinceTime = t
	}
	return o, nil
}

func servingCert(cfg Config) (tls.Certificate, error) {
	if cfg.CertFile != "" {
		return tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
	}
	if cfg.CertDir == "" {
		return tls.Certificate{}, errors.New("kubeletapi: CertDir is required without CertFile")
	}
	certPath := filepath.Join(cfg.CertDir, "kubelet.crt")
	keyPath := filepath.Join(cfg.CertDir, "kubelet.key")
	if c, err := tls.LoadX509KeyPair(certPath, keyPath); err == nil && certValid(c, cfg.NodeIP) {
		return c, nil
	}
	certPEM, keyPEM, err := selfSigned(cfg.NodeName, cfg.NodeIP)
	if err != nil {
		return tls.Certificate{}, err
	}
	if err := os.MkdirAll(cfg.CertDir, 0o700); err != nil {
		return tls.Certificate{}, err
	}
	if err := os.WriteFile(keyPath, keyPEM, 0o600); err != nil {
		return tls.Certificate{}, err
	}
	if err := os.WriteFile(certPath, certPEM, 0o644); err != nil {
		return tls.Certificate{}, err
	}
	return tls.X509KeyPair(certPEM, keyPEM)
}

func certValid(c tls.Certificate, ip string) bool {
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil || time.Now().Add(24*time.Hour).After(leaf.NotAfter) {
		return false
	}
	return leaf.VerifyHostname(ip) == nil
}

// selfSigned makes a serving certificate for the node, valid for a year, as
// the kubelet does when it has none.
func selfSigned(name, ip string) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name + "@wasmlet"},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{name},
	}
	if parsed := net.ParseIP(ip); parsed != nil {
		tmpl.IPAddresses = []net.IP{parsed}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), nil
}
