package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestCNIBinDir: the newest build that has every plugin, never a build
// still under way (.tmp) or one missing a plugin; none says to run make cni.
func TestCNIBinDir(t *testing.T) {
	cache := t.TempDir()
	t.Setenv("WASMLET_CACHE", cache)
	if _, err := cniBinDir(); err == nil || !strings.Contains(err.Error(), "make cni") {
		t.Fatalf("no build: err %v, want one saying to run make cni", err)
	}
	build := func(name string, plugins []string, age time.Duration) string {
		dir := filepath.Join(cache, "cni", name, "bin")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, p := range plugins {
			if err := os.WriteFile(filepath.Join(dir, p), nil, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		when := time.Now().Add(-age)
		if err := os.Chtimes(dir, when, when); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	old := build("v1.9.0-aaa", cniPlugins, time.Hour)
	build("v1.10.0-bbb", cniPlugins[:len(cniPlugins)-1], 0) // no firewall
	build("v1.10.0-ccc.tmp", cniPlugins, 0)
	if got, err := cniBinDir(); err != nil || got != old {
		t.Errorf("got %q, %v; want the only complete build %s", got, err, old)
	}
	newer := build("v1.10.0-ddd", cniPlugins, time.Minute)
	if got, err := cniBinDir(); err != nil || got != newer {
		t.Errorf("got %q, %v; want the newest complete build %s", got, err, newer)
	}
}
