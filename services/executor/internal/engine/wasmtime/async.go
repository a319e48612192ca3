package wasmtime

// Wasm runs on a fiber (the C API's async support, which wasmtime-go does
// not wrap), so that an instance asleep in poll_oneoff holds no OS
// thread. poll_oneoff is the engine's own (engine.Poller), defined over
// wasmtime's so that a kill ends a sleep at once: epoch interruption
// reaches wasm code only. A module here has no sockets (Start refuses
// listeners), so fd subscriptions are ready at once, as wasmtime's own
// are for files. It is an async host function whose continuation stays
// pending while the instance waits; the call's future then returns to Go,
// which waits in the instance's engine.Poller off the thread (the
// instance is an engine.Mobile) and polls the future again, on whatever
// thread, once the wait is over. The rest of WASI is wasmtime-go's,
// defined synchronously, which wasmtime runs on the fiber as it is.
//
// The declarations below are those of wasmtime v39's C API (wasmtime-go
// v39.0.1's headers, which stay in the module cache), with its struct
// layouts; TestAsyncLayout runs a module through every one of them. The
// raw pointers of wasmtime-go's Config, Linker and Module are read, like
// its Store's (kill.go), as their first field (checkLayout, TestLayout).

/*
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct wasm_config_t wasm_config_t;
typedef struct wasmtime_linker wasmtime_linker_t;
typedef struct wasmtime_module wasmtime_module_t;
typedef struct wasmtime_context wasmtime_context_t;
typedef struct wasmtime_caller wasmtime_caller_t;
typedef struct wasmtime_error wasmtime_error_t;
typedef struct wasm_trap_t wasm_trap_t;
typedef struct wasm_frame_t wasm_frame_t;
typedef struct wasm_valtype_t wasm_valtype_t;
typedef struct wasm_functype_t wasm_functype_t;
typedef struct wasmtime_call_future wasmtime_call_future_t;

typedef struct { size_t size; char *data; } wasm_byte_vec_t;
typedef struct { size_t size; wasm_frame_t **data; } wasm_frame_vec_t;
typedef struct { size_t size; wasm_valtype_t **data; } wasm_valtype_vec_t;

typedef struct { uint64_t store_id; void *private_; } wasmtime_func_t;
typedef struct { struct { uint64_t store_id; uint32_t private1; } id; uint32_t private2; } wasmtime_memory_t; // 24 bytes
typedef struct { uint64_t store_id; size_t private_; } wasmtime_instance_t;
// wasmtime_extern_t and wasmtime_val_t: a kind, then a union of 24 bytes.
typedef struct {
	uint8_t kind;
	union { wasmtime_func_t func; wasmtime_memory_t memory; uint64_t size_[3]; } of;
} wasmtime_extern_t;
typedef struct {
	uint8_t kind;
	union { int32_t i32; int64_t i64; uint64_t size_[3]; } of;
} wasmtime_val_t;

enum { WL_I32 = 0, WL_EXTERN_FUNC = 0, WL_EXTERN_MEMORY = 3, WL_ERRNO_FAULT = 21 };

typedef bool (*wasmtime_func_async_continuation_callback_t)(void *env);
typedef struct {
	wasmtime_func_async_continuation_callback_t callback;
	void *env;
	void (*finalizer)(void *);
} wasmtime_async_continuation_t;
typedef void (*wasmtime_func_async_callback_t)(void *env, wasmtime_caller_t *caller,
	const wasmtime_val_t *args, size_t nargs, wasmtime_val_t *results, size_t nresults,
	wasm_trap_t **trap_ret, wasmtime_async_continuation_t *continuation_ret);

extern void wasmtime_config_async_support_set(wasm_config_t *config, bool enable);
extern wasmtime_error_t *wasmtime_linker_define_async_func(wasmtime_linker_t *linker,
	const char *module, size_t module_len, const char *name, size_t name_len,
	const wasm_functype_t *ty, wasmtime_func_async_callback_t cb, void *data, void (*finalizer)(void *));
extern wasmtime_call_future_t *wasmtime_linker_instantiate_async(const wasmtime_linker_t *linker,
	wasmtime_context_t *store, const wasmtime_module_t *module, wasmtime_instance_t *instance,
	wasm_trap_t **trap_ret, wasmtime_error_t **error_ret);
typedef struct wasmtime_instance_pre wasmtime_instance_pre_t;
extern wasmtime_error_t *wasmtime_linker_instantiate_pre(const wasmtime_linker_t *linker,
	const wasmtime_module_t *module, wasmtime_instance_pre_t **instance_pre);
extern void wasmtime_instance_pre_delete(wasmtime_instance_pre_t *instance_pre);
extern wasmtime_call_future_t *wasmtime_instance_pre_instantiate_async(const wasmtime_instance_pre_t *instance_pre,
	wasmtime_context_t *store, wasmtime_instance_t *instance, wasm_trap_t **trap_ret, wasmtime_error_t **error_ret);
extern wasmtime_call_future_t *wasmtime_func_call_async(wasmtime_context_t *context,
	const wasmtime_func_t *func, const wasmtime_val_t *args, size_t nargs,
	wasmtime_val_t *results, size_t nresults, wasm_trap_t **trap_ret, wasmtime_error_t **error_ret);
extern bool wasmtime_call_future_poll(wasmtime_call_future_t *future);
extern void wasmtime_call_future_delete(wasmtime_call_future_t *future);

extern bool wasmtime_instance_export_get(wasmtime_context_t *store, const wasmtime_instance_t *instance,
	const char *name, size_t name_len, wasmtime_extern_t *item);
extern bool wasmtime_caller_export_get(wasmtime_caller_t *caller, const char *name, size_t name_len,
	wasmtime_extern_t *item);
extern wasmtime_context_t *wasmtime_caller_context(wasmtime_caller_t *caller);
extern uint8_t *wasmtime_memory_data(const wasmtime_context_t *store, const wasmtime_memory_t *memory);
extern size_t wasmtime_memory_data_size(const wasmtime_context_t *store, const wasmtime_memory_t *memory);

extern wasm_valtype_t *wasm_valtype_new(uint8_t kind);
extern void wasm_valtype_vec_new(wasm_valtype_vec_t *out, size_t size, wasm_valtype_t *const data[]);
extern wasm_functype_t *wasm_functype_new(wasm_valtype_vec_t *params, wasm_valtype_vec_t *results);
extern void wasm_functype_delete(wasm_functype_t *ty);

extern wasm_trap_t *wasmtime_trap_new(const char *msg, size_t msg_len);
extern bool wasmtime_trap_code(const wasm_trap_t *trap, uint8_t *code);
extern void wasm_trap_message(const wasm_trap_t *trap, wasm_byte_vec_t *out);
extern void wasm_trap_trace(const wasm_trap_t *trap, wasm_frame_vec_t *out);
extern void wasm_trap_delete(wasm_trap_t *trap);
extern uint32_t wasm_frame_func_index(const wasm_frame_t *frame);
extern size_t wasm_frame_module_offset(const wasm_frame_t *frame);
extern const wasm_byte_vec_t *wasmtime_frame_func_name(const wasm_frame_t *frame);
extern void wasm_frame_vec_delete(wasm_frame_vec_t *frames);
extern void wasmtime_error_message(const wasmtime_error_t *error, wasm_byte_vec_t *message);
extern bool wasmtime_error_exit_status(const wasmtime_error_t *error, int *status);
extern void wasmtime_error_delete(wasmtime_error_t *error);
extern void wasm_byte_vec_delete(wasm_byte_vec_t *vec);

// wl_wait is poll_oneoff as it waits for Go.
typedef struct {
	int pending;           // a poll_oneoff waits for its answer (wl_answer)
	int answered;
	int killed;            // the answer: trap
	int32_t errno_;        // the answer otherwise
	int32_t in, out, nsubs, nevents;
	uint8_t *mem;
	size_t memlen;
	wasmtime_val_t *results;
	wasm_trap_t **trap;
} wl_wait;

// wl_run is one instance's wasm as it runs: its instantiation or its
// _start call, a future polled from Go.
typedef struct {
	wasmtime_call_future_t *future;
	wasmtime_instance_t instance;
	wasmtime_func_t start;
	wasmtime_memory_t memory;
	int has_start, has_memory;
	wasm_trap_t *trap;
	wasmtime_error_t *error;
	wl_wait wait;
} wl_run;

// wl_outcome is how a future ended, for Go.
typedef struct {
	int failed;       // an error or a trap came
	int is_trap;
	int exited;       // the error is WASI's exit
	int status;
	int has_code;
	uint8_t code;
	char *message;    // malloc'd; NULL: none
	int has_frame;
	uint32_t func_index;
	size_t module_offset;
	char *func_name;  // malloc'd; NULL: none
} wl_outcome;

// The run the calling thread polls, for poll_oneoff (it runs on the
// fiber, on that thread).
static __thread wl_run *wl_current;

static bool wl_answered(void *env) {
	wl_wait *w = env;
	if (!w->answered) {
		return false;
	}
	if (w->killed) {
		static const char msg[] = "killed while asleep in poll_oneoff";
		*w->trap = wasmtime_trap_new(msg, sizeof msg - 1);
	} else {
		w->results[0].kind = WL_I32;
		w->results[0].of.i32 = w->errno_;
	}
	w->pending = 0;
	w->answered = 0;
	return true;
}

static bool wl_now(void *env) { return true; }

static void wl_poll_oneoff(void *env, wasmtime_caller_t *caller, const wasmtime_val_t *args, size_t nargs,
		wasmtime_val_t *results, size_t nresults, wasm_trap_t **trap_ret, wasmtime_async_continuation_t *cont) {
	wl_run *r = wl_current;
	wasmtime_extern_t mem;
	cont->env = NULL;
	cont->finalizer = NULL;
	cont->callback = wl_now;
	if (r == NULL) {
		static const char msg[] = "poll_oneoff called outside an instance";
		*trap_ret = wasmtime_trap_new(msg, sizeof msg - 1);
		return;
	}
	if (!wasmtime_caller_export_get(caller, "memory", 6, &mem) || mem.kind != WL_EXTERN_MEMORY) {
		results[0].kind = WL_I32;
		results[0].of.i32 = WL_ERRNO_FAULT;
		return;
	}
	wasmtime_context_t *cx = wasmtime_caller_context(caller);
	wl_wait *w = &r->wait;
	w->mem = wasmtime_memory_data(cx, &mem.of.memory);
	w->memlen = wasmtime_memory_data_size(cx, &mem.of.memory);
	w->in = args[0].of.i32;
	w->out = args[1].of.i32;
	w->nsubs = args[2].of.i32;
	w->nevents = args[3].of.i32;
	w->results = results;
	w->trap = trap_ret;
	w->answered = 0;
	w->killed = 0;
	w->pending = 1;
	cont->callback = wl_answered;
	cont->env = w;
}

static void wl_config_async(void *config) { wasmtime_config_async_support_set(config, true); }

static wasmtime_error_t *wl_define_poll_oneoff(void *linker) {
	wasm_valtype_vec_t params, results;
	wasm_valtype_t *ps[4] = {wasm_valtype_new(WL_I32), wasm_valtype_new(WL_I32), wasm_valtype_new(WL_I32), wasm_valtype_new(WL_I32)};
	wasm_valtype_t *rs[1] = {wasm_valtype_new(WL_I32)};
	wasm_valtype_vec_new(&params, 4, ps);
	wasm_valtype_vec_new(&results, 1, rs);
	wasm_functype_t *ty = wasm_functype_new(&params, &results);
	wasmtime_error_t *err = wasmtime_linker_define_async_func(linker, "wasi_snapshot_preview1", 22,
		"poll_oneoff", 11, ty, wl_poll_oneoff, NULL, NULL);
	wasm_functype_delete(ty);
	return err;
}

static wl_run *wl_new(void) { return calloc(1, sizeof(wl_run)); }

static void wl_clear(wl_run *r) {
	if (r->future != NULL) {
		wasmtime_call_future_delete(r->future);
		r->future = NULL;
	}
	if (r->trap != NULL) {
		wasm_trap_delete(r->trap);
		r->trap = NULL;
	}
	if (r->error != NULL) {
		wasmtime_error_delete(r->error);
		r->error = NULL;
	}
}

static void wl_free(wl_run *r) {
	wl_clear(r);
	free(r);
}

static void wl_instantiate(wl_run *r, void *linker, void *cx, void *module) {
	r->future = wasmtime_linker_instantiate_async(linker, cx, module, &r->instance, &r->trap, &r->error);
}

// wl_pre resolves module's imports in linker once; NULL: they do not
// resolve (its instantiation by the linker says why).
static wasmtime_instance_pre_t *wl_pre(void *linker, void *module) {
	wasmtime_instance_pre_t *pre = NULL;
	wasmtime_error_t *err = wasmtime_linker_instantiate_pre(linker, module, &pre);
	if (err != NULL) {
		wasmtime_error_delete(err);
		return NULL;
	}
	return pre;
}

static void wl_instantiate_pre(wl_run *r, wasmtime_instance_pre_t *pre, void *cx) {
	r->future = wasmtime_instance_pre_instantiate_async(pre, cx, &r->instance, &r->trap, &r->error);
}

// wl_exports finds _start and the exported memory once instantiated.
static void wl_exports(wl_run *r, void *cx) {
	wasmtime_extern_t item;
	if (wasmtime_instance_export_get(cx, &r->instance, "_start", 6, &item) && item.kind == WL_EXTERN_FUNC) {
		r->start = item.of.func;
		r->has_start = 1;
	}
	if (wasmtime_instance_export_get(cx, &r->instance, "memory", 6, &item) && item.kind == WL_EXTERN_MEMORY) {
		r->memory = item.of.memory;
		r->has_memory = 1;
	}
}

static void wl_call_start(wl_run *r, void *cx) {
	r->future = wasmtime_func_call_async(cx, &r->start, NULL, 0, NULL, 0, &r->trap, &r->error);
}

static bool wl_poll(wl_run *r) {
	wl_current = r;
	bool done = wasmtime_call_future_poll(r->future);
	wl_current = NULL;
	return done;
}

static void wl_answer(wl_run *r, int32_t errno_, int killed) {
	r->wait.errno_ = errno_;
	r->wait.killed = killed;
	r->wait.answered = 1;
}

static size_t wl_memory_size(wl_run *r, void *cx) {
	return r->has_memory ? wasmtime_memory_data_size(cx, &r->memory) : 0;
}

static char *wl_string(const wasm_byte_vec_t *v) {
	size_t n = v->size;
	while (n > 0 && v->data[n - 1] == 0) {
		n--;
	}
	char *s = malloc(n + 1);
	if (s != NULL) {
		memcpy(s, v->data, n);
		s[n] = 0;
	}
	return s;
}

// wl_end deletes the ended future and says how it ended.
static void wl_end(wl_run *r, wl_outcome *o) {
	wasmtime_call_future_delete(r->future);
	r->future = NULL;
	memset(o, 0, sizeof *o);
	wasm_byte_vec_t msg;
	if (r->error != NULL) {
		o->failed = 1;
		o->exited = wasmtime_error_exit_status(r->error, &o->status);
		wasmtime_error_message(r->error, &msg);
		o->message = wl_string(&msg);
		wasm_byte_vec_delete(&msg);
	} else if (r->trap != NULL) {
		o->failed = 1;
		o->is_trap = 1;
		o->has_code = wasmtime_trap_code(r->trap, &o->code);
		wasm_trap_message(r->trap, &msg);
		o->message = wl_string(&msg);
		wasm_byte_vec_delete(&msg);
		wasm_frame_vec_t frames;
		wasm_trap_trace(r->trap, &frames);
		if (frames.size > 0) {
			o->has_frame = 1;
			o->func_index = wasm_frame_func_index(frames.data[0]);
			o->module_offset = wasm_frame_module_offset(frames.data[0]);
			const wasm_byte_vec_t *name = wasmtime_frame_func_name(frames.data[0]);
			if (name != NULL) {
				o->func_name = wl_string(name);
			}
		}
		wasm_frame_vec_delete(&frames);
	}
	wl_clear(r);
}
*/
import "C"

