package wasmtime

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	wt "github.com/bytecodealliance/wasmtime-go/v39"

	"github.com/wasmlet/wasmlet/services/executor/internal/diskcache"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
)

// module is a prepared module: a verified artifact on disk.
type module struct {
	digest   string
	key      string // the digest's hex: its unit in Engine.disk
	wasmPath string
	artifact string

	mu       sync.Mutex // guards the fields below
	verified bool
	stamp    engine.FileStamp // of the artifact when verified
	pending  *flight          // the ensure running for it, if any
	// quick is the quick artifact (Config.QuickFirst) as written, run
	// until the optimised one is verified; zero when there is none.
	quick artifact

	touched diskcache.Touched // its artifact's last use passed on by touchSoon
}

// artifact is the code an instance of a module is started from: the
// verified artifact, or the quick one, as it was stamped when checked.
type artifact struct {
	path  string
	stamp engine.FileStamp
	quick bool
}

// current is the artifact to start m from, if there is one, as it is on
// disk now; m.mu is held.
func (m *module) current() (artifact, bool) {
	if m.verified {
		fi, err := os.Stat(m.artifact)
		if err == nil && engine.StampOf(fi).Equal(m.stamp) {
			return artifact{path: m.artifact, stamp: m.stamp}, true
		}
		m.verified = false
	}
	if m.quick.quick {
		fi, err := os.Stat(m.quick.path)
		if err == nil && engine.StampOf(fi).Equal(m.quick.stamp) {
			return m.quick, true
		}
		m.quick = artifact{}
	}
	return artifact{}, false
}

// fresh is the artifact current would return when it is the one m
// last had and is still as stamped on disk, or false. Its stat is made
// without m.mu held: each of a handler's instances passes here (ready),
// many at once, and a stat under the lock had them queue for it.
func (m *module) fresh() (artifact, bool) {
	m.mu.Lock()
	var a artifact
	switch {
	case m.verified:
		a = artifact{path: m.artifact, stamp: m.stamp}
	case m.quick.quick:
		a = m.quick
	default:
		m.mu.Unlock()
		return artifact{}, false
	}
	m.mu.Unlock()
	fi, err := os.Stat(a.path)
	return a, err == nil && engine.StampOf(fi).Equal(a.stamp)
}

// flight is one ensure of a module, which its callers wait for.
type flight struct {
	done chan struct{}
	err  error // set before done is closed
}

func (m *module) Digest() string { return m.digest }

// Prepare implements engine.Engine.
func (e *Engine) Prepare(ctx context.Context, digest, wasmPath string) (engine.Module, error) {
	hexd, err := engine.DigestHex(digest)
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	m := e.modules[digest]
	if m == nil {
		m = &module{digest: digest, key: hexd, artifact: filepath.Join(e.dir, hexd+".cwasm")}
		e.modules[digest] = m
	}
	e.mu.Unlock()
	m.mu.Lock()
	m.wasmPath = wasmPath
	m.mu.Unlock()
	release := e.disk.Use(m.key)
	defer release()
	a, err := e.ready(ctx, m)
	if err != nil {
		return nil, err
	}
	// Its code loaded now, the first start costs a Store and an
	// instantiation too; a start that cannot load it says why.
	if c, err := e.codes.get(m, a, e.runEngine(a)); err == nil {
		e.codes.put(c)
	}
	return m, nil
}

// ready makes m's artifact present and verified (or, with
// Config.QuickFirst, the quick one while the optimised one compiles),
// records a use of it, and returns it. The caller holds a use of m.key
// (Engine.disk): an artifact evicted before ready is compiled again here.
// The work (verifying, fetching, compiling: see ensure) runs for one
// caller of a module at a time, on a goroutine of its own: a caller whose
// context ends stops waiting and gets ctx's error, while the work goes on
// and leaves its result for the next caller (wasmtime cannot cancel a
// compile). Callers that come meanwhile wait for the same work.
func (e *Engine) ready(ctx context.Context, m *module) (artifact, error) {
	if a, ok := m.fresh(); ok {
		e.touchSoon(m, a)
		return a, nil
	}
	m.mu.Lock()
	if a, ok := m.current(); ok {
		m.mu.Unlock()
		e.touch(m, a)
		return a, nil
	}
	f := m.pending
	if f == nil {
		f = &flight{done: make(chan struct{})}
		m.pending = f
		wasmPath := m.wasmPath
		release := e.disk.Use(m.key) // for the work, which may outlive the caller
		go func() {
			defer release()
			var added bool
			added, f.err = e.ensure(context.WithoutCancel(ctx), m, wasmPath)
			if added {
				e.disk.Trim() // logs its errors; the artifact is there to use
			}
			m.mu.Lock()
			m.pending = nil
			m.mu.Unlock()
			close(f.done)
		}()
	}
	m.mu.Unlock()
	select {
	case <-f.done:
	case <-ctx.Done():
		return artifact{}, fmt.Errorf("prepare module %s: %w", m.digest, ctx.Err())
	}
	if f.err != nil {
		return artifact{}, f.err
	}
	m.mu.Lock()
	a, ok := m.current()
	m.mu.Unlock()
	if !ok {
		return artifact{}, fmt.Errorf("prepare module %s: its artifact changed on disk as it was made; start it again", m.digest)
	}
	e.touch(m, a)
	return a, nil
}

