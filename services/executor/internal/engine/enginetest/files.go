package enginetest

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/wasmlet/wasmlet/internal/testharness/wasmbuild"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
)

// openLoopWat opens /d/f (the first preopen, fd 3) up to limit times
// without closing, then closes the first file it got and opens once more,
// and exits with opened*1000 + the errno that stopped it (0 if none) +
// 100 when the open after the close worked.
func openLoopWat(limit int) string {
	return fmt.Sprintf(`(module
  (import "wasi_snapshot_preview1" "path_open" (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $close (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "f")
  (func $open1 (result i32)
    (call $open (i32.const 3) (i32.const 0) (i32.const 16) (i32.const 1) (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 0)))
  (func (export "_start")
    (local $n i32) (local $errno i32) (local $first i32) (local $again i32)
    (block $done (loop $more
      (local.set $errno (call $open1))
      (br_if $done (local.get $errno))
      (if (i32.eqz (local.get $n)) (then (local.set $first (i32.load (i32.const 0)))))
      (local.set $n (i32.add (local.get $n) (i32.const 1)))
      (br_if $more (i32.lt_u (local.get $n) (i32.const %d)))))
    (drop (call $close (local.get $first)))
    (if (i32.eqz (call $open1)) (then (local.set $again (i32.const 100))))
    (call $exit (i32.add (i32.add (i32.mul (local.get $n) (i32.const 1000)) (local.get $errno)) (local.get $again)))))`, limit)
}

// OpenFilesCapped checks, for an engine that enforces engine.MaxOpenFiles,
// that a module opening files in a loop gets that many (less its one
// preopen), then EMFILE (33; EIO, 29, where the runtime has no EMFILE),
// and that a close gives a place back.
func OpenFilesCapped(t *testing.T, e engine.Engine) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "f"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	m := prepare(t, e, wasmbuild.Wat(t, openLoopWat(engine.MaxOpenFiles+100)))
	res := run(t, e, m, engine.Spec{Preopens: []engine.Preopen{{HostPath: dir, GuestPath: "/d"}}})
	opened, errno, again := res.ExitCode/1000, res.ExitCode%1000%100, res.ExitCode%1000/100 == 1
	if opened != engine.MaxOpenFiles-1 || (errno != 33 && errno != 29) || !again {
		t.Fatalf("exit %d (%s: %s): opened %d files, then errno %d, reopen after a close %v; want %d, EMFILE or EIO, true",
			res.ExitCode, res.Reason, res.Message, opened, errno, again, engine.MaxOpenFiles-1)
	}
}
