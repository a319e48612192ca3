package localcluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// Environment variables the test helpers read.
const (
	// EnvBinDir names a directory holding the control plane binaries.
	EnvBinDir = "WASMLET_CONTROLPLANE_DIR"
	// EnvCache overrides the cache root (default $HOME/.cache/wasmlet) whose
	// controlplane/ directory hack/controlplane/build.sh fills.
	EnvCache = "WASMLET_CACHE"
	// EnvRequire, when set to anything, turns "no binaries" from a skip into a failure
	// (for CI, where a skipped integration test would hide a broken setup).
	EnvRequire = "WASMLET_REQUIRE_CLUSTER"
)

// ErrNoBinaries is returned by FindBinDir when no control plane build is found.
var ErrNoBinaries = errors.New("no control plane binaries found")

// testStartTimeout bounds a test cluster's whole start-up.
const testStartTimeout = 4 * time.Minute

// FindBinDir returns the directory of the control plane binaries: $EnvBinDir when
// set (it must be complete), else the newest complete build under
// ${WASMLET_CACHE:-$HOME/.cache/wasmlet}/controlplane/. A build is complete when it
// holds the four control plane binaries (an unfinished build.sh leaves a *.tmp
// directory); kube-proxy is not required.
func FindBinDir() (string, error) {
	if d := os.Getenv(EnvBinDir); d != "" {
		if err := checkBinDir(d); err != nil {
			return "", fmt.Errorf("%s=%s: %w", EnvBinDir, d, err)
		}
		return d, nil
	}
	cache := os.Getenv(EnvCache)
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("%w: set %s or %s: %v", ErrNoBinaries, EnvBinDir, EnvCache, err)
		}
		cache = filepath.Join(home, ".cache", "wasmlet")
	}
	root := filepath.Join(cache, "controlplane")
	entries, err := os.ReadDir(root)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("find control plane binaries in %s: %w", root, err)
	}
	var best string
	var bestTime time.Time
	for _, e := range entries {
		if !e.IsDir() || filepath.Ext(e.Name()) == ".tmp" {
			continue
		}
		d := filepath.Join(root, e.Name())
		if checkBinDir(d) != nil {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue
		}
		if best == "" || info.ModTime().After(bestTime) {
			best, bestTime = d, info.ModTime()
		}
	}
	if best == "" {
		return "", fmt.Errorf("%w in %s: run hack/controlplane/build.sh (10-25 min) or set %s", ErrNoBinaries, root, EnvBinDir)
	}
	return best, nil
}

// StartForTest starts a cluster in a temporary directory and stops it when the test
// ends. Without binaries it skips the test, or fails it when $WASMLET_REQUIRE_CLUSTER
// is set. Its processes die with the test binary even if that is killed. A cluster
// takes 10–20 s to start: a package with several tests should use Shared.
func StartForTest(t testing.TB) *Cluster {
	t.Helper()
	binDir := findBinDirForTest(t)
	ctx, cancel := context.WithTimeout(t.Context(), testStartTimeout)
	defer cancel()
	c, err := Start(ctx, Config{Dir: t.TempDir(), BinDir: binDir, Logs: t.Output(), dieWithParent: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Errorf("stop local cluster: %v", err)
		}
	})
	return c
}

func findBinDirForTest(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: skipping a test that needs a local control plane")
	}
	binDir, err := FindBinDir()
	if err == nil {
		return binDir
	}
	if os.Getenv(EnvRequire) != "" {
		t.Fatalf("%v (%s is set, so this is a failure, not a skip)", err, EnvRequire)
	}
	t.Skipf("skipping: needs a local control plane: %v (set %s=1 to make this a failure)", err, EnvRequire)
	return ""
}

// Shared is one cluster shared by the tests of a package, started by the first
// test that asks for it and stopped after the last. Use it from TestMain:
//
//	var cluster localcluster.Shared
//
//	func TestMain(m *testing.M) { os.Exit(cluster.Run(m)) }
//
//	func TestX(t *testing.T) { c := cluster.Get(t); ... }
//
// Tests sharing a cluster must not depend on its being empty: use their own
// namespaces and node names.
type Shared struct {
	// ClusterSigningDuration is passed to Config (set it before the first Get).
	ClusterSigningDuration time.Duration
	// BootstrapTokenAuth is passed to Config (set it before the first Get).
	BootstrapTokenAuth bool

	once sync.Once
	c    *Cluster
	dir  string
	err  error
}

// Get returns the shared cluster, starting it on first use. It skips or fails t
// as StartForTest does when there are no binaries, and fails t when the cluster
// could not be started (every later Get fails the same way without retrying).
func (s *Shared) Get(t testing.TB) *Cluster {
	t.Helper()
	binDir := findBinDirForTest(t)
	s.once.Do(func() { s.start(binDir) })
	if s.err != nil {
		t.Fatal(s.err)
	}
	return s.c
}

func (s *Shared) start(binDir string) {
	dir, err := os.MkdirTemp("", "wasmlet-localcluster-")
	if err != nil {
		s.err = fmt.Errorf("start shared local cluster: %w", err)
		return
	}
	s.dir = dir
	var logs io.Writer
	if testing.Verbose() {
		logs = os.Stderr
	}
	ctx, cancel := context.WithTimeout(context.Background(), testStartTimeout)
	defer cancel()
	s.c, s.err = Start(ctx, Config{Dir: dir, BinDir: binDir, Logs: logs, ClusterSigningDuration: s.ClusterSigningDuration,
		BootstrapTokenAuth: s.BootstrapTokenAuth, dieWithParent: true})
}

// Run runs the tests, then stops the cluster if one was started and removes its
// directory. It returns the exit code for os.Exit: m.Run's, or 1 when the tests
// passed but the cluster could not be stopped.
func (s *Shared) Run(m *testing.M) int {
	code := m.Run()
	if err := s.stop(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

func (s *Shared) stop() error {
	if s.dir == "" {
		return nil
	}
	var err error
	if s.c != nil {
		err = s.c.Stop()
	} else {
		err = Stop(s.dir) // a failed start already stopped its processes; be sure
	}
	if err != nil {
		return fmt.Errorf("stop shared local cluster in %s: %w", s.dir, err)
	}
	return os.RemoveAll(s.dir)
}