// touch records a use of a's artifact on disk (its sidecar's mtime).
func (e *Engine) touch(m *module, a artifact) {
	if !a.quick {
		e.disk.Touch(m.artifact + ".sha256")
	}
}

// touchSoon is touch for an artifact found as it was (fresh), at most
// once a diskcache.TouchEvery: a handler instantiates its module for
// every request.
func (e *Engine) touchSoon(m *module, a artifact) {
	if !a.quick {
		e.disk.TouchSoon(&m.touched, m.artifact+".sha256")
	}
}

// ensure makes m's artifact, found unverified, present and verified, and
// reports whether it wrote one (fetched or compiled). It runs for one
// caller at a time (ready); m.mu is not held.
func (e *Engine) ensure(ctx context.Context, m *module, wasmPath string) (added bool, err error) {
	if err := engine.VerifyFile(m.artifact, m.artifact+".sha256"); err == nil {
		// The header must also suit this engine (same wasmtime, same Config).
		if mod, err := wt.NewModuleDeserializeFile(e.compiler.engine, m.artifact); err == nil {
			mod.Close()
			return false, m.markVerified()
		}
	}
	// Absent, corrupt or unusable: take it from the shared store, or
	// compile from the module.
	os.Remove(m.artifact)
	os.Remove(m.artifact + ".sha256")
	if err := ctx.Err(); err != nil {
		return false, fmt.Errorf("prepare module %s: %w", m.digest, err)
	}
	if e.fetchShared(ctx, m) {
		return true, m.markVerified()
	}
	if e.quick != nil {
		return false, e.compileQuick(m, wasmPath)
	}
	if err := e.compile(m, wasmPath); err != nil {
		return false, err
	}
	return true, m.markVerified()
}

// fetchShared installs m's artifact from the shared store, if it has one
// that is intact (size and sha256 as stored, checked by Artifacts.Fetch
// before wasmtime reads it) and loadable by this engine. Called by ensure.
func (e *Engine) fetchShared(ctx context.Context, m *module) bool {
	key := e.ArtifactKey(m.digest)
	tmp, sum, ok := e.Artifacts().Fetch(ctx, key, e.dir)
	if !ok {
		return false
	}
	mod, err := wt.NewModuleDeserializeFile(e.compiler.engine, tmp)
	if err == nil {
		err = checkWASI(mod, m.digest)
		mod.Close()
	}
	if err != nil {
		os.Remove(tmp)
		e.Artifacts().Rejected(ctx, key, err)
		return false
	}
	if err := engine.Install(tmp, m.artifact, sum); err != nil {
		e.Artifacts().LocalError(ctx, key, err)
		return false
	}
	e.Artifacts().Hit()
	return true
}

