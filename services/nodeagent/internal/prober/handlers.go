package prober

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// maxBody is how much of an httpGet response the kubelet reads; the rest is
// dropped without failing the probe.
const maxBody = 10 * 1024

// maxRedirects is where the kubelet, like net/http, stops following.
const maxRedirects = 10

// outcome is one run of a handler: the kubelet's Success, Warning (a success
// with something to say) or Failure, and the text its event carries.
type outcome struct {
	ok      bool
	warning bool
	output  string
}

// handler runs one probe once, within timeout; ctx ends when probing stops.
// Each handler applies the timeout its own way so that its failure reads as
// the kubelet's does (the HTTP client's "Client.Timeout exceeded").
type handler interface {
	probe(ctx context.Context, timeout time.Duration) outcome
	close()
}

// newHandler builds the handler a probe names, resolving its port and host
// now so that a probe that can never run is refused at admission.
func newHandler(p *v1.Probe, c *v1.Container, podIP, userAgent string, timeout time.Duration) (handler, error) {
	n := 0
	for _, set := range []bool{p.Exec != nil, p.HTTPGet != nil, p.TCPSocket != nil, p.GRPC != nil} {
		if set {
			n++
		}
	}
	switch {
	case p.Exec != nil:
		return nil, ErrExecUnsupported
	case n == 0:
		return nil, fmt.Errorf("%w: no handler: set one of httpGet, tcpSocket or grpc", ErrInvalidProbe)
	case n > 1:
		return nil, fmt.Errorf("%w: more than one handler: set exactly one of httpGet, tcpSocket or grpc", ErrInvalidProbe)
	case p.HTTPGet != nil:
		return newHTTPHandler(p.HTTPGet, c, podIP, userAgent, timeout)
	case p.TCPSocket != nil:
		host := p.TCPSocket.Host
		if host == "" {
			host = podIP
		}
		if host == "" {
			return nil, fmt.Errorf("%w: tcpSocket: the pod has no IP and the probe names no host", ErrInvalidProbe)
		}
		port, err := resolvePort(p.TCPSocket.Port, c)
		if err != nil {
			return nil, fmt.Errorf("%w: tcpSocket: %w", ErrInvalidProbe, err)
		}
		return tcpHandler{addr: net.JoinHostPort(host, strconv.Itoa(port))}, nil
	default:
		if podIP == "" {
			return nil, fmt.Errorf("%w: grpc: the pod has no IP", ErrInvalidProbe)
		}
		if p.GRPC.Port <= 0 || p.GRPC.Port > 65535 {
			return nil, fmt.Errorf("%w: grpc: invalid port number: %d", ErrInvalidProbe, p.GRPC.Port)
		}
		h := grpcHandler{addr: net.JoinHostPort(podIP, strconv.Itoa(int(p.GRPC.Port))), userAgent: userAgent}
		if p.GRPC.Service != nil {
			h.service = *p.GRPC.Service
		}
		return h, nil
	}
}

// resolvePort turns a probe's port into a number the way the kubelet does: a
// name is looked up among the container's ports, and a name that is not
// there is tried as a number.
func resolvePort(p intstr.IntOrString, c *v1.Container) (int, error) {
	port := p.IntValue()
	if p.Type == intstr.String {
		port = 0
		for _, cp := range c.Ports {
			if cp.Name == p.StrVal {
				port = int(cp.ContainerPort)
				break
			}
		}
		if port == 0 {
			n, err := strconv.Atoi(p.StrVal)
			if err != nil {
				return 0, fmt.Errorf("port %q not found among container %q's ports: name one of its ports or give a number", p.StrVal, c.Name)
			}
			port = n
		}
	}
	if port <= 0 || port > 65535 {
		return 0, fmt.Errorf("invalid port number: %d", port)
	}
	return port, nil
}

// dialer is the kubelet's probe dialer: SO_LINGER with a zero-ish timeout so
// that probes every few seconds do not pile up sockets in TIME_WAIT.
func dialer() *net.Dialer {
	return &net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptLinger(int(fd), syscall.SOL_SOCKET, syscall.SO_LINGER, &syscall.Linger{Onoff: 1, Linger: 1})
		})
		return errors.Join(err, serr)
	}}
}

type httpHandler struct {
	url    string
	host   string // the Host header the probe asked for, if any
	header http.Header
	client *http.Client
}

