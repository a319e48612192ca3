package kubeletauth

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/wasmlet/wasmlet/internal/testharness/localcluster"
)

func TestRequestAttributes(t *testing.T) {
	for _, c := range []struct{ method, path, verb, sub string }{
		{"GET", "/stats/summary", "get", "stats"},
		{"GET", "/stats", "get", "stats"},
		{"GET", "/statsx", "get", "proxy"},
		{"GET", "/metrics/resource", "get", "metrics"},
		{"GET", "/metrics", "get", "metrics"},
		{"GET", "/logs/", "get", "log"},
		{"GET", "/containerLogs/ns/p/c", "get", "proxy"},
		{"GET", "/pods", "get", "proxy"},
		{"HEAD", "/healthz", "get", "proxy"},
		{"POST", "/exec/ns/p/c", "create", "proxy"},
		{"PUT", "/x", "update", "proxy"},
		{"PATCH", "/x", "patch", "proxy"},
		{"DELETE", "/x", "delete", "proxy"},
		{"GET", "/pods/../stats/summary", "get", "stats"},
	} {
		r := httptest.NewRequest(c.method, "https://node"+c.path, nil)
		got := RequestAttributes(r)
		if got.Verb != c.verb || got.Subresource != c.sub {
			t.Errorf("%s %s = %+v, want verb %s subresource %s", c.method, c.path, got, c.verb, c.sub)
		}
	}
}

func TestCacheExpires(t *testing.T) {
	now := time.Unix(1000, 0)
	c := cache[bool]{now: func() time.Time { return now }}
	c.put("k", true, time.Minute)
	if v, ok := c.get("k"); !ok || !v {
		t.Fatalf("get = %v %v, want true true", v, ok)
	}
	now = now.Add(time.Minute)
	if _, ok := c.get("k"); ok {
		t.Fatal("entry still there at its expiry")
	}
	for i := range maxCacheEntries + 10 {
		c.put(fmt.Sprint(i), true, time.Hour)
	}
	if n := len(c.m); n > maxCacheEntries {
		t.Fatalf("cache holds %d entries, bound is %d", n, maxCacheEntries)
	}
}

// countingRT counts the requests that reach the API server, by path.
type countingRT struct {
	rt http.RoundTripper
	mu sync.Mutex
	n  map[string]int
}

func (c *countingRT) RoundTrip(r *http.Request) (*http.Response, error) {
	c.mu.Lock()
	c.n[r.URL.Path]++
	c.mu.Unlock()
	return c.rt.RoundTrip(r)
}

func (c *countingRT) count(suffix string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	total := 0
	for p, n := range c.n {
		if strings.HasSuffix(p, suffix) {
			total += n
		}
	}
	return total
}

