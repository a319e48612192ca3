package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/yaml"
)

// runSetup creates the objects of its manifests, the cluster objects the
// stack needs before its first node and pod: RuntimeClasses, the bootstrap
// token's Secret and ClusterRoleBindings. An object already there is left
// as it is. It retries until the API server accepts them or --timeout
// passes.
func runSetup(args []string) error {
	fs := flag.NewFlagSet("setup", flag.ContinueOnError)
	kubeconfig := fs.String("kubeconfig", "/pki/admin.kubeconfig", "admin kubeconfig")
	var manifests list
	fs.Var(&manifests, "manifest", "YAML file of RuntimeClasses, Secrets and ClusterRoleBindings (documents separated by ---; repeatable)")
	timeout := fs.Duration("timeout", 2*time.Minute, "give up after")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var docs []object
	for _, m := range manifests {
		d, err := readManifest(m)
		if err != nil {
			return err
		}
		docs = append(docs, d...)
	}
	c, err := newKubeClient(*kubeconfig)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	for _, o := range docs {
		for {
			err := o.create(ctx, c)
			if err == nil {
				fmt.Println(strings.ToLower(o.Kind), o.Metadata.Name, "present")
				break
			}
			if ctx.Err() != nil {
				return fmt.Errorf("%s %s: %w", o.Kind, o.Metadata.Name, err)
			}
			time.Sleep(time.Second)
		}
	}
	return nil
}

// object is one document of a manifest.
type object struct {
	Kind     string
	Metadata struct{ Name, Namespace string }
	json     []byte
}

// collections are where setup creates each kind it knows.
var collections = map[string]string{
	"RuntimeClass":       "/apis/node.k8s.io/v1/runtimeclasses",
	"ClusterRoleBinding": "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
	"Secret":             "/api/v1/namespaces/%s/secrets",
}

func readManifest(path string) ([]object, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []object
	r := yaml.NewYAMLReader(bufio.NewReader(f))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		} else if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		j, err := yaml.ToJSON(doc)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		var o object
		if err := json.Unmarshal(j, &o); err != nil || o.Metadata.Name == "" {
			continue // an empty document
		}
		if _, ok := collections[o.Kind]; !ok {
			return nil, fmt.Errorf("%s: %s %s: setup creates only RuntimeClasses, Secrets and ClusterRoleBindings", path, o.Kind, o.Metadata.Name)
		}
		o.json = j
		out = append(out, o)
	}
}

func (o object) create(ctx context.Context, c *kubeClient) error {
	path := collections[o.Kind]
	if strings.Contains(path, "%s") {
		ns := o.Metadata.Namespace
		if ns == "" {
			ns = "default"
		}
		path = fmt.Sprintf(path, ns)
	}
	err := c.do(ctx, http.MethodPost, path, o.json, nil)
	var se *httpStatusError
	if errors.As(err, &se) && se.code == http.StatusConflict {
		return nil // made by an earlier up of the same volumes
	}
	return err
}

// list is a repeatable string flag.
type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(s string) error { *l = append(*l, s); return nil }
