// Package testharness holds no code: its subpackages are the test harnesses
// (a local control plane, an OCI registry, a PKI, Wasm builds from source,
// an in-process NATS server) that tests, benchmarks and `make up` use.
// Nothing a service ships imports them.
package testharness
