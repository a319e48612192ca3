// Package confine is the executor's second wall, behind the Wasm sandbox:
// it confines the executor process so that a module escaping its engine
// reaches as little of the host as possible. It owns the process's
// credentials (an unprivileged user, no supplementary groups),
// no_new_privs, an optional empty network namespace, a Landlock ruleset
// over the file system, and a seccomp allow-list of system calls. It must
// not know about pods, flags or gRPC: callers say which directories are
// the executor's (read-write) and which it reads.
//
// Landlock and credentials are per thread, so Apply confines one locked
// thread and execve's the executor from it; called again in the new image,
// it installs the seccomp filter on every thread (apply_linux.go). Denied
// system calls fail with EPERM rather than killing the process, and how
// the allow-list was measured is told in seccomp_linux.go.
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
