;; empty is the trivial module of the executor's throughput benchmark
;; (bench/executor.go): a WASI command with no imports and no memory whose
;; _start returns at once, so that what is measured is the executor's cost
;; per instance, not the module's. Assembled with wat2wasm (Debian package
;; wabt).
(module
  (func (export "_start")))
