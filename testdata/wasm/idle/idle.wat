;; idle is the workload of the pod-start benchmark (bench/podstart.go): a
;; WASI command that writes one line and then sleeps, 1 s at a time, until
;; it is stopped. (1 s, not 10: a kill used to end a module asleep in a
;; host call only when the call returned, and the teardown of one burst's
;; instances fell into the next burst. The engines now end a WASI sleep at
;; the kill.) It starts in microseconds, so that a pod's start measures
;; the node (pull from the cache, instance, status), as the no-op node it
;; is compared with does; the Go example module's own runtime start (a few
;; milliseconds of CPU) is measured beside it. Assembled with wat2wasm
;; (Debian package wabt).
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; 0: the line; 16: its iovec; 24: bytes written;
  ;; 64: the clock subscription; 128: the event; 200: events stored
  (data (i32.const 0) "idle: started\n")
  (func (export "_start")
    (i32.store (i32.const 16) (i32.const 0))
    (i32.store (i32.const 20) (i32.const 14))
    (drop (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24)))
    ;; subscription: userdata 0; tag 0 (clock); clock 1 (monotonic);
    ;; timeout 1 s, relative; precision 0; flags 0
    (i64.store (i32.const 64) (i64.const 0))
    (i32.store8 (i32.const 72) (i32.const 0))
    (i32.store (i32.const 80) (i32.const 1))
    (i64.store (i32.const 88) (i64.const 1000000000))
    (i64.store (i32.const 96) (i64.const 0))
    (i32.store16 (i32.const 104) (i32.const 0))
    (loop $sleep
      (drop (call $poll_oneoff (i32.const 64) (i32.const 128) (i32.const 1) (i32.const 200)))
      (br $sleep))))
