// Package kubeletauth authenticates and authorises requests to the kubelet
// API the way the kubelet's webhook mode does (--authentication-token-webhook,
// --authorization-mode=Webhook, --client-ca-file):
//
//   - a client certificate that verifies against the client CA (for client
//     authentication) names the user (its CN) and groups (its O);
//   - otherwise a bearer token is checked with a TokenReview
//     (authentication.k8s.io/v1); results are cached for 2 minutes when
//     authenticated and 10 seconds when not;
//   - anything else is anonymous and refused with 401;
//   - an authenticated user is then checked with a SubjectAccessReview
//     (authorization.k8s.io/v1) on the node: verb from the HTTP method,
//     resource nodes, subresource stats, metrics or log for /stats, /metrics
//     and /logs and proxy for every other path, name the node; results are
//     cached for 5 minutes when allowed and 30 seconds when denied. A denial
//     is a 403 that names the user, verb, resource and subresource.
//
// It exists so that the node agent does not link k8s.io/apiserver (and
// through it cel-go, etcd's API and OpenTelemetry), which is what
// virtual-kubelet's nodeutil.WebhookAuth brings in: with virtual-kubelet's
// node/api, 13 MB of the node agent's 78 MB binary and 12 MiB of its idle
// resident memory, much of it touched at start by package init.
//
// It owns the authentication and authorisation of one request and the two
// result caches; it must not serve routes, hold the listener or know about
// pods.
package kubeletauth

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"path"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Cache lifetimes: the kubelet's defaults
// (--authentication-token-webhook-cache-ttl, --authorization-webhook-cache-*).
const (
	AuthenticatedTTL   = 2 * time.Minute
	UnauthenticatedTTL = 10 * time.Second
	AllowedTTL         = 5 * time.Minute
	DeniedTTL          = 30 * time.Second
)

// reviewTimeout bounds one TokenReview or SubjectAccessReview.
const reviewTimeout = 10 * time.Second

// maxCacheEntries bounds each cache; past it, expired entries are dropped,
// and if that is not enough, all of them.
const maxCacheEntries = 4096

// User is an authenticated identity.
type User struct {
	Name   string
	UID    string
	Groups []string
	Extra  map[string][]string
}

// Config configures an Auth; Client and NodeName are required.
type Config struct {
	Client   kubernetes.Interface // for TokenReview and SubjectAccessReview
	NodeName string
	// ClientCAs verifies client certificates; nil: only bearer tokens
	// authenticate.
	ClientCAs *x509.CertPool
	Log       *slog.Logger
	// Now is the clock of the caches; nil is time.Now (tests set it).
	Now func() time.Time
}

// Auth authenticates and authorises kubelet API requests. It is safe for
// concurrent use.
type Auth struct {
	cfg    Config
	tokens cache[tokenResult]
	access cache[bool]
}

type tokenResult struct {
	user User
	ok   bool
}

