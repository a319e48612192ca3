package wasmtime

// The C API's epoch deadline callback, which wasmtime-go does not wrap:
// every instance's Store has one, which lets its wasm go on when the epoch
// of the Engine it shares with other instances advances, and ends it once
// its own kill switch is set. The prototypes are declared here rather than
// included (wasmtime-go's headers are in the module cache, outside this
// repository); the symbols are wasmtime-go's static libwasmtime's, linked
// into the binary by wasmtime-go's own cgo flags. The cgo link of this
// package alone, which has no libwasmtime, would refuse them as undefined:
// hence --unresolved-symbols. checkLayout calls both functions when
// the engine is made, so a missing one fails there, not later.

/*
#cgo LDFLAGS: -Wl,--unresolved-symbols=ignore-in-object-files
#include <stdint.h>
#include <stdlib.h>

typedef struct wasmtime_store wasmtime_store_t;
typedef struct wasmtime_context wasmtime_context_t;
typedef struct wasmtime_error wasmtime_error_t;

extern wasmtime_context_t *wasmtime_store_context(wasmtime_store_t *store);
extern wasmtime_error_t *wasmtime_error_new(const char *message);
extern void wasmtime_store_epoch_deadline_callback(wasmtime_store_t *store,
	wasmtime_error_t *(*func)(wasmtime_context_t *context, void *data, uint64_t *delta, uint8_t *kind),
	void *data, void (*finalizer)(void *));

// wl_deadline runs on the instance's thread when the epoch has passed its
// store's deadline: it ends the wasm if the kill switch is set and lets it
// go on to the next epoch otherwise (kind 0: continue, no yield).
static wasmtime_error_t *wl_deadline(wasmtime_context_t *context, void *data, uint64_t *delta, uint8_t *kind) {
	if (__atomic_load_n((int32_t *)data, __ATOMIC_ACQUIRE)) {
		return wasmtime_error_new("killed");
	}
	*delta = 1;
	*kind = 0;
	return NULL;
}

// wl_watch gives store a kill switch, freed with the store.
static int32_t *wl_watch(void *store) {
	int32_t *on = calloc(1, sizeof(int32_t));
	if (on != NULL) {
		wasmtime_store_epoch_deadline_callback(store, wl_deadline, on, free);
	}
	return on;
}

static void wl_kill(int32_t *on) { __atomic_store_n(on, 1, __ATOMIC_RELEASE); }

static void *wl_context(void *store) { return wasmtime_store_context(store); }
*/
import "C"

import (
	"errors"
	"fmt"
	"unsafe"

	wt "github.com/bytecodealliance/wasmtime-go/v39"
)

// killSwitch ends its store's wasm at the next epoch check once set; the
// Engine's epoch must then be advanced (Interrupt). Valid until the store
// is closed.
type killSwitch struct{ on *C.int32_t }

// watch gives s, before it runs wasm, its kill switch; wasm in s runs on
// while other stores' kills advance the epoch.
func watch(s *wt.Store) (killSwitch, error) {
	on := C.wl_watch(storePointer(s))
	if on == nil {
		return killSwitch{}, errors.New("allocate the kill switch")
	}
	s.SetEpochDeadline(1)
	return killSwitch{on}, nil
}

// set kills the store's wasm at its next epoch check. Safe from any
// goroutine.
func (k killSwitch) set() { C.wl_kill(k.on) }

// storePointer is s's *wasmtime_store_t, which wasmtime-go keeps in an
// unexported field, the first of Store's two (its Engine the other). It
// is read by that layout, as of wasmtime-go v39.0.1: checkLayout
// refuses to make an engine, and TestLayout fails, if it changes.
func storePointer(s *wt.Store) unsafe.Pointer {
	return *(*unsafe.Pointer)(unsafe.Pointer(s))
}

// checkLayout makes sure the wasmtime-go objects whose C pointers this
// package reads as their first field (storePointer, async.go's first,
// used by output.go too) are laid out as in v39.0.1, and that
// storePointer reads the store's pointer: the context the C API derives
// from it is the one wasmtime-go gives.
func checkLayout(eng *wt.Engine) error {
	if err := checkSizes(); err != nil {
		return err
	}
	s := wt.NewStore(eng)
	defer s.Close()
	p := storePointer(s)
	if p == nil || C.wl_context(p) != unsafe.Pointer(s.Context()) {
		return errors.New("wasmtime-go's Store does not begin with its *wasmtime_store_t as in v39.0.1, on which the kill switch relies")
	}
	if _, err := watch(s); err != nil {
		return err
	}
	return nil
}

// checkSizes is checkLayout's part that needs no Engine: New calls it
// before it makes one (newEngine writes to its Config).
func checkSizes() error {
	const ptr = unsafe.Sizeof(uintptr(0))
	for _, o := range []struct {
		name       string
		size, want uintptr
	}{
		{"Store", unsafe.Sizeof(wt.Store{}), 2 * ptr},
		{"Config", unsafe.Sizeof(wt.Config{}), ptr},
		{"Linker", unsafe.Sizeof(wt.Linker{}), 2 * ptr},
		{"Module", unsafe.Sizeof(wt.Module{}), ptr},
		{"WasiConfig", unsafe.Sizeof(wt.WasiConfig{}), ptr},
	} {
		if o.size != o.want {
			return fmt.Errorf("wasmtime-go's %s is %d bytes, not the %d of v39.0.1, whose layout the engine relies on", o.name, o.size, o.want)
		}
	}
	return nil
}
