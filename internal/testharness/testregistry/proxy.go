package testregistry

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// Proxy is a plain-HTTP reverse proxy on loopback in front of a registry.
// It counts the manifest and blob GETs that reach the registry, and can
// answer in the registry's place to inject faults (an error status, a
// slow or cut-off response, a tampered body). Reach it as an insecure
// registry at Host.
//
//	p := testregistry.NewProxy(t, reg)
//	p.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
//		if testregistry.IsBlobGet(r) { w.WriteHeader(http.StatusNotFound); return true }
//		return false
//	})
type Proxy struct {
	// Host is "127.0.0.1:port".
	Host string

	srv          *http.Server
	l            net.Listener
	rp           *httputil.ReverseProxy
	manifestGets atomic.Int64
	blobGets     atomic.Int64

	mu    sync.Mutex
	fault Fault
}

// Fault may answer a request itself and return true, or return false to
// let the registry answer.
type Fault func(w http.ResponseWriter, r *http.Request) bool

// NewProxy starts a proxy for the test and closes it at cleanup.
func NewProxy(t testing.TB, reg *Registry) *Proxy {
	t.Helper()
	p, err := StartProxy(reg)
	if err != nil {
		t.Fatalf("testregistry: %v", err)
	}
	t.Cleanup(p.Close)
	return p
}

// StartProxy starts a proxy in front of reg. Call Close to stop it.
func StartProxy(reg *Registry) (*Proxy, error) {
	target, err := url.Parse(reg.URL)
	if err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("proxy listen: %w", err)
	}
	p := &Proxy{Host: l.Addr().String(), l: l, rp: httputil.NewSingleHostReverseProxy(target)}
	p.rp.Transport = reg.client.Transport
	if reg.Username != "" {
		// The proxy logs in to the registry itself: its clients see an
		// open registry.
		director := p.rp.Director
		p.rp.Director = func(r *http.Request) {
			director(r)
			r.SetBasicAuth(reg.Username, reg.Password)
		}
	}
	p.srv = &http.Server{Handler: http.HandlerFunc(p.serve)}
	go func() {
		if err := p.srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			panic(err)
		}
	}()
	return p, nil
}

func (p *Proxy) serve(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	f := p.fault
	p.mu.Unlock()
	if f != nil && f(w, r) {
		return
	}
	switch {
	case IsManifestGet(r):
		p.manifestGets.Add(1)
	case IsBlobGet(r):
		p.blobGets.Add(1)
	}
	p.rp.ServeHTTP(w, r)
}

// SetFault installs f (nil removes it).
func (p *Proxy) SetFault(f Fault) {
	p.mu.Lock()
	p.fault = f
	p.mu.Unlock()
}

// ManifestGets is how many manifest GETs reached the registry.
func (p *Proxy) ManifestGets() int64 { return p.manifestGets.Load() }

// BlobGets is how many blob GETs reached the registry.
func (p *Proxy) BlobGets() int64 { return p.blobGets.Load() }

// Close stops the proxy, closing the connections it holds.
func (p *Proxy) Close() { p.srv.Close() }

// IsManifestGet reports whether r is a GET of a manifest.
func IsManifestGet(r *http.Request) bool {
	return r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/manifests/")
}

// IsBlobGet reports whether r is a GET of a blob.
func IsBlobGet(r *http.Request) bool {
	return r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/")
}
