package wasmtime

// The C half of output.go: the callbacks' types, which the declarations
// of the exported Go functions lack (const), and the C API's prototypes
// (wasmtime v39's wasi.h).

/*
#define _GNU_SOURCE
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

typedef struct wasi_config_t wasi_config_t;
typedef ptrdiff_t (*wl_output_fn)(void *, const unsigned char *, size_t);

extern void wasi_config_set_stdout_custom(wasi_config_t *config,
	ptrdiff_t (*callback)(void *, const unsigned char *, size_t), void *data, void (*finalizer)(void *));
extern void wasi_config_set_stderr_custom(wasi_config_t *config,
	ptrdiff_t (*callback)(void *, const unsigned char *, size_t), void *data, void (*finalizer)(void *));

typedef struct { size_t size; char *data; } wl_byte_vec;
extern void wasm_byte_vec_new(wl_byte_vec *out, size_t size, const char *data);
extern void wasi_config_set_stdin_bytes(wasi_config_t *config, wl_byte_vec *binary);

// wl_set_stdin gives config a stdin of a copy of data.
static void wl_set_stdin(void *config, const char *data, size_t n) {
	wl_byte_vec v;
	wasm_byte_vec_new(&v, n, data);
	wasi_config_set_stdin_bytes(config, &v);
}

extern ptrdiff_t wlOutputWrite(void *data, unsigned char *buf, size_t n);
extern void wlOutputFree(void *data);

static void wl_set_output(void *config, int stderr, uintptr_t handle) {
	if (stderr) {
		wasi_config_set_stderr_custom(config, (wl_output_fn)wlOutputWrite, (void *)handle, wlOutputFree);
	} else {
		wasi_config_set_stdout_custom(config, (wl_output_fn)wlOutputWrite, (void *)handle, wlOutputFree);
	}
}
// wl_on_thread_stack: whether the caller runs on its thread's own stack.
static int wl_on_thread_stack(void) {
	pthread_attr_t a;
	void *lo;
	size_t size;
	int here;
	if (pthread_getattr_np(pthread_self(), &a) != 0) {
		return -1;
	}
	pthread_attr_getstack(&a, &lo, &size);
	pthread_attr_destroy(&a);
	return (char *)&here >= (char *)lo && (char *)&here < (char *)lo + size;
}
*/
import "C"

import "unsafe"

// setCustomOutput gives the wasi_config_t config a stdout (stderr) that
// calls output.go's wlOutputWrite with handle, a cgo.Handle freed by
// wlOutputFree when wasmtime drops it.
func setCustomOutput(config unsafe.Pointer, stderr bool, handle uintptr) {
	e := C.int(0)
	if stderr {
		e = 1
	}
	C.wl_set_output(config, e, C.uintptr_t(handle))
}

// setStdinBytes gives the wasi_config_t config a stdin of a copy of b.
func setStdinBytes(config unsafe.Pointer, b []byte) {
	var p *C.char
	if len(b) > 0 {
		p = (*C.char)(unsafe.Pointer(&b[0]))
	}
	C.wl_set_stdin(config, p, C.size_t(len(b)))
}

// onThreadStack reports whether the C code that called into Go (a sink's
// Write, called from wlOutputWrite) runs on its OS thread's own stack
// (an unknown answer reads as true). Go's runtime takes the stack a C
// callback comes on for the thread's system stack; on a fiber's stack,
// its own code there could run out of the bounds it knows. wasmtime
// calls the output callbacks on its tokio runtime's threads, never on an
// instance's fiber (output.go; as of v39: TestOutputFromFiber checks it).
func onThreadStack() bool { return C.wl_on_thread_stack() != 0 }
