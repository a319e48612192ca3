package agent

import (
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// groupCall matches a call of a kubernetes.Interface group accessor, such
// as client.CoreV1() or cfg.Client.NodeV1().
var groupCall = regexp.MustCompile(`\.([A-Z][A-Za-z]*V[0-9]+(?:(?:alpha|beta)[0-9]+)?)\(\)`)

// TestNodeClientsetCoversUses fails when a node agent package calls a
// group accessor that nodeClientset does not implement (which would panic
// at run time on the nil embedded interface).
func TestNodeClientsetCoversUses(t *testing.T) {
	implemented := map[string]bool{}
	for _, m := range ownMethods {
		implemented[m] = true
	}
	iface := reflect.TypeFor[kubernetes.Interface]()
	root := filepath.Join("..", "..") // services/nodeagent
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return err
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range groupCall.FindAllStringSubmatch(string(src), -1) {
			if _, ok := iface.MethodByName(m[1]); ok && !implemented[m[1]] {
				t.Errorf("%s calls %s(), which nodeClientset does not implement: add the group to clientset.go", path, m[1])
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// ownMethods are the accessors clientset.go defines (a name listed here
// but not defined there is the nil embedded interface's, and
// TestNodeClientsetMakesEveryGroup panics on it).
var ownMethods = []string{"CoreV1", "CoordinationV1", "AuthenticationV1", "AuthorizationV1", "CertificatesV1", "CertificatesV1beta1", "NodeV1"}

func TestNodeClientsetMakesEveryGroup(t *testing.T) {
	c, err := newNodeClientset(&rest.Config{Host: "https://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	v := reflect.ValueOf(c)
	for _, name := range ownMethods {
		out := v.MethodByName(name).Call(nil)[0]
		if out.IsNil() {
			t.Errorf("%s() is nil", name)
		}
	}
}