import (
	"errors"
	"fmt"
	"unsafe"

	wt "github.com/bytecodealliance/wasmtime-go/v39"

	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
)

// first is the first field of a wasmtime-go object, its C pointer (as of
// v39.0.1; see the file's doc).
func first[T any](p *T) unsafe.Pointer { return *(*unsafe.Pointer)(unsafe.Pointer(p)) }

// setAsync turns on async support in cfg: instances of its Engine run on
// fibers, through the functions below only.
func setAsync(cfg *wt.Config) { C.wl_config_async(first(cfg)) }

// defineAsyncPollOneoff defines poll_oneoff in l as the async host
// function of this file.
func defineAsyncPollOneoff(l *wt.Linker) error {
	if err := C.wl_define_poll_oneoff(first(l)); err != nil {
		var msg C.wasm_byte_vec_t
		C.wasmtime_error_message(err, &msg)
		s := C.GoStringN(msg.data, C.int(msg.size))
		C.wasm_byte_vec_delete(&msg)
		C.wasmtime_error_delete(err)
		return errors.New(s)
	}
	return nil
}

// fiber is one instance's wasm in its store: its instantiation, then its
// _start, each a future driven to its end on the calling goroutine.
type fiber struct {
	run   *C.wl_run
	store *wt.Store
}

