package wazero

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"reflect"
	goruntime "runtime"
	"sync"
	"syscall"
	"unsafe"

	wz "github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	experimentalsys "github.com/tetratelabs/wazero/experimental/sys"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"

	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
)

// Sockets. wazero hands a module the TCP listeners of experimental/sock,
// opened by net.Listen inside InstantiateModule (Start runs that on a
// thread in the spec's network namespace), and accepts connections on
// them. Two of its WASI functions are replaced, for which the engine must
// reach the host socket behind a module's fd:
//   - poll_oneoff (engine.Poller): wazero's reports every socket ready at
//     once, so a Go guest's netpoll spun a core while its server idled;
//     ours waits in poll(2) on the sockets, and a kill ends the wait.
//   - fd_close: wazero's close of an accepted connection marks it closed
//     and never closes the socket (its Close calls Shutdown(SHUT_RDWR),
//     which calls Close, which returns at once as closed): the peer saw no
//     FIN, and the descriptor stayed open, until a garbage collection. Ours
//     closes it after wazero's file table has let it go.
//
// A listener handed over already open (engine.Listener.File: the node
// agent opened it in a pod's network namespace, which the executor may not
// enter) cannot be given to wazero, which opens its listeners itself. So
// wazero opens a placeholder on loopback, port 0, in the executor's own
// namespace, and adoptHanded swaps, in the placeholder's file, the
// *net.TCPListener for one made from the handed socket, and closes the
// placeholder, before the module runs.
//
// wazero offers no public way to the host socket of a module's fd, so
// files reads its table through reflection: the module's Sys field, its
// FS() and that one's LookupFile and CloseFile methods, and the
// *net.TCPListener or *net.TCPConn of the file wazero made (fields tl,
// tc). This is wazero v1.12's layout; New checks the methods and the
// listener's field, which adoptHanded writes (checkFiles), and TestServe
// a connection's (a server idle with a connection open uses next to no
// CPU: its poll_oneoff waits on the connection), so that an upgrade that
// moves them fails there rather than spin or leak.

// files is a module's file table, as far as the engine reaches it.
type files struct {
	// lookup is the FS context's LookupFile, its *FileEntry as a pointer
	// to an entry (of type entry): called directly, not through
	// reflect.Value.Call, which lays out a frame and boxes the results on
	// every call, for every socket poll_oneoff waits on.
	lookup func(fd int32) (unsafe.Pointer, bool)
	entry  reflect.Type  // FileEntry
	close  reflect.Value // the FS context's CloseFile
	file   int           // the index of FileEntry's File
	// kinds keeps, by the type of the struct behind a File, the indices of
	// its socket fields: poll_oneoff looks up every socket it waits on,
	// and a field found by name is found by a search of the struct's
	// fields, each time.
	kinds *sync.Map // reflect.Type → socketFields
}

// socketFields are the indices of a file struct's *net.TCPListener field
// (tl) and *net.TCPConn field (tc); -1: it has none.
type socketFields struct{ tl, tc int }

var (
	listenerType = reflect.TypeFor[*net.TCPListener]()
	connType     = reflect.TypeFor[*net.TCPConn]()
)

// filesOf reaches mod's file table.
func filesOf(mod api.Module) (files, error) {
	v := reflect.ValueOf(mod)
	if v.Kind() != reflect.Pointer || v.Elem().Kind() != reflect.Struct {
		return files{}, fmt.Errorf("wazero module is a %T", mod)
	}
	sys := v.Elem().FieldByName("Sys")
	if !sys.IsValid() || sys.Kind() != reflect.Pointer || sys.IsNil() {
		return files{}, errors.New("wazero module has no Sys context")
	}
	fsm := sys.MethodByName("FS")
	if !fsm.IsValid() || fsm.Type().NumIn() != 0 || fsm.Type().NumOut() != 1 {
		return files{}, errors.New("wazero Sys context has no FS()")
	}
	fs := fsm.Call(nil)[0]
	lookup, hasLookup := fs.Type().MethodByName("LookupFile")
	closeFile := fs.MethodByName("CloseFile")
	if fs.Kind() != reflect.Pointer || fs.IsNil() || !hasLookup {
		return files{}, errors.New("wazero FS context has no LookupFile(int32) (*FileEntry, bool)")
	}
	if lt := lookup.Type; lt.NumIn() != 2 || lt.In(1).Kind() != reflect.Int32 || lt.NumOut() != 2 ||
		lt.Out(1).Kind() != reflect.Bool || lt.Out(0).Kind() != reflect.Pointer || lt.Out(0).Elem().Kind() != reflect.Struct {
		return files{}, errors.New("wazero FS context has no LookupFile(int32) (*FileEntry, bool)")
	}
	entry := lookup.Type.Out(0).Elem()
	file, ok := entry.FieldByName("File")
	if !ok || file.Type.Kind() != reflect.Interface || len(file.Index) != 1 {
		return files{}, errors.New("wazero FileEntry has no File")
	}
	if !closeFile.IsValid() || closeFile.Type().NumIn() != 1 || closeFile.Type().In(0).Kind() != reflect.Int32 ||
		closeFile.Type().NumOut() != 1 || closeFile.Type().Out(0).Kind() != reflect.Uint16 {
		return files{}, errors.New("wazero FS context has no CloseFile(int32) Errno")
	}
	return files{lookup: bindLookup(fs.UnsafePointer(), lookup.Func), entry: entry, close: closeFile, file: file.Index[0], kinds: new(sync.Map)}, nil
}

