package service

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/local"
)

// TestRunRefusesBeforeOpening: a config without its required fields, or
// with metrics beyond loopback, fails before anything is opened.
func TestRunRefusesBeforeOpening(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		cfg  Config
		want string
	}{
		{Config{Cache: local.Config{Dir: dir}}, "required"},
		{Config{Listen: "unix://" + filepath.Join(dir, "r.sock")}, "required"},
		{Config{Listen: "unix://" + filepath.Join(dir, "r.sock"), Cache: local.Config{Dir: dir}, MetricsListen: "0.0.0.0:9464"}, "loopback"},
	} {
		err := Run(context.Background(), c.cfg)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Run(%+v) = %v, want an error containing %q", c.cfg, err, c.want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "r.sock")); err == nil {
		t.Error("a refused config left a socket behind")
	}
}

// TestRunReleasesMetricsPort: when the cache cannot open, the metrics
// port opened before it is released.
func TestRunReleasesMetricsPort(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	notADir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notADir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	err = Run(context.Background(), Config{Listen: "unix://" + filepath.Join(t.TempDir(), "r.sock"), Cache: local.Config{Dir: notADir}, MetricsListen: addr})
	if err == nil {
		t.Fatal("Run with a file as the cache directory succeeded")
	}
	l, err = net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("metrics port still held after a failed start: %v", err)
	}
	l.Close()
}
