// Package confine is the executor's second wall, behind the Wasm sandbox:
// it confines the executor process so that a module escaping its engine
// reaches as little of the host as possible. It owns the process's
// credentials (an unprivileged user, no supplementary groups),
// no_new_privs, an optional empty network namespace, a Landlock ruleset
// over the file system, and a seccomp allow-list of system calls. It must
// not know about pods, flags or gRPC: callers say which directories are
// the executor's (read-write) and which it reads.
//
// Landlock and credentials are per thread, and a Go process has many
// threads (with cgo linked, syscall.AllThreadsSyscall is refused), so
// Apply confines one locked thread and execve's the executor from it:
// the new image starts with that thread's confinement, and Apply, called
// again there, installs the seccomp filter on every thread (TSYNC) and
// returns. An environment variable marks the second call. The filter is
// loaded after the execve so that execve itself can be refused.
//
// Denied system calls fail with EPERM rather than killing the process: an
// executor holds every pod of its flavour, and a call that the
// measurement missed (a rare path of the Go runtime, of wasmtime or of a
// WASI call) then becomes one failed call (an error the executor logs or
// returns), not a node-wide restart. clone3 fails with ENOSYS so that
// glibc falls back to clone, whose flags the filter can see (namespaces
// are refused).
//
// The allow-list (seccomp_linux.go) was measured, not guessed: strace -f
// of the executors of TestConfinedExecutor, unconfined, with fresh state
// dirs (compile, run, sleep, kill, the registry cache), on both engines:
//
//	WASMLET_CONFINE_STRACE=/tmp/st WASMLET_CONFINE_TEST_FLAGS=--confine=false \
//	    go test -run TestConfinedExecutor ./services/executor/internal/confine
//
// joined with the calls that WASI host calls map to (fd_*, path_*,
// poll_oneoff, sock_*), which the test modules do not all make; then
// checked confined, with strace (EPERM, EACCES) and with EnvAudit over
// the executor's own process tests (which found pipe2: wasmtime's output
// pipe when logs go to NATS).
//
// Usage, first thing in main, after the flags are parsed:
//
//	st, err := confine.Apply(confine.Config{
//		ReadWrite: []string{stateDir, socketDir, mountRoot},
//		Connect:   []string{registrySocketDir},
//		User:      "wasmlet", Seccomp: true, Landlock: true,
//	}) // does not return the first time: the executor starts again, confined
//	log.Info("confined", "how", st.String())
package confine
