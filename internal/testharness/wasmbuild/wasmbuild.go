// Package wasmbuild builds the test modules of testdata/wasm (Go sources,
// GOOS=wasip1 GOARCH=wasm) for tests. It owns nothing but a per-process
// cache of built modules; it must not be imported by the services' code
// (tests and the benchmark suite only).
//
// The cache is package state on purpose: a test binary builds each module
// once, whichever tests ask for it (a Go-built module takes seconds to link
// on a loaded machine). Built modules are kept under the user cache dir
// ($XDG_CACHE_HOME/wasmlet-wasmbuild), keyed by a hash of the module's
// sources and the Go version, so that later test runs reuse them and
// nothing accumulates in the temp dir.
//
// Usage:
//
//	path := wasmbuild.Build(t, "hello") // testdata/wasm/hello → .wasm file
//	wasm := wasmbuild.Wat(t, `(module (func (export "_start")))`)
package wasmbuild

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
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
)

// Build returns the path of testdata/wasm/<name> built for wasip1/wasm. It
// builds once per test binary; the file must not be modified or removed.
func Build(t testing.TB, name string) string {
	t.Helper()
	return BuildDir(t, "testdata/wasm/"+name)
}

// BuildDir is Build for the main package in dir, relative to the module's
// root ("examples/httpserver").
func BuildDir(t testing.TB, dir string) string {
	t.Helper()
	mu.Lock()
	e, ok := entries[dir]
	if !ok {
		e = &entry{}
		entries[dir] = e
	}
	mu.Unlock()
	e.once.Do(func() { e.path, e.err = build(dir) })
	if e.err != nil {
		t.Fatalf("build test module %s: %v", dir, e.err)
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

// WatFile assembles testdata/wasm/<name>/<name>.wat (see Wat).
func WatFile(t testing.TB, name string) string {
	t.Helper()
	return WatAt(t, filepath.Join("testdata", "wasm", name, name+".wat"))
}

// WatAt assembles the .wat file at rel, relative to the module's root
// ("examples/wagi-hello/hello.wat"; see Wat).
func WatAt(t testing.TB, rel string) string {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile(filepath.Join(root, filepath.FromSlash(rel)))
	if err != nil {
		t.Fatal(err)
	}
	return Wat(t, string(src))
}

func build(dir string) (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	name := filepath.Base(dir)
	src := filepath.Join(root, filepath.FromSlash(dir))
	key, err := sourceKey(src)
	if err != nil {
		return "", fmt.Errorf("test module %s: %w", dir, err)
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	outDir := filepath.Join(cache, "wasmlet-wasmbuild", key)
	out := filepath.Join(outDir, name+".wasm")
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return "", err
	}
	tmp := out + fmt.Sprintf(".tmp-%d", os.Getpid())
	cmd := exec.Command("go", "build", "-o", tmp, "./"+dir)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm", "CGO_ENABLED=0")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("go build ./%s: %w: %s", dir, err, strings.TrimSpace(stderr.String()))
	}
	if err := os.Rename(tmp, out); err != nil {
		return "", err
	}
	return out, nil
}

// sourceKey hashes the module's sources with the Go version that builds it.
func sourceKey(dir string) (string, error) {
	h := sha256.New()
	fmt.Fprintln(h, runtime.Version())
	ents, err := os.ReadDir(dir)
	if err != nil {
		return "", err
	}
	for _, e := range ents {
		if e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s %d\n", e.Name(), len(b))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
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

// WithCustomSection appends a custom section (id 0) named name to a wasm
// module: the module runs as before, and its bytes, so its digest,
// differ (a module new to a node and its caches).
func WithCustomSection(wasm []byte, name string, payload []byte) []byte {
	body := binary.AppendUvarint(nil, uint64(len(name)))
	body = append(append(body, name...), payload...)
	out := append(append([]byte(nil), wasm...), 0)
	out = binary.AppendUvarint(out, uint64(len(body)))
	return append(out, body...)
}
