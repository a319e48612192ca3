package wasmtime

/*
#include <stdint.h>
#include <stdlib.h>

// Declared here as in wasmtime's C API (wasmtime/store.h, error.h of the
// version wasmtime-go links), which this package cannot include.
typedef struct wasmtime_store wasmtime_store_t;
typedef struct wasmtime_context wasmtime_context_t;
typedef struct wasmtime_error wasmtime_error_t;
extern wasmtime_error_t *wasmtime_error_new(const char *);
extern void wasmtime_store_epoch_deadline_callback(wasmtime_store_t *,
	wasmtime_error_t *(*)(wasmtime_context_t *, void *, uint64_t *, uint8_t *),
	void *, void (*)(void *));

// wasmlet_deadline runs on the store's thread whenever the shared Engine's
// epoch passes the store's deadline, that is on every kill of any
// instance: it ends this store's wasm if this store's switch is set, and
// otherwise moves the deadline one epoch on and lets it run.
static wasmtime_error_t *wasmlet_deadline(wasmtime_context_t *ctx, void *data, uint64_t *delta, uint8_t *kind) {
	if (__atomic_load_n((int32_t *)data, __ATOMIC_ACQUIRE)) {
		return wasmtime_error_new("killed");
	}
	*delta = 1;
	*kind = 0; // WASMTIME_UPDATE_DEADLINE_CONTINUE
	return NULL;
}

static int32_t *wasmlet_switch_new(void *store) {
	int32_t *sw = calloc(1, sizeof(int32_t));
	if (sw != NULL) {
		wasmtime_store_epoch_deadline_callback((wasmtime_store_t *)store, wasmlet_deadline, sw, NULL);
	}
	return sw;
}

static void wasmlet_switch_set(int32_t *sw) { __atomic_store_n(sw, 1, __ATOMIC_RELEASE); }
*/
import "C"

import (
	"errors"
	"reflect"
	"unsafe"

	wt "github.com/bytecodealliance/wasmtime-go/v39"
)

// killSwitch ends one store's wasm when set and the shared Engine's epoch
// is advanced; every other store's wasm carries on. wasmtime-go v39 has no
// binding for the C API's per-store epoch-deadline callback, whose
// registration wants the store's C pointer, which the binding keeps in an
// unexported field: it is read with reflect (storePtr). A wasmtime-go
// without that field makes Start fail with a message, and the conformance
// suite's kill tests fail.
type killSwitch struct {
	sw *C.int32_t // C memory: wasmtime keeps the pointer
}

func newKillSwitch(s *wt.Store) (*killSwitch, error) {
	p, err := storePtr(s)
	if err != nil {
		return nil, err
	}
	sw := C.wasmlet_switch_new(p)
	if sw == nil {
		return nil, errors.New("allocate a kill switch")
	}
	return &killSwitch{sw: sw}, nil
}

// set arms the switch; the store's wasm ends at the next epoch advance.
func (k *killSwitch) set() { C.wasmlet_switch_set(k.sw) }

// free releases the switch once its store is closed.
func (k *killSwitch) free() { C.free(unsafe.Pointer(k.sw)) }

// storePtr is the wasmtime_store_t of s.
func storePtr(s *wt.Store) (unsafe.Pointer, error) {
	f := reflect.ValueOf(s).Elem().FieldByName("_ptr")
	if !f.IsValid() || f.Kind() != reflect.Pointer || f.IsNil() {
		return nil, errors.New("wasmtime-go's Store has no _ptr field holding its wasmtime_store_t; this engine needs wasmtime-go v39's layout to register a per-store kill callback")
	}
	return f.UnsafePointer(), nil
}
