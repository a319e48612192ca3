// Package wasmbuild builds the test modules of testdata/wasm (Go sources,
// GOOS=wasip1 GOARCH=wasm) for tests. It owns nothing but a per-process
// cache of built modules; it must not be imported by non-test code.
//
// The cache is package state on purpose: a test binary builds each module
// once, whichever tests ask for it (a Go-built module takes seconds to link
// on a loaded machine).
//
// Usage:
//
//	path := wasmbuild.Build(t, "hello") // testdata/wasm/hello → .wasm file
//	wasm := wasmbuild.Wat(t, `(module (func (export "_start")))`)
package wasmbuild

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

type entry struct {
	once sync.Once
	path string
	err  error
}

var (
	mu      sync.Mutex
	entries = map[string]*entry{}
	dirOnce sync.Once
	dir     string
	dirErr  error
)

// Build returns the path of testdata/wasm/<name> built for wasip1/wasm. It
// builds once per test binary; the file must not be modified or removed.
func Build(t testing.TB, name string) string {
	t.Helper()
	mu.Lock()
	e, ok := entries[name]
	if !ok {
		e = &entry{}
		entries[name] = e
	}
	mu.Unlock()
	e.once.Do(func() { e.path, e.err = build(name) })
	if e.err != nil {
		t.Fatalf("build test module %s: %v", name, e.err)
	}
	return e.path
}

// Wat assembles WebAssembly text with wat2wasm (Debian package wabt) into
// a file in t.TempDir() and returns its path.
func Wat(t testing.TB, src string) string {
	t.Helper()
	d := t.TempDir()
	in := filepath.Join(d, "m.wat")
	out := filepath.Join(d, "m.wasm")
	if err := os.WriteFile(in, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("wat2wasm", "-o", out, in)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("wat2wasm: %v: %s (install Debian package wabt)", err, b)
	}
	return out
}

func build(name string) (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	dirOnce.Do(func() { dir, dirErr = os.MkdirTemp("", "wasmbuild-") })
	if dirErr != nil {
		return "", dirErr
	}
	out := filepath.Join(dir, name+".wasm")
	cmd := exec.Command("go", "build", "-o", out, "./testdata/wasm/"+name)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm", "CGO_ENABLED=0")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go build ./testdata/wasm/%s: %w: %s", name, err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// moduleRoot finds the directory of the go.mod of the module under test.
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err == nil {
		if p := strings.TrimSpace(string(out)); p != "" && p != os.DevNull {
			return filepath.Dir(p), nil
		}
	}
	d, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		parent := filepath.Dir(d)
		if parent == d {
			return "", errors.New("no go.mod above the working directory")
		}
		d = parent
	}
}
