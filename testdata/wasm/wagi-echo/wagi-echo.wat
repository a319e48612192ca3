;; A WAGI handler for tests: it copies its stdin (the request body) to
;; stdout, so that the body is the CGI response the test wants back, then
;; writes its environment after it, one variable a line, and a line to
;; stderr. A body that starts with "trap" makes it trap, "exit" exit with
;; code 3, "spin" loop forever.
(module
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  ;; 0: an iovec; 16: n; 32: environ count; 36: environ bytes; 64: text;
  ;; 1024: environ pointers (up to 1792); 8192: environ bytes (up to
  ;; 500000); 524288: the body (up to 512 KiB).
  (memory (export "memory") 16)
  (data (i32.const 64) "\n")
  (data (i32.const 80) "echo: handled\n")

  (func $write (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 16))))

  (func $strlen (param $p i32) (result i32) (local $n i32)
    (block $done
      (loop $next
        (br_if $done (i32.eqz (i32.load8_u (i32.add (local.get $p) (local.get $n)))))
        (local.set $n (i32.add (local.get $n) (i32.const 1)))
        (br $next)))
    (local.get $n))

  (func (export "_start") (local $len i32) (local $count i32) (local $i i32) (local $p i32)
    ;; Read the body whole.
    (block $eof
      (loop $more
        (br_if $eof (i32.ge_u (local.get $len) (i32.const 524288)))
        (i32.store (i32.const 0) (i32.add (i32.const 524288) (local.get $len)))
        (i32.store (i32.const 4) (i32.sub (i32.const 524288) (local.get $len)))
        (br_if $eof (i32.ne (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 16)) (i32.const 0)))
        (br_if $eof (i32.eqz (i32.load (i32.const 16))))
        (local.set $len (i32.add (local.get $len) (i32.load (i32.const 16))))
        (br $more)))
    (if (i32.ge_u (local.get $len) (i32.const 4))
      (then
        (if (i32.eq (i32.load (i32.const 524288)) (i32.const 0x70617274)) ;; "trap"
          (then unreachable))
        (if (i32.eq (i32.load (i32.const 524288)) (i32.const 0x74697865)) ;; "exit"
          (then (call $proc_exit (i32.const 3))))
        (if (i32.eq (i32.load (i32.const 524288)) (i32.const 0x6e697073)) ;; "spin"
          (then (loop $forever (br $forever))))))
    (call $write (i32.const 1) (i32.const 524288) (local.get $len))
    (drop (call $environ_sizes_get (i32.const 32) (i32.const 36)))
    (local.set $count (i32.load (i32.const 32)))
    (if (i32.and (i32.le_u (local.get $count) (i32.const 1792))
                 (i32.le_u (i32.load (i32.const 36)) (i32.const 500000)))
      (then
        (if (i32.eqz (call $environ_get (i32.const 1024) (i32.const 8192)))
          (then
            (block $done
              (loop $next
                (br_if $done (i32.ge_u (local.get $i) (local.get $count)))
                (local.set $p (i32.load (i32.add (i32.const 1024) (i32.shl (local.get $i) (i32.const 2)))))
                (call $write (i32.const 1) (local.get $p) (call $strlen (local.get $p)))
                (call $write (i32.const 1) (i32.const 64) (i32.const 1))
                (local.set $i (i32.add (local.get $i) (i32.const 1)))
                (br $next)))))))
    (call $write (i32.const 2) (i32.const 80) (i32.const 14))))
