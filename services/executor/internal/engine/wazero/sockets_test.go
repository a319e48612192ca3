package wazero

import (
	"context"
	"net"
	"testing"
	"time"

	wz "github.com/tetratelabs/wazero"

	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
)

// TestAdoptHanded: the module's listener fd is the handed socket, not the
// placeholder wazero opened, which is closed; closing the module closes
// the handed socket.
func TestAdoptHanded(t *testing.T) {
	ctx := context.Background()
	handed, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	f, err := handed.File()
	if err != nil {
		t.Fatal(err)
	}
	addr := handed.Addr().String()
	ls := []engine.Listener{{Name: "http", File: f}}

	rt := wz.NewRuntime(ctx)
	defer rt.Close(ctx)
	empty := []byte{0, 'a', 's', 'm', 1, 0, 0, 0}
	mod, err := rt.InstantiateWithConfig(withListeners(ctx, ls, placeholderHost()), empty, wz.NewModuleConfig().WithName(""))
	if err != nil {
		t.Fatal(err)
	}
	socks := &sockets{}
	files, err := socks.filesOf(mod)
	if err != nil {
		t.Fatal(err)
	}
	c, ok := files.socket(3)
	if !ok {
		t.Fatal("no placeholder at fd 3")
	}
	placeholder := c.(*net.TCPListener).Addr().String()
	if err := adoptHanded(socks, mod, 3, ls); err != nil {
		t.Fatal(err)
	}
	f.Close()
	handed.Close() // the module's copy is the only one now
	c, ok = files.socket(3)
	if !ok || c.(*net.TCPListener).Addr().String() != addr {
		t.Fatalf("fd 3 is %v, want the handed %s", c, addr)
	}
	if dialable(placeholder) {
		t.Errorf("the placeholder %s still accepts connections", placeholder)
	}
	if !dialable(addr) {
		t.Errorf("the handed socket %s does not accept connections", addr)
	}
	mod.Close(ctx)
	if dialable(addr) {
		t.Errorf("the handed socket %s outlived its module", addr)
	}
}

func dialable(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// BenchmarkSocketLookup: what poll_oneoff pays to reach the host socket
// behind one of a module's fds.
func BenchmarkSocketLookup(b *testing.B) {
	ctx := context.Background()
	rt := wz.NewRuntime(ctx)
	defer rt.Close(ctx)
	empty := []byte{0, 'a', 's', 'm', 1, 0, 0, 0}
	mod, err := rt.InstantiateWithConfig(withListeners(ctx, []engine.Listener{{Name: "http", Host: "127.0.0.1"}}, placeholderHost()), empty, wz.NewModuleConfig().WithName(""))
	if err != nil {
		b.Fatal(err)
	}
	defer mod.Close(ctx)
	files, err := (&sockets{}).filesOf(mod)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		c, ok := files.socket(3)
		if !ok {
			b.Fatal("no listener at fd 3")
		}
		if _, ok := hostFD(c); !ok {
			b.Fatal("no descriptor")
		}
	}
}