func newFiber(store *wt.Store) *fiber {
	return &fiber{run: C.wl_new(), store: store}
}

// context is the store's context; wasmtime-go's Store keeps it alive.
func (f *fiber) context() unsafe.Pointer { return unsafe.Pointer(f.store.Context()) }

// instancePre is a module's imports resolved in a Linker once, for each
// of its instantiations (the linker's own instantiate resolves them
// every time).
type instancePre struct{ p *C.wasmtime_instance_pre_t }

// newInstancePre resolves mod's imports in l; nil when they do not
// resolve.
func newInstancePre(l *wt.Linker, mod *wt.Module) *instancePre {
	p := C.wl_pre(first(l), first(mod))
	if p == nil {
		return nil
	}
	return &instancePre{p}
}

// delete frees it; no instantiation from it may be under way.
func (p *instancePre) delete() { C.wasmtime_instance_pre_delete(p.p) }

// instantiate instantiates mod in the store and finds its exports: from
// pre if there is one, with l otherwise; p (nil: none yet) answers
// poll_oneoff in its start function.
func (f *fiber) instantiate(l *wt.Linker, mod *wt.Module, pre *instancePre, p *engine.Poller) error {
	if pre != nil {
		C.wl_instantiate_pre(f.run, pre.p, f.context())
	} else {
		C.wl_instantiate(f.run, first(l), f.context(), first(mod))
	}
	if err := f.drive(p); err != nil {
		return err
	}
	C.wl_exports(f.run, f.context())
	return nil
}

