package wasmtime

// A handler's instances (handler.go: one per request) are instantiated in
// an Engine of their own whose instance allocator is wasmtime's pooling
// allocator (the C API's wasmtime_pooling_allocation_*, which wasmtime-go
// does not wrap): it reserves the linear memories, tables and fiber
// stacks of poolSlots instances once, and an instance takes a slot and
// gives it back, reset (what it kept resident zeroed, the rest
// decommitted, the module's memory image mapped again). The default,
// on-demand allocator maps and unmaps a 4 GiB reservation and a fiber
// stack per instance: most of a small handler run's CPU went to those
// system calls, their page faults and the TLB shootdowns of the unmaps
// (each instance still starts from its module's initial state: a slot
// holds nothing of the instance before).
//
// The pooled Engine is made at the first handler instance, so an executor
// with no handler reserves nothing for it. An instance the pool cannot
// take (all its slots in use, or a module beyond a slot's bounds: more
// than one memory or table, a table larger than poolTableElements) is
// made by the on-demand allocator, as if there were no pool.

/*
#include <stddef.h>
#include <stdint.h>

typedef struct wasm_config_t wasm_config_t;
typedef struct wasmtime_pooling_allocation_config_t wasmtime_pooling_allocation_config_t;

extern wasmtime_pooling_allocation_config_t *wasmtime_pooling_allocation_config_new(void);
extern void wasmtime_pooling_allocation_config_delete(wasmtime_pooling_allocation_config_t *);
extern void wasmtime_pooling_allocation_config_total_memories_set(wasmtime_pooling_allocation_config_t *, uint32_t);
extern void wasmtime_pooling_allocation_config_total_tables_set(wasmtime_pooling_allocation_config_t *, uint32_t);
extern void wasmtime_pooling_allocation_config_total_stacks_set(wasmtime_pooling_allocation_config_t *, uint32_t);
extern void wasmtime_pooling_allocation_config_total_core_instances_set(wasmtime_pooling_allocation_config_t *, uint32_t);
extern void wasmtime_pooling_allocation_config_total_component_instances_set(wasmtime_pooling_allocation_config_t *, uint32_t);
extern void wasmtime_pooling_allocation_config_total_gc_heaps_set(wasmtime_pooling_allocation_config_t *, uint32_t);
extern void wasmtime_pooling_allocation_config_table_elements_set(wasmtime_pooling_allocation_config_t *, size_t);
extern void wasmtime_pooling_allocation_config_linear_memory_keep_resident_set(wasmtime_pooling_allocation_config_t *, size_t);
extern void wasmtime_pooling_allocation_config_table_keep_resident_set(wasmtime_pooling_allocation_config_t *, size_t);
extern void wasmtime_pooling_allocation_config_max_unused_warm_slots_set(wasmtime_pooling_allocation_config_t *, uint32_t);
extern void wasmtime_pooling_allocation_strategy_set(wasm_config_t *, const wasmtime_pooling_allocation_config_t *);

static void wl_pooling(void *config, uint32_t slots, size_t elements, size_t keep, uint32_t warm) {
	wasmtime_pooling_allocation_config_t *p = wasmtime_pooling_allocation_config_new();
	wasmtime_pooling_allocation_config_total_memories_set(p, slots);
	wasmtime_pooling_allocation_config_total_tables_set(p, slots);
	wasmtime_pooling_allocation_config_total_stacks_set(p, slots);
	wasmtime_pooling_allocation_config_total_core_instances_set(p, slots);
	wasmtime_pooling_allocation_config_total_component_instances_set(p, 0);
	wasmtime_pooling_allocation_config_total_gc_heaps_set(p, 0);
	wasmtime_pooling_allocation_config_table_elements_set(p, elements);
	wasmtime_pooling_allocation_config_linear_memory_keep_resident_set(p, keep);
	wasmtime_pooling_allocation_config_table_keep_resident_set(p, keep);
	wasmtime_pooling_allocation_config_max_unused_warm_slots_set(p, warm);
	wasmtime_pooling_allocation_strategy_set(config, p);
	wasmtime_pooling_allocation_config_delete(p);
}
*/
import "C"

import (
	"context"
	"errors"
	"fmt"

	wt "github.com/bytecodealliance/wasmtime-go/v39"
	"golang.org/x/sys/unix"

	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
)

const (
	// poolSlots is how many handler instances the pool holds at once, of
	// every handler of the executor (each holds its pool and its runs in
	// flight: a few per core). Each slot reserves a memory's address space
	// (poolSlotBytes), none of it resident until used.
	poolSlots = 256
	// poolSlotBytes is what a slot's memory reserves: 4 GiB, the wasm32
	// address space, as the on-demand allocator does, and its guard.
	poolSlotBytes = 4<<30 + 32<<20
	// poolTableElements bounds a pooled instance's table (a Go-built
	// module's has some thousands).
	poolTableElements = 65536
	// poolKeepResident is what a slot keeps of a memory and a table it
	// gives back, zeroed rather than decommitted: a handler's next
	// instance faults none of it in again. More is zeroed whether it was
	// touched or not: examples/wagi-hello's 512 KiB memory cost more
	// zeroed whole than decommitted past its first 64 KiB.
	poolKeepResident = 64 << 10
	// poolWarmSlots bounds the slots kept warm (resident) while unused.
	poolWarmSlots = 16
)

// pooledEngine is the Engine handler instances are instantiated in, made
// at its first use; nil when it cannot be (the address space for its
// slots is not there: instances are then all on demand).
func (e *Engine) pooledEngine() *runEngine {
	e.poolOnce.Do(func() {
		// Engine::new with a pool that cannot be reserved panics inside
		// wasmtime, which aborts the process: reserve it first ourselves.
		b, err := unix.Mmap(-1, 0, poolSlots*poolSlotBytes, unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
		if err != nil {
			e.log.Warn("wasmtime engine: no pooling allocator for handler instances: its address space cannot be reserved; they are allocated on demand", "error", err)
			return
		}
		unix.Munmap(b)
		rt, err := newRunEngineWith(false, func(cfg *wt.Config) {
			C.wl_pooling(first(cfg), poolSlots, poolTableElements, poolKeepResident, poolWarmSlots)
		})
		if err != nil {
			e.log.Warn("wasmtime engine: no pooling allocator for handler instances", "error", err)
			return
		}
		e.pool = rt
	})
	return e.pool
}

// instantiatePooled instantiates em for a handler in the pooled Engine;
// an error means the pool could not take it (or its optimised code is not
// there yet), and the caller instantiates it on demand.
func (e *Engine) instantiatePooled(ctx context.Context, em engine.Module, spec engine.Spec) (*instance, error) {
	rt := e.pooledEngine()
	if rt == nil {
		return nil, errors.New("no pool")
	}
	m, ok := em.(*module)
	if !ok {
		return nil, fmt.Errorf("%w: module was not prepared by the wasmtime engine", engine.ErrInstantiate)
	}
	release := e.disk.Use(m.key)
	a, err := e.ready(ctx, m)
	if err != nil || a.quick {
		// Quick code runs in the quick Engine, for a while only.
		release()
		return nil, errors.New("no optimised code")
	}
	c, err := e.pooledCodes.get(m, a, rt)
	release()
	if err != nil {
		return nil, err
	}
	inst := &instance{code: c, codes: &e.pooledCodes}
	if err := inst.instantiate(m, spec, wt.NewWasiConfig()); err != nil {
		inst.release()
		return nil, err
	}
	return inst, nil
}