// bindLookup is method, checked to be func(*FSContext, int32)
// (*FileEntry, bool), bound to its receiver fs: a function of pointers
// and an int32 is called the same whatever the pointers' types.
func bindLookup(fs unsafe.Pointer, method reflect.Value) func(int32) (unsafe.Pointer, bool) {
	fn := method.Interface()
	var call func(fs unsafe.Pointer, fd int32) (unsafe.Pointer, bool)
	// A func is one word in an interface: the func value itself.
	*(*unsafe.Pointer)(unsafe.Pointer(&call)) = (*[2]unsafe.Pointer)(unsafe.Pointer(&fn))[1]
	return func(fd int32) (unsafe.Pointer, bool) { return call(fs, fd) }
}

// socketFieldsOf are the socket fields of file structs of type t.
func (f files) socketFieldsOf(t reflect.Type) socketFields {
	if sf, ok := f.kinds.Load(t); ok {
		return sf.(socketFields)
	}
	sf := socketFields{tl: -1, tc: -1}
	if tl, ok := t.FieldByName("tl"); ok && tl.Type == listenerType && len(tl.Index) == 1 {
		sf.tl = tl.Index[0]
	}
	if tc, ok := t.FieldByName("tc"); ok && tc.Type == connType && len(tc.Index) == 1 {
		sf.tc = tc.Index[0]
	}
	f.kinds.Store(t, sf)
	return sf
}

// socket is the host socket of fd: a listener or an accepted connection.
func (f files) socket(fd uint32) (syscall.Conn, bool) {
	s, ok := f.fileStruct(fd)
	if !ok {
		return nil, false
	}
	if tl, ok := f.listenerIn(s); ok {
		return (*net.TCPListener)(tl.UnsafePointer()), true
	}
	if sf := f.socketFieldsOf(s.Type()); sf.tc >= 0 {
		if tc := s.Field(sf.tc); !tc.IsNil() {
			return (*net.TCPConn)(tc.UnsafePointer()), true
		}
	}
	return nil, false
}

// fileStruct is the struct of the file wazero made for fd.
func (f files) fileStruct(fd uint32) (reflect.Value, bool) {
	if fd > 1<<31-1 {
		return reflect.Value{}, false
	}
	e, ok := f.lookup(int32(fd))
	if !ok || e == nil {
		return reflect.Value{}, false
	}
	file := reflect.NewAt(f.entry, e).Elem().Field(f.file)
	if file.IsNil() {
		return reflect.Value{}, false
	}
	d := file.Elem()
	if d.Kind() != reflect.Pointer || d.IsNil() || d.Elem().Kind() != reflect.Struct {
		return reflect.Value{}, false
	}
	return d.Elem(), true
}

// listenerField is the *net.TCPListener field of fd's file, if it is a
// listener (addressable: the struct is reached through its pointer).
func (f files) listenerField(fd uint32) (reflect.Value, bool) {
	s, ok := f.fileStruct(fd)
	if !ok {
		return reflect.Value{}, false
	}
	return f.listenerIn(s)
}

// listenerIn is the *net.TCPListener field of the file struct s, if it
// is a listener.
func (f files) listenerIn(s reflect.Value) (reflect.Value, bool) {
	if sf := f.socketFieldsOf(s.Type()); sf.tl >= 0 {
		if tl := s.Field(sf.tl); !tl.IsNil() && tl.CanAddr() {
			return tl, true
		}
	}
	return reflect.Value{}, false
}

// adopt puts l in the place of the listener of fd's file, and returns the
// one it replaced.
func (f files) adopt(fd uint32, l *net.TCPListener) (*net.TCPListener, bool) {
	tl, ok := f.listenerField(fd)
	if !ok {
		return nil, false
	}
	p := (**net.TCPListener)(unsafe.Pointer(tl.UnsafeAddr()))
	old := *p
	*p = l
	return old, true
}