// New validates cfg and returns an Auth.
func New(cfg Config) (*Auth, error) {
	if cfg.Client == nil || cfg.NodeName == "" {
		return nil, errors.New("kubeletauth: Client and NodeName are required")
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Auth{cfg: cfg, tokens: cache[tokenResult]{now: cfg.Now}, access: cache[bool]{now: cfg.Now}}, nil
}

// Attributes are what a request asks of the node, in SubjectAccessReview
// terms (resource is always nodes, name always the node).
type Attributes struct {
	Verb        string
	Subresource string
}

// RequestAttributes maps a request to the verb and subresource the kubelet
// checks: the verb from the method, the subresource from the path.
func RequestAttributes(r *http.Request) Attributes {
	verb := "get"
	switch r.Method {
	case http.MethodPost:
		verb = "create"
	case http.MethodPut:
		verb = "update"
	case http.MethodPatch:
		verb = "patch"
	case http.MethodDelete:
		verb = "delete"
	}
	sub := "proxy"
	p := path.Clean(r.URL.Path)
	switch {
	case under(p, "/stats"):
		sub = "stats"
	case under(p, "/metrics"):
		sub = "metrics"
	case under(p, "/logs"):
		sub = "log"
	}
	return Attributes{Verb: verb, Subresource: sub}
}

func under(p, prefix string) bool { return p == prefix || strings.HasPrefix(p, prefix+"/") }

// Wrap returns h behind authentication (401 when it fails or the request is
// anonymous) and authorisation (403 when denied).
func (a *Auth) Wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, ok, err := a.Authenticate(r)
		if err != nil {
			a.cfg.Log.Warn("kubelet API authentication failed", "path", r.URL.Path, "err", err)
			http.Error(w, "Unauthorized", http.StatusUnauthorized)
			return
		}
		if !ok {
			http.Error(w, "Unauthorized", http.StatusUnauthorized)
			return
		}
		attrs := RequestAttributes(r)
		allowed, err := a.Authorize(r.Context(), user, attrs)
		if err != nil {
			a.cfg.Log.Warn("kubelet API authorization failed", "user", user.Name, "verb", attrs.Verb,
				"subresource", attrs.Subresource, "err", err)
			http.Error(w, fmt.Sprintf("Authorization error (user=%s, verb=%s, resource=nodes, subresource=%s)",
				user.Name, attrs.Verb, attrs.Subresource), http.StatusInternalServerError)
			return
		}
		if !allowed {
			http.Error(w, fmt.Sprintf("Forbidden (user=%s, verb=%s, resource=nodes, subresource=%s)",
				user.Name, attrs.Verb, attrs.Subresource), http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// Authenticate returns the request's user: from its client certificate
// when one is presented and verifies, else from its bearer token. ok is
// false for an anonymous request, a token the API server does not accept
// and a certificate that does not verify; err is for a review that could
// not be made.
func (a *Auth) Authenticate(r *http.Request) (user User, ok bool, err error) {
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 && a.cfg.ClientCAs != nil {
		if u, ok := a.certUser(r.TLS.PeerCertificates); ok {
			return u, true, nil
		}
		// A certificate that does not verify does not authenticate; a
		// bearer token sent with it still may (the kubelet's union of
		// authenticators does the same).
	}
	token, found := bearer(r)
	if !found {
		return User{}, false, nil
	}
	return a.tokenUser(r.Context(), token)
}

func (a *Auth) certUser(chain []*x509.Certificate) (User, bool) {
	opts := x509.VerifyOptions{
		Roots:         a.cfg.ClientCAs,
		Intermediates: x509.NewCertPool(),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	for _, c := range chain[1:] {
		opts.Intermediates.AddCert(c)
	}
	if _, err := chain[0].Verify(opts); err != nil {
		a.cfg.Log.Debug("kubelet API client certificate refused", "subject", chain[0].Subject.String(), "err", err)
		return User{}, false
	}
	subj := chain[0].Subject
	if subj.CommonName == "" {
		return User{}, false
	}
	return User{Name: subj.CommonName, Groups: slices.Clone(subj.Organization)}, true
}

func bearer(r *http.Request) (string, bool) {
	h := strings.TrimSpace(r.Header.Get("Authorization"))
	scheme, token, found := strings.Cut(h, " ")
	if !found || !strings.EqualFold(scheme, "bearer") {
		return "", false
	}
	token = strings.TrimSpace(token)
	return token, token != ""
}

func (a *Auth) tokenUser(ctx context.Context, token string) (User, bool, error) {
	sum := sha256.Sum256([]byte(token))
	key := string(sum[:])
	if res, hit := a.tokens.get(key); hit {
		return res.user, res.ok, nil
	}
	ctx, cancel := context.WithTimeout(ctx, reviewTimeout)
	defer cancel()
	tr, err := a.cfg.Client.AuthenticationV1().TokenReviews().Create(ctx,
		&authnv1.TokenReview{Spec: authnv1.TokenReviewSpec{Token: token}}, metav1.CreateOptions{})
	if err != nil {
		// Not cached: the next request asks again.
		return User{}, false, fmt.Errorf("TokenReview: %w", err)
	}
	res := tokenResult{ok: tr.Status.Authenticated}
	ttl := UnauthenticatedTTL
	if res.ok {
		ttl = AuthenticatedTTL
		u := tr.Status.User
		res.user = User{Name: u.Username, UID: u.UID, Groups: u.Groups}
		if len(u.Extra) > 0 {
			res.user.Extra = make(map[string][]string, len(u.Extra))
			for k, v := range u.Extra {
				res.user.Extra[k] = v
			}
		}
	}
	a.tokens.put(key, res, ttl)
	return res.user, res.ok, nil
}

// Authorize asks the API server (or the cache) whether user may do attrs
// on this node.
func (a *Auth) Authorize(ctx context.Context, user User, attrs Attributes) (bool, error) {
	key := accessKey(user, attrs)
	if allowed, hit := a.access.get(key); hit {
		return allowed, nil
	}
	sar := &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
		User: user.Name, UID: user.UID, Groups: user.Groups,
		ResourceAttributes: &authzv1.ResourceAttributes{
			Verb: attrs.Verb, Version: "v1", Resource: "nodes", Subresource: attrs.Subresource, Name: a.cfg.NodeName,
		},
	}}
	if len(user.Extra) > 0 {
		sar.Spec.Extra = make(map[string]authzv1.ExtraValue, len(user.Extra))
		for k, v := range user.Extra {
			sar.Spec.Extra[k] = v
		}
	}
	ctx, cancel := context.WithTimeout(ctx, reviewTimeout)
	defer cancel()
	res, err := a.cfg.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, sar, metav1.CreateOptions{})
	if err != nil {
		return false, fmt.Errorf("SubjectAccessReview: %w", err)
	}
	ttl := DeniedTTL
	if res.Status.Allowed {
		ttl = AllowedTTL
	}
	a.access.put(key, res.Status.Allowed, ttl)
	return res.Status.Allowed, nil
}

// accessKey is the identity and attributes a SubjectAccessReview is made
// of, as one string.
func accessKey(u User, attrs Attributes) string {
	extraKeys := make([]string, 0, len(u.Extra))
	for k := range u.Extra {
		extraKeys = append(extraKeys, k)
	}
	sort.Strings(extraKeys)
	extra := make([][]string, 0, len(extraKeys))
	for _, k := range extraKeys {
		extra = append(extra, append([]string{k}, u.Extra[k]...))
	}
	b, _ := json.Marshal([]any{u.Name, u.UID, u.Groups, extra, attrs.Verb, attrs.Subresource})
	return string(b)
}

// cache is a map of results that expire.
type cache[V any] struct {
	now func() time.Time
	mu  sync.Mutex
	m   map[string]entry[V]
}

type entry[V any] struct {
	v       V
	expires time.Time
}

func (c *cache[V]) get(key string) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[key]
	if !ok || !c.now().Before(e.expires) {
		var zero V
		return zero, false
	}
	return e.v, true
}

func (c *cache[V]) put(key string, v V, ttl time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	if c.m == nil {
		c.m = make(map[string]entry[V])
	}
	if len(c.m) >= maxCacheEntries {
		for k, e := range c.m {
			if !now.Before(e.expires) {
				delete(c.m, k)
			}
		}
		if len(c.m) >= maxCacheEntries {
			clear(c.m)
		}
	}
	c.m[key] = entry[V]{v: v, expires: now.Add(ttl)}
}
