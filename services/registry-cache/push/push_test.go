package push_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/wasmlet/wasmlet/internal/testharness/testregistry"
	"github.com/wasmlet/wasmlet/services/registry-cache/push"
)

var module = []byte("\x00asm\x01\x00\x00\x00")

func TestPushIsDeterministic(t *testing.T) {
	reg := testregistry.New(t, testregistry.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	first, err := push.Push(ctx, push.Options{Bytes: module, Reference: reg.Host + "/det:v1", PlainHTTP: true})
	if err != nil {
		t.Fatal(err)
	}
	second, err := push.Push(ctx, push.Options{Bytes: module, Reference: reg.Host + "/det:v2", PlainHTTP: true})
	if err != nil {
		t.Fatal(err)
	}
	if first[strings.Index(first, "@"):] != second[strings.Index(second, "@"):] {
		t.Fatalf("same module, different manifests: %s, %s", first, second)
	}
	if !strings.HasPrefix(first, reg.Host+"/det@sha256:") {
		t.Fatalf("got %q, want host/repo@sha256:...", first)
	}

	body, err := reg.Get(ctx, "/v2/det/manifests/v1")
	if err != nil {
		t.Fatal(err)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatal(err)
	}
	if m.MediaType != ocispec.MediaTypeImageManifest || m.ArtifactType != push.MediaTypeConfig ||
		m.Config.MediaType != push.MediaTypeConfig || len(m.Layers) != 1 || m.Layers[0].MediaType != push.MediaTypeLayer {
		t.Fatalf("manifest not in the CNCF Wasm layout: %s", body)
	}
	cfg, err := reg.Get(ctx, "/v2/det/blobs/"+m.Config.Digest.String())
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(cfg), "created") || !strings.Contains(string(cfg), `"os":"wasip1"`) {
		t.Fatalf("config %s: want wasip1 and no timestamp", cfg)
	}
}

func TestPushAuth(t *testing.T) {
	reg := testregistry.New(t, testregistry.Options{Auth: true})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	opts := push.Options{Bytes: module, Reference: reg.Host + "/auth:v1", CAFile: reg.CAFile,
		Credentials: push.Credentials{Username: reg.Username, Password: "wrong"}}
	if _, err := push.Push(ctx, opts); err == nil {
		t.Fatal("push with a wrong password succeeded")
	}
	opts.Credentials.Password = reg.Password
	if _, err := push.Push(ctx, opts); err != nil {
		t.Fatalf("push with good credentials: %v", err)
	}
	opts.Reference = reg.Host + "/auth@sha256:0000000000000000000000000000000000000000000000000000000000000000"
	if _, err := push.Push(ctx, opts); err == nil {
		t.Fatal("push to a digest reference succeeded")
	}
}