// adoptHanded puts each handed-over listener of ls (those with a File),
// whose fds start at first, in the place of the placeholder wazero opened
// for it, and closes the placeholder. On an error the listeners made so
// far are in the module's table, which closes them.
func adoptHanded(socks *sockets, mod api.Module, first int, ls []engine.Listener) error {
	for i, l := range ls {
		if l.File == nil {
			continue
		}
		f, err := socks.filesOf(mod)
		if err != nil {
			return fmt.Errorf("%w: handed listener %q: %v", engine.ErrListen, l.Name, err)
		}
		nl, err := net.FileListener(l.File)
		if err != nil {
			return fmt.Errorf("%w: handed listener %q: %v", engine.ErrListen, l.Name, err)
		}
		tl, ok := nl.(*net.TCPListener)
		if !ok {
			nl.Close()
			return fmt.Errorf("%w: handed listener %q is a %s listener, not TCP", engine.ErrListen, l.Name, nl.Addr().Network())
		}
		old, ok := f.adopt(uint32(first+i), tl)
		if !ok {
			tl.Close()
			return fmt.Errorf("%w: wazero did not put listener %q at fd %d", engine.ErrListen, l.Name, first+i)
		}
		old.Close()
	}
	return nil
}

// placeholderHost is where placeholders listen: loopback, or, in a
// network namespace whose loopback is down (an executor started with
// --isolate-network), every address of it, which is none.
func placeholderHost() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "0.0.0.0"
	}
	l.Close()
	return "127.0.0.1"
}

// closeFD is WASI's fd_close: wazero's, then the connection's own close.
func (f files) closeFD(fd uint32) uint16 {
	if fd > 1<<31-1 {
		return engine.ErrnoBadf
	}
	conn, _ := f.socket(fd)
	errno := experimentalsys.Errno(f.close.Call([]reflect.Value{reflect.ValueOf(int32(fd))})[0].Uint())
	if c, ok := conn.(*net.TCPConn); ok && errno == 0 {
		c.Close()
	}
	return wasiErrno(errno)
}

// wasiErrno is the WASI preview 1 errno of one of wazero's, as its WASI
// functions return them (those a close can end with; others are EIO).
func wasiErrno(e experimentalsys.Errno) uint16 {
	switch e {
	case 0:
		return 0
	case experimentalsys.EACCES:
		return 2
	case experimentalsys.EAGAIN:
		return 6
	case experimentalsys.EBADF:
		return engine.ErrnoBadf
	case experimentalsys.EINTR:
		return engine.ErrnoIntr
	case experimentalsys.EINVAL:
		return engine.ErrnoInval
	case experimentalsys.ENOSYS:
		return 52
	case experimentalsys.ENOTSOCK:
		return 57
	case experimentalsys.ENOTSUP:
		return 58
	case experimentalsys.EPERM:
		return 63
	}
	return 29 // EIO
}

// closeConns closes every accepted connection still in the table, before
// wazero closes the module (whose close of them does nothing, see above).
// fds are handed out lowest first, so the table ends before a long run of
// unused ones.
func (f files) closeConns() {
	const gap = 256
	for fd, miss := uint32(0), 0; miss < gap; fd++ {
		conn, ok := f.socket(fd)
		if !ok {
			if _, ok := f.lookup(int32(fd)); !ok {
				miss++
			}
			continue
		}
		miss = 0
		if c, ok := conn.(*net.TCPConn); ok {
			c.Close()
		}
	}
}

// hostFD is the descriptor of a socket; the module keeps it open while it
// waits in poll_oneoff (the module is single-threaded).
func hostFD(c syscall.Conn) (int, bool) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, false
	}
	h := -1
	if rc.Control(func(fd uintptr) { h = int(fd) }) != nil || h < 0 {
		return 0, false
	}
	return h, true
}

// sockets is an instance's part in the replaced functions, reached from
// the calls' context.
type sockets struct {
	poller    *engine.Poller
	memory    *linearMemory      // shared at the first wait (memory.go)
	listeners []*net.TCPListener // set before the run, read by a kill

	once  sync.Once
	files files
	err   error
}

// holdListeners keeps the n listeners from fd first on, so that a kill
// closes them (closeListeners): a module blocked in sock_accept on a
// listener it did not make non-blocking is blocked in Go's accept, which
// no interruption of wasm ends; the close does, and frees the port at
// once.
func (s *sockets) holdListeners(mod api.Module, first, n int) error {
	if n == 0 {
		return nil
	}
	f, err := s.filesOf(mod)
	if err != nil {
		return err
	}
	for fd := first; fd < first+n; fd++ {
		c, ok := f.socket(uint32(fd))
		l, isListener := c.(*net.TCPListener)
		if !ok || !isListener {
			return fmt.Errorf("wazero did not put listener %d of %d at fd %d", fd-first+1, n, fd)
		}
		s.listeners = append(s.listeners, l)
	}
	return nil
}

