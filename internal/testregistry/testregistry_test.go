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