func (m *module) markVerified() error {
	fi, err := os.Stat(m.artifact)
	if err != nil {
		return fmt.Errorf("prepare module %s: %w", m.digest, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.verified, m.stamp = true, engine.StampOf(fi)
	if m.quick.quick {
		os.Remove(m.quick.path) // loaded code keeps its mapping
		m.quick = artifact{}
	}
	return nil
}

// compileQuick compiles m with the quick settings (Config.QuickFirst),
// keeps the artifact in the quick directory for m's instances until the
// optimised one is there, and starts the optimised compile in the
// background. Called by ensure.
func (e *Engine) compileQuick(m *module, wasmPath string) error {
	b, err := e.compileWith(e.quick.engine, &e.quickMu, m, wasmPath)
	if err != nil {
		return err
	}
	// A file, not memory: wasmtime loads an artifact from memory through a
	// memfd, which the executor's seccomp filter refuses.
	path := filepath.Join(e.quickDir, m.key+".cwasm")
	if err := engine.WriteAtomic(path, b); err != nil {
		return fmt.Errorf("prepare module %s: %w", m.digest, err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("prepare module %s: %w", m.digest, err)
	}
	m.mu.Lock()
	m.quick = artifact{path: path, stamp: engine.StampOf(fi), quick: true}
	m.mu.Unlock()
	release := e.disk.Use(m.key)
	e.background.Add(1)
	go func() {
		defer e.background.Done()
		defer release()
		err := e.compile(m, wasmPath)
		if err == nil {
			err = m.markVerified()
		}
		if err != nil {
			e.log.Warn("optimised compile failed; instances go on starting from the quick compile", "module", m.digest, "error", err)
			return
		}
		e.disk.Trim()
	}()
	return nil
}

// compileWith compiles m's module with eng (one compile at a time per
// engine, under mu), checks its WASI imports and returns the artifact.
func (e *Engine) compileWith(eng *wt.Engine, mu *sync.Mutex, m *module, wasmPath string) ([]byte, error) {
	wasm, err := os.ReadFile(wasmPath)
	if err != nil {
		return nil, fmt.Errorf("prepare module %s: read %s: %w", m.digest, wasmPath, err)
	}
	mu.Lock()
	mod, err := wt.NewModule(eng, wasm)
	mu.Unlock()
	e.Artifacts().Compiled()
	if err != nil {
		return nil, engine.CompileError(m.digest, err)
	}
	defer mod.Close()
	if err := checkWASI(mod, m.digest); err != nil {
		return nil, err
	}
	b, err := mod.Serialize()
	if err != nil {
		return nil, fmt.Errorf("prepare module %s: serialize: %w", m.digest, err)
	}
	return b, nil
}

func (e *Engine) compile(m *module, wasmPath string) error {
	b, err := e.compileWith(e.compiler.engine, &e.compileMu, m, wasmPath)
	if err != nil {
		return err
	}
	sum := sha256.Sum256(b)
	if err := engine.WriteAtomic(m.artifact+".sha256", []byte(hex.EncodeToString(sum[:])+"\n")); err != nil {
		return fmt.Errorf("prepare module %s: %w", m.digest, err)
	}
	if err := engine.WriteAtomic(m.artifact, b); err != nil {
		return fmt.Errorf("prepare module %s: %w", m.digest, err)
	}
	e.Artifacts().Put(e.ArtifactKey(m.digest), b, hex.EncodeToString(sum[:]))
	return nil
}

// checkWASI refuses a module that imports anything but WASI preview 1 or
// has no _start.
func checkWASI(mod *wt.Module, digest string) error {
	var imports []engine.Import
	for _, imp := range mod.Imports() {
		n := ""
		if imp.Name() != nil {
			n = *imp.Name()
		}
		imports = append(imports, engine.Import{Module: imp.Module(), Name: n})
	}
	hasStart := false
	for _, exp := range mod.Exports() {
		hasStart = hasStart || exp.Name() == "_start" && exp.Type().FuncType() != nil
	}
	return engine.CheckWASI(digest, imports, hasStart)
}

// units lists the artifacts in the cache directory for Engine.disk: each
// module's artifact and sidecar (the sidecar's mtime is its last use, see
// ready). Files being written (temporary names) are not counted.
func (e *Engine) units() ([]diskcache.Unit, error) {
	ds, err := os.ReadDir(e.dir)
	if err != nil {
		return nil, err
	}
	byKey := map[string]*diskcache.Unit{}
	var keys []string
	for _, d := range ds {
		key, rest, _ := strings.Cut(d.Name(), ".")
		if !d.Type().IsRegular() || (rest != "cwasm" && rest != "cwasm.sha256") {
			continue
		}
		u := byKey[key]
		if u == nil {
			u = &diskcache.Unit{Key: key}
			byKey[key] = u
			keys = append(keys, key)
		}
		u.Files = append(u.Files, filepath.Join(e.dir, d.Name()))
	}
	units := make([]diskcache.Unit, 0, len(keys))
	for _, k := range keys {
		units = append(units, *byKey[k]) // ReadDir sorts: the artifact before its sidecar
	}
	return units, nil
}