func (f *fiber) hasStart() bool { return f.run.has_start != 0 }

// call runs _start to its end, p answering poll_oneoff.
func (f *fiber) call(p *engine.Poller) error {
	C.wl_call_start(f.run, f.context())
	return f.drive(p)
}

// drive polls the future to its end. While poll_oneoff waits, the future
// returns pending; the wait is p's, on this goroutine, which leaves its
// thread for it once launched (engine.Mobile). Without p (a handler's
// start function, before its request) poll_oneoff fails with EINVAL.
func (f *fiber) drive(p *engine.Poller) error {
	for !C.wl_poll(f.run) {
		w := &f.run.wait
		if w.pending == 0 || w.answered != 0 {
			continue
		}
		errno, killed := uint16(engine.ErrnoInval), false
		if p != nil {
			mem := unsafe.Slice((*byte)(unsafe.Pointer(w.mem)), int(w.memlen))
			errno, killed = p.PollOneoff(mem, uint32(w.in), uint32(w.out), uint32(w.nsubs), uint32(w.nevents), nil)
		}
		k := C.int(0)
		if killed {
			k = 1
		}
		C.wl_answer(f.run, C.int32_t(errno), k)
	}
	var o C.wl_outcome
	C.wl_end(f.run, &o)
	return outcomeError(&o)
}

