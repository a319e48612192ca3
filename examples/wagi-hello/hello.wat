;; A WAGI handler: run once per HTTP request by an executor in handler mode
;; (instances.Spec.Handler = "wagi"), it answers a plain-text greeting
;; with the request's path (PATH_INFO). The response is CGI on stdout:
;; headers, a blank line, the body. Built with wat2wasm (Debian's wabt).
(module
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  ;; 0: an iovec; 16: nwritten; 32: environ count; 36: environ bytes;
  ;; 64: the text; 1024: environ pointers (up to 1792); 8192: environ bytes.
  (memory (export "memory") 8)
  (data (i32.const 64) "Content-Type: text/plain\n\nHello from a WebAssembly handler at ")
  (data (i32.const 192) "PATH_INFO=")
  (data (i32.const 208) "\n")

  (func $write (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16))))

  (func $strlen (param $p i32) (result i32) (local $n i32)
    (block $done
      (loop $next
        (br_if $done (i32.eqz (i32.load8_u (i32.add (local.get $p) (local.get $n)))))
        (local.set $n (i32.add (local.get $n) (i32.const 1)))
        (br $next)))
    (local.get $n))

  ;; $isPath: whether the NUL-terminated string at $p starts with PATH_INFO=.
  (func $isPath (param $p i32) (result i32) (local $k i32)
    (block $no
      (loop $next
        (br_if $no (i32.ne (i32.load8_u (i32.add (local.get $p) (local.get $k)))
                           (i32.load8_u (i32.add (i32.const 192) (local.get $k)))))
        (local.set $k (i32.add (local.get $k) (i32.const 1)))
        (br_if $next (i32.lt_u (local.get $k) (i32.const 10))))
      (return (i32.const 1)))
    (i32.const 0))

  (func (export "_start") (local $count i32) (local $i i32) (local $p i32)
    (call $write (i32.const 64) (i32.const 62))
    (drop (call $environ_sizes_get (i32.const 32) (i32.const 36)))
    (local.set $count (i32.load (i32.const 32)))
    ;; An environment too large for this module's memory: no path.
    (if (i32.and (i32.le_u (local.get $count) (i32.const 1792))
                 (i32.le_u (i32.load (i32.const 36)) (i32.const 500000)))
      (then
        (if (i32.eqz (call $environ_get (i32.const 1024) (i32.const 8192)))
          (then
            (block $done
              (loop $next
                (br_if $done (i32.ge_u (local.get $i) (local.get $count)))
                (local.set $p (i32.load (i32.add (i32.const 1024) (i32.shl (local.get $i) (i32.const 2)))))
                (if (call $isPath (local.get $p))
                  (then
                    (call $write (i32.add (local.get $p) (i32.const 10))
                                 (call $strlen (i32.add (local.get $p) (i32.const 10))))
                    (br $done)))
                (local.set $i (i32.add (local.get $i) (i32.const 1)))
                (br $next)))))))
    (call $write (i32.const 208) (i32.const 1))))
