package testregistry

import (
	"context"
	"net/http"
	"os"
	"testing"
)

func TestPlainAndAuth(t *testing.T) {
	ctx := context.Background()
	plain := New(t, Options{})
	if _, err := plain.PushWasmToOCI(ctx, "m", "v1", []byte("\x00asm\x01\x00\x00\x00")); err != nil {
		t.Fatalf("push to plain registry: %v", err)
	}

	reg := New(t, Options{Auth: true})
	if reg.CAFile == "" || reg.Username == "" || reg.Password == "" {
		t.Fatalf("auth registry lacks CA or credentials: %+v", reg)
	}
	if _, err := os.Stat(reg.CAFile); err != nil {
		t.Fatal(err)
	}
	resp, err := reg.HTTPClient().Get(reg.URL + "/v2/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("GET /v2/ without credentials: %s, want 401", resp.Status)
	}
	m, err := reg.PushContainerImage(ctx, "c", "v1")
	if err != nil {
		t.Fatalf("push with credentials: %v", err)
	}
	if _, err := os.Stat(reg.BlobPath(m.Digest)); err != nil {
		t.Fatalf("manifest blob not where BlobPath says: %v", err)
	}
	reg.Stop()
	if _, err := reg.HTTPClient().Get(reg.URL + "/v2/"); err == nil {
		t.Fatal("registry still answers after Stop")
	}
}

// TestProxy: the proxy logs in to an auth registry for its clients,
// counts manifest and blob GETs, and lets a fault answer instead.
func TestProxy(t *testing.T) {
	ctx := context.Background()
	reg := New(t, Options{Auth: true})
	module := []byte("\x00asm\x01\x00\x00\x00")
	if _, err := reg.PushWasmToOCI(ctx, "m", "v1", module); err != nil {
		t.Fatal(err)
	}
	p := NewProxy(t, reg)
	get := func(path string) int {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, "http://"+p.Host+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		// The registry serves an OCI manifest only to clients that accept it.
		req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := get("/v2/m/manifests/v1"); code != http.StatusOK {
		t.Fatalf("manifest through the proxy: %d, want 200", code)
	}
	if code := get("/v2/m/blobs/" + Digest(module)); code != http.StatusOK {
		t.Fatalf("blob through the proxy: %d, want 200", code)
	}
	p.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
		if IsBlobGet(r) {
			w.WriteHeader(http.StatusTeapot)
			return true
		}
		return false
	})
	if code := get("/v2/m/blobs/" + Digest(module)); code != http.StatusTeapot {
		t.Fatalf("blob with a fault: %d, want 418", code)
	}
	if p.ManifestGets() != 1 || p.BlobGets() != 1 {
		t.Fatalf("counted %d manifest and %d blob GETs, want 1 and 1 (a fault's answer is not counted)", p.ManifestGets(), p.BlobGets())
	}
}
