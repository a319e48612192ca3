package engine

// MaxOpenFiles bounds the files one instance holds open, its preopened
// directories included, so that a module opening files in a loop cannot
// take the executor's descriptors from every other instance; an open past
// it fails. wazero enforces it. wasmtime does not: wasmtime-go keeps a WASI
// context's descriptor table out of reach, and its WASI functions cannot
// be wrapped (called from a host function they find no caller's memory).
const MaxOpenFiles = 1024
