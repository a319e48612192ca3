// Package profiling lets a developer take CPU profiles of a wasmlet
// service without a listener: with WASMLET_CPU_PROFILE_DIR set, Start
// writes <dir>/<service>-<pid>.0.pprof, and each SIGUSR1 ends the current
// profile and begins the next (.1, .2, …), so that a benchmark can profile
// exactly the span it times. The stop function Start returns ends the last
// one (on a clean exit).
//
// The variable is inherited, so a node agent's supervised executor is
// profiled with it. The benchmark suite sets it with -cpu-profile and
// signals around each burst; read a profile with
// `go tool pprof -top FILE`.
package profiling

import (
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"sync"
	"syscall"
)

// EnvDir names the directory profiles are written to.
const EnvDir = "WASMLET_CPU_PROFILE_DIR"

// Start begins CPU profiling of service when EnvDir is set, and returns
// the function that ends it. Without EnvDir, or if the profile cannot be
// started, the returned function does nothing; the error says why.
func Start(service string) (stop func(), err error) {
	dir := os.Getenv(EnvDir)
	if dir == "" {
		return func() {}, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return func() {}, fmt.Errorf("cpu profile: %w", err)
	}
	p := &profiler{base: filepath.Join(dir, fmt.Sprintf("%s-%d", service, os.Getpid()))}
	if err := p.next(); err != nil {
		return func() {}, err
	}
	sig := make(chan os.Signal, 1)
	done := make(chan struct{})
	signal.Notify(sig, syscall.SIGUSR1)
	go func() {
		for {
			select {
			case <-sig:
				if err := p.next(); err != nil {
					fmt.Fprintln(os.Stderr, err)
				}
			case <-done:
				return
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			signal.Stop(sig)
			close(done)
			p.end()
		})
	}, nil
}

type profiler struct {
	mu   sync.Mutex
	base string
	n    int
	f    *os.File
}

// next ends the current profile, if any, and begins the next.
func (p *profiler) next() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.endLocked()
	f, err := os.Create(fmt.Sprintf("%s.%d.pprof", p.base, p.n))
	if err != nil {
		return fmt.Errorf("cpu profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return fmt.Errorf("cpu profile: %w", err)
	}
	p.f = f
	p.n++
	return nil
}

func (p *profiler) end() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.endLocked()
}

func (p *profiler) endLocked() {
	if p.f != nil {
		pprof.StopCPUProfile()
		p.f.Close()
		p.f = nil
	}
}
