package localcluster

import (
	"regexp"
	"strings"
	"testing"
	"time"
)

// Without Config.BootstrapTokenAuth kube-apiserver would refuse every
// token: the helper says so instead of writing a useless kubeconfig.
func TestBootstrapKubeconfigNeedsTokenAuth(t *testing.T) {
	_, _, err := (&Cluster{}).BootstrapKubeconfig(t.Context(), time.Hour)
	if err == nil || !strings.Contains(err.Error(), "BootstrapTokenAuth") {
		t.Errorf("BootstrapKubeconfig without token auth = %v", err)
	}
}

// Token ids and secrets are what kube-apiserver's bootstrap authenticator
// accepts: [a-z0-9]{6} and [a-z0-9]{16}.
func TestTokenPart(t *testing.T) {
	re := regexp.MustCompile(`^[a-z0-9]{6}\.[a-z0-9]{16}$`)
	seen := map[string]bool{}
	for range 100 {
		tok := tokenPart(6) + "." + tokenPart(16)
		if !re.MatchString(tok) {
			t.Fatalf("token %q", tok)
		}
		seen[tok] = true
	}
	if len(seen) < 100 {
		t.Errorf("%d distinct tokens in 100", len(seen))
	}
}