// memorySize is the exported memory's size in bytes (0 without one).
func (f *fiber) memorySize() int64 {
	return int64(C.wl_memory_size(f.run, f.context()))
}

// free frees the C side; the future has ended or never began.
func (f *fiber) free() {
	C.wl_free(f.run)
	f.run = nil
}

// runError is how wasm ended when it did not return: wasmtime's error
// (WASI's exit among them) or a trap.
type runError struct {
	msg    string
	exited bool
	status int32
	trap   bool
	code   int // the trap's code; -1: none
	frame  string
}

func (e *runError) Error() string { return e.msg }

// outcomeError reads and frees o.
func outcomeError(o *C.wl_outcome) error {
	if o.failed == 0 {
		return nil
	}
	e := &runError{exited: o.exited != 0, status: int32(o.status), trap: o.is_trap != 0, code: -1}
	if o.message != nil {
		e.msg = C.GoString(o.message)
		C.free(unsafe.Pointer(o.message))
	}
	if o.has_code != 0 {
		e.code = int(o.code)
	}
	if o.has_frame != 0 {
		if o.func_name != nil {
			e.frame = " in " + C.GoString(o.func_name)
			C.free(unsafe.Pointer(o.func_name))
		} else {
			e.frame = fmt.Sprintf(" in function #%d", uint32(o.func_index))
		}
		e.frame += fmt.Sprintf(" at offset 0x%x", uint64(o.module_offset))
	}
	return e
}