// closeListeners closes the listeners held; safe from any goroutine,
// more than once.
func (s *sockets) closeListeners() {
	for _, l := range s.listeners {
		l.Close()
	}
}

func (s *sockets) filesOf(mod api.Module) (files, error) {
	s.once.Do(func() { s.files, s.err = filesOf(mod) })
	return s.files, s.err
}

// defineWASI instantiates WASI preview 1 in rt with the functions above
// replaced.
func defineWASI(ctx context.Context, rt wz.Runtime) error {
	b := rt.NewHostModuleBuilder(wasi_snapshot_preview1.ModuleName)
	wasi_snapshot_preview1.NewFunctionExporter().ExportFunctions(b)
	i32 := api.ValueTypeI32
	b.NewFunctionBuilder().WithGoModuleFunction(api.GoModuleFunc(pollOneoff), []api.ValueType{i32, i32, i32, i32}, []api.ValueType{i32}).
		WithParameterNames("in", "out", "nsubscriptions", "result.nevents").Export("poll_oneoff")
	b.NewFunctionBuilder().WithGoModuleFunction(api.GoModuleFunc(fdClose), []api.ValueType{i32}, []api.ValueType{i32}).
		WithParameterNames("fd").Export("fd_close")
	exportEnviron(b) // handler.go
	_, err := b.Instantiate(ctx)
	return err
}

// maxKilledYields bounds the yields of a killed module's poll_oneoff to
// the goroutine that closes it.
const maxKilledYields = 1000

func pollOneoff(ctx context.Context, mod api.Module, stack []uint64) {
	s := socketsOf(ctx)
	if s != nil && s.memory != nil {
		s.memory.share()
	}
	var mem []byte
	ok := false
	if m := mod.Memory(); m != nil {
		mem, ok = m.Read(0, m.Size())
	}
	if s == nil || !ok {
		stack[0] = engine.ErrnoFault
		return
	}
	f, err := s.filesOf(mod)
	var host engine.HostFD
	if err == nil {
		host = func(fd uint32) (int, bool) {
			if c, ok := f.socket(fd); ok {
				return hostFD(c)
			}
			return 0, false
		}
	}
	errno, killed := s.poller.PollOneoff(mem, uint32(stack[0]), uint32(stack[1]), uint32(stack[2]), uint32(stack[3]), host)
	if killed {
		// The module stops at its next function call or loop once
		// wazero's watcher of its context has marked it closed; until
		// then it sees an interrupted wait, and a Go module polls again
		// at once: it would spin for the rest of its time slice (10 ms)
		// before that goroutine ran, per instance of a burst of kills.
		for i := 0; i < maxKilledYields && !mod.IsClosed(); i++ {
			goruntime.Gosched()
		}
		errno = engine.ErrnoIntr
	}
	stack[0] = uint64(errno)
}

// socketsOf is the sockets of the instance whose call ctx is, or nil.
func socketsOf(ctx context.Context) *sockets {
	if i := instanceOf(ctx); i != nil {
		return &i.socks
	}
	return nil
}

func fdClose(ctx context.Context, mod api.Module, stack []uint64) {
	s := socketsOf(ctx)
	if s == nil {
		stack[0] = engine.ErrnoBadf
		return
	}
	f, err := s.filesOf(mod)
	if err != nil {
		stack[0] = engine.ErrnoBadf
		return
	}
	stack[0] = uint64(f.closeFD(uint32(stack[0])))
}

// checkFiles reports whether the engine reaches a module's file table in
// this build of wazero, and a listener's socket in it, which adoptHanded
// replaces: New refuses to run without them (fd_close is ours). The
// listener is a placeholder on placeholder, port 0.
func checkFiles(ctx context.Context, placeholder string) error {
	rt := wz.NewRuntime(ctx)
	defer rt.Close(ctx)
	empty := []byte{0, 'a', 's', 'm', 1, 0, 0, 0}
	// File only marks the listener handed over: wazero opens a placeholder.
	mod, err := rt.InstantiateWithConfig(withListeners(ctx, []engine.Listener{{Name: "check", File: os.Stdin}}, placeholder), empty, wz.NewModuleConfig().WithName(""))
	if err != nil {
		return err
	}
	defer mod.Close(ctx)
	f, err := filesOf(mod)
	if err != nil {
		return err
	}
	if _, ok := f.socket(0); ok {
		return errors.New("stdin is a socket")
	}
	c, ok := f.socket(3)
	if _, isListener := c.(*net.TCPListener); !ok || !isListener {
		return errors.New("the listener at fd 3 is not reached")
	}
	old, ok := f.adopt(3, c.(*net.TCPListener)) // itself: the field is writable
	if !ok || old != c {
		return errors.New("the listener at fd 3 cannot be replaced")
	}
	return nil
}