func newHTTPHandler(a *v1.HTTPGetAction, c *v1.Container, podIP, userAgent string, timeout time.Duration) (*httpHandler, error) {
	scheme := strings.ToLower(string(a.Scheme))
	if scheme == "" {
		scheme = "http"
	}
	if scheme != "http" && scheme != "https" {
		return nil, fmt.Errorf("%w: httpGet: scheme %q: use HTTP or HTTPS", ErrInvalidProbe, a.Scheme)
	}
	host := a.Host
	if host == "" {
		host = podIP
	}
	if host == "" {
		return nil, fmt.Errorf("%w: httpGet: the pod has no IP and the probe names no host", ErrInvalidProbe)
	}
	port, err := resolvePort(a.Port, c)
	if err != nil {
		return nil, fmt.Errorf("%w: httpGet: %w", ErrInvalidProbe, err)
	}
	u, err := url.Parse(a.Path)
	if err != nil {
		u = &url.URL{Path: a.Path}
	}
	u.Scheme, u.Host = scheme, net.JoinHostPort(host, strconv.Itoa(port))

	header := http.Header{}
	for _, h := range a.HTTPHeaders {
		header.Add(h.Name, h.Value)
	}
	if _, ok := header["User-Agent"]; !ok {
		header.Set("User-Agent", userAgent)
	}
	if _, ok := header["Accept"]; !ok {
		header.Set("Accept", "*/*")
	} else if header.Get("Accept") == "" {
		header.Del("Accept") // set empty on purpose: send none
	}
	transport := &http.Transport{
		// As the kubelet: a pod's certificate is not checked; the probe asks
		// whether it serves, not whom it serves as.
		TLSClientConfig:    &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // see above
		DisableKeepAlives:  true,
		DisableCompression: true,
		Proxy:              nil,
		DialContext:        dialer().DialContext,
	}
	return &httpHandler{
		url:    u.String(),
		host:   header.Get("Host"),
		header: header,
		client: &http.Client{Timeout: timeout, Transport: transport, CheckRedirect: sameHostRedirects},
	}, nil
}

// sameHostRedirects follows redirects on the probed host only; a redirect
// elsewhere ends the probe with the redirect itself, which counts as a success
// with a warning, as the kubelet's does.
func sameHostRedirects(req *http.Request, via []*http.Request) error {
	if req.URL.Hostname() != via[0].URL.Hostname() {
		return http.ErrUseLastResponse
	}
	if len(via) >= maxRedirects {
		return fmt.Errorf("stopped after %d redirects", maxRedirects)
	}
	return nil
}

func (h *httpHandler) probe(ctx context.Context, _ time.Duration) outcome {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.url, nil)
	if err != nil {
		return outcome{output: err.Error()}
	}
	req.Header = h.header.Clone()
	req.Host = h.host
	res, err := h.client.Do(req)
	if err != nil {
		return outcome{output: err.Error()}
	}
	defer res.Body.Close()
	b, err := io.ReadAll(io.LimitReader(res.Body, maxBody))
	if err != nil {
		return outcome{output: err.Error()}
	}
	body := string(b)
	if res.StatusCode >= http.StatusOK && res.StatusCode < http.StatusBadRequest {
		if res.StatusCode >= http.StatusMultipleChoices {
			return outcome{ok: true, warning: true, output: fmt.Sprintf("Probe terminated redirects, Response body: %v", body)}
		}
		return outcome{ok: true, output: body}
	}
	return outcome{output: fmt.Sprintf("HTTP probe failed with statuscode: %d", res.StatusCode)}
}

func (h *httpHandler) close() { h.client.CloseIdleConnections() }

type tcpHandler struct{ addr string }

func (h tcpHandler) probe(ctx context.Context, timeout time.Duration) outcome {
	d := dialer()
	d.Timeout = timeout
	conn, err := d.DialContext(ctx, "tcp", h.addr)
	if err != nil {
		return outcome{output: err.Error()}
	}
	_ = conn.Close()
	return outcome{ok: true}
}

func (tcpHandler) close() {}

type grpcHandler struct {
	addr, service, userAgent string
}

// probe dials anew each time, as the kubelet does: a long-lived connection's
// reconnect back-off would turn a server that came back into failed probes.
func (h grpcHandler) probe(ctx context.Context, timeout time.Duration) outcome {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := grpc.NewClient("passthrough:///"+h.addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithUserAgent(h.userAgent),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return dialer().DialContext(ctx, "tcp", addr)
		}))
	if err != nil {
		return outcome{output: fmt.Sprintf("error: failed to connect service at %q: %v", h.addr, err)}
	}
	defer conn.Close()
	res, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: h.service})
	if err != nil {
		switch status.Code(err) {
		case codes.Unimplemented:
			return outcome{output: fmt.Sprintf("error: this server does not implement the grpc health protocol (grpc.health.v1.Health): %s", status.Convert(err).Message())}
		case codes.DeadlineExceeded:
			return outcome{output: fmt.Sprintf("timeout: health rpc did not complete within %v", timeout)}
		case codes.Unavailable:
			return outcome{output: fmt.Sprintf("error: failed to connect service at %q: %v", h.addr, err)}
		}
		return outcome{output: fmt.Sprintf("error: health rpc probe failed: %v", err)}
	}
	if res.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		return outcome{output: fmt.Sprintf("service unhealthy (responded with %q)", res.GetStatus().String())}
	}
	return outcome{ok: true, output: "service healthy"}
}

func (grpcHandler) close() {}