// TestAgainstAPIServer runs the chain against a real kube-apiserver: client
// certificates of its CA, service account tokens through TokenReview, RBAC
// through SubjectAccessReview, and the caches in front of both.
func TestAgainstAPIServer(t *testing.T) {
	c := localcluster.StartForTest(t)
	ctx := t.Context()
	admin, err := c.Clientset()
	if err != nil {
		t.Fatal(err)
	}
	const node = "authn-node"
	// A service account allowed nodes/stats (get) on this node, and one
	// allowed nothing.
	mustCreate(t, func() error {
		_, err := admin.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
			ObjectMeta: metav1.ObjectMeta{Name: "kubeletauth-stats"},
			Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"nodes/stats"},
				ResourceNames: []string{node}, Verbs: []string{"get"}}},
		}, metav1.CreateOptions{})
		return err
	})
	mustCreate(t, func() error {
		_, err := admin.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: "kubeletauth-stats"},
			RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "kubeletauth-stats"},
			Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "reader", Namespace: "default"}},
		}, metav1.CreateOptions{})
		return err
	})
	readerToken := saToken(t, admin, "reader")
	otherToken := saToken(t, admin, "other")

	cfg := c.RESTConfig()
	counter := &countingRT{n: map[string]int{}}
	cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper { counter.rt = rt; return counter }
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(c.KubeletClientCAPath())
	if err != nil {
		t.Fatal(err)
	}
	cas := x509.NewCertPool()
	cas.AppendCertsFromPEM(caPEM)
	auth, err := New(Config{Client: client, NodeName: node, ClientCAs: cas})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(auth.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "served")
	})))
	srv.TLS = &tls.Config{ClientAuth: tls.RequestClientCert}
	srv.StartTLS()
	defer srv.Close()

	get := func(t *testing.T, hc *http.Client, method, path, token string) (int, string) {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, method, srv.URL+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, strings.TrimSpace(string(b))
	}
	plain := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}

	t.Run("anonymous", func(t *testing.T) {
		for _, p := range []string{"/healthz", "/pods", "/stats/summary"} {
			if code, body := get(t, plain, "GET", p, ""); code != http.StatusUnauthorized {
				t.Errorf("anonymous GET %s = %d %q, want 401", p, code, body)
			}
		}
	})
	t.Run("bad token", func(t *testing.T) {
		before := counter.count("/tokenreviews")
		for range 3 {
			if code, body := get(t, plain, "GET", "/stats/summary", "not-a-token"); code != http.StatusUnauthorized {
				t.Errorf("bad token = %d %q, want 401", code, body)
			}
		}
		if n := counter.count("/tokenreviews") - before; n != 1 {
			t.Errorf("%d TokenReviews for one bad token asked 3 times, want 1 (cached)", n)
		}
	})
	t.Run("token allowed", func(t *testing.T) {
		before := counter.count("/subjectaccessreviews")
		for range 3 {
			if code, body := get(t, plain, "GET", "/stats/summary", readerToken); code != http.StatusOK || body != "served" {
				t.Errorf("reader GET /stats/summary = %d %q, want 200 served", code, body)
			}
		}
		if n := counter.count("/subjectaccessreviews") - before; n != 1 {
			t.Errorf("%d SubjectAccessReviews for one allowed request made 3 times, want 1 (cached)", n)
		}
	})
	t.Run("token denied", func(t *testing.T) {
		code, body := get(t, plain, "GET", "/pods", readerToken)
		want := "Forbidden (user=system:serviceaccount:default:reader, verb=get, resource=nodes, subresource=proxy)"
		if code != http.StatusForbidden || body != want {
			t.Errorf("reader GET /pods = %d %q, want 403 %q", code, body, want)
		}
		if code, body := get(t, plain, "POST", "/stats/summary", readerToken); code != http.StatusForbidden || !strings.Contains(body, "verb=create") {
			t.Errorf("reader POST /stats/summary = %d %q, want 403 naming verb=create", code, body)
		}
		if code, body := get(t, plain, "GET", "/stats/summary", otherToken); code != http.StatusForbidden || !strings.Contains(body, "user=system:serviceaccount:default:other") {
			t.Errorf("other GET /stats/summary = %d %q, want 403 naming the user", code, body)
		}
	})
	t.Run("client certificate", func(t *testing.T) {
		// The admin certificate (O=system:masters) of the cluster CA.
		p := c.RESTConfig().TLSClientConfig
		cert, err := tls.LoadX509KeyPair(p.CertFile, p.KeyFile)
		if err != nil {
			t.Fatal(err)
		}
		hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{cert}}}}
		if code, body := get(t, hc, "GET", "/pods", ""); code != http.StatusOK || body != "served" {
			t.Errorf("admin certificate GET /pods = %d %q, want 200", code, body)
		}
		// A certificate of another CA (the test server's own) does not
		// authenticate.
		self := srv.TLS.Certificates[0]
		hc2 := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{self}}}}
		if code, body := get(t, hc2, "GET", "/pods", ""); code != http.StatusUnauthorized {
			t.Errorf("foreign certificate GET /pods = %d %q, want 401", code, body)
		}
	})
}

func mustCreate(t *testing.T, f func() error) {
	t.Helper()
	if err := f(); err != nil {
		t.Fatal(err)
	}
}

// saToken makes a service account and a token for it.
func saToken(t *testing.T, cs kubernetes.Interface, name string) string {
	t.Helper()
	ctx := context.Background()
	mustCreate(t, func() error {
		_, err := cs.CoreV1().ServiceAccounts("default").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
		return err
	})
	var tr *authnv1.TokenRequest
	mustCreate(t, func() (err error) {
		tr, err = cs.CoreV1().ServiceAccounts("default").CreateToken(ctx, name, &authnv1.TokenRequest{}, metav1.CreateOptions{})
		return err
	})
	return tr.Status.Token
}
