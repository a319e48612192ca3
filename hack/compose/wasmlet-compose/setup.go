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
	"time"

	"k8s.io/apimachinery/pkg/util/yaml"
)

// runSetup creates the RuntimeClasses of a manifest: the
// cluster objects the stack needs before its first pod. It retries until
// the API server accepts them or --timeout passes.
func runSetup(args []string) error {
	fs := flag.NewFlagSet("setup", flag.ContinueOnError)
	kubeconfig := fs.String("kubeconfig", "/pki/admin.kubeconfig", "admin kubeconfig")
	manifest := fs.String("manifest", "", "YAML file of RuntimeClasses (node.k8s.io/v1; documents separated by ---)")
	timeout := fs.Duration("timeout", 2*time.Minute, "give up after")
	if err := fs.Parse(args); err != nil {
		return err
	}
	f, err := os.Open(*manifest)
	if err != nil {
		return err
	}
	defer f.Close()
	type meta struct {
		Kind     string
		Metadata struct{ Name string }
	}
	var docs [][]byte
	r := yaml.NewYAMLReader(bufio.NewReader(f))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return fmt.Errorf("%s: %w", *manifest, err)
		}
		j, err := yaml.ToJSON(doc)
		if err != nil {
			return fmt.Errorf("%s: %w", *manifest, err)
		}
		var m meta
		if err := json.Unmarshal(j, &m); err != nil || m.Metadata.Name == "" {
			continue // an empty document
		}
		if m.Kind != "RuntimeClass" {
			return fmt.Errorf("%s: %s %s: only RuntimeClasses are applied", *manifest, m.Kind, m.Metadata.Name)
		}
		docs = append(docs, j)
	}
	c, err := newKubeClient(*kubeconfig)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	for _, doc := range docs {
		var m meta
		_ = json.Unmarshal(doc, &m)
		for {
			err := applyRuntimeClass(ctx, c, m.Metadata.Name, doc)
			if err == nil {
				fmt.Println("runtimeclass", m.Metadata.Name, "present")
				break
			}
			if ctx.Err() != nil {
				return fmt.Errorf("runtimeclass %s: %w", m.Metadata.Name, err)
			}
			time.Sleep(time.Second)
		}
	}
	return nil
}

func applyRuntimeClass(ctx context.Context, c *kubeClient, name string, doc []byte) error {
	err := c.do(ctx, http.MethodPost, "/apis/node.k8s.io/v1/runtimeclasses", doc, nil)
	var se *httpStatusError
	if errors.As(err, &se) && se.code == http.StatusConflict {
		return nil // made by an earlier up of the same volumes
	}
	return err
}
