package wasmtime

// A run's environment is given to WASI in one cgo call: wasmtime-go's
// WasiConfig.SetEnv makes a C string of each name and value and frees
// it, two cgo calls each, some sixty for a handler's request.

/*
#include <stdint.h>
#include <stdlib.h>
#include <stdbool.h>
#include <string.h>

typedef struct wasi_config_t wasi_config_t;
extern bool wasi_config_set_env(wasi_config_t *config, size_t envc, const char *const *names, const char *const *values);

// wl_set_env gives config n variables from buf, which holds each name and
// value NUL-terminated, one after the other; it reports false when it
// could not (no memory).
static int wl_set_env(void *config, char *buf, size_t n) {
	const char **names = malloc(2 * (n > 0 ? n : 1) * sizeof *names);
	if (names == NULL) {
		return 0;
	}
	const char **values = names + n;
	for (size_t i = 0; i < n; i++) {
		names[i] = buf;
		buf += strlen(buf) + 1;
		values[i] = buf;
		buf += strlen(buf) + 1;
	}
	wasi_config_set_env(config, n, names, values);
	free(names);
	return 1;
}
*/
import "C"

import (
	"strings"
	"unsafe"

	wt "github.com/bytecodealliance/wasmtime-go/v39"

	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
)

// setEnv gives wasi the environment vars (names unique, in order). A
// name or value with a NUL is cut there, as a C string would be.
func setEnv(wasi *wt.WasiConfig, vars []engine.EnvVar) {
	size := 0
	for _, v := range vars {
		size += len(v.Name) + len(v.Value) + 2
	}
	buf := make([]byte, 0, size+1)
	for _, v := range vars {
		buf = append(buf, cut(v.Name)...)
		buf = append(buf, 0)
		buf = append(buf, cut(v.Value)...)
		buf = append(buf, 0)
	}
	buf = append(buf, 0)
	if C.wl_set_env(first(wasi), (*C.char)(unsafe.Pointer(&buf[0])), C.size_t(len(vars))) == 0 {
		keys, values := make([]string, len(vars)), make([]string, len(vars))
		for i, v := range vars {
			keys[i], values[i] = v.Name, v.Value
		}
		wasi.SetEnv(keys, values)
	}
}

// cut is s up to its first NUL.
func cut(s string) string {
	if i := strings.IndexByte(s, 0); i >= 0 {
		return s[:i]
	}
	return s
}
