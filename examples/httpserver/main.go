// Command httpserver is wasmlet's example Wasm server: a Go net/http hello
// server built with GOOS=wasip1 GOARCH=wasm. WASI preview 1 cannot open a
// listening socket, so the executor opens one for each of the container's
// TCP ports and hands them over, named with the systemd socket-activation
// convention:
//
//	LISTEN_FDS=2  LISTEN_FDNAMES=http:metrics  LISTEN_FDS_START=3
//
// means fd 3 is the port named http and fd 4 the one named metrics
// (LISTEN_FDS_START is wasmlet's: WASI numbers preopened directories
// first, so the sockets start at 3 only in a pod without volumes).
//
// It serves every socket it is given: GET / answers "Hello from
// WebAssembly", /healthz "ok", and /hang hangs the whole server, to show
// what a liveness probe is for (a Go wasip1 module runs its goroutines on
// one thread that only yields when it blocks, so one busy loop stops them
// all). Without sockets it says so and exits 2; run natively (go run .),
// it listens on $ADDR instead.
package main

import (
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// spins counts /hang's turns (its loop has an effect, so it stays a loop).
var spins uint64

func main() {
	ls, err := listeners()
	if err != nil {
		fmt.Fprintln(os.Stderr, "httpserver:", err)
		os.Exit(2)
	}
	name := os.Getenv("POD_NAME")
	if name == "" {
		name = "somewhere"
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "Hello from WebAssembly, pod %s!\n", name)
	})
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/hang", func(w http.ResponseWriter, r *http.Request) {
		log.Printf("hanging, as %s asked: only a restart helps now", r.RemoteAddr)
		for {
			spins++
		}
	})
	errs := make(chan error, len(ls))
	for _, l := range ls {
		log.Printf("serving on %s", l.Addr())
		go func() { errs <- http.Serve(l, mux) }()
	}
	log.Fatal(<-errs)
}

// listeners are the sockets the executor handed over (LISTEN_FDS), or
// one on $ADDR where the platform can listen itself.
func listeners() ([]net.Listener, error) {
	n, err := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	if err != nil || n <= 0 {
		if addr := os.Getenv("ADDR"); addr != "" {
			l, err := net.Listen("tcp", addr)
			if err != nil {
				return nil, err
			}
			return []net.Listener{l}, nil
		}
		return nil, fmt.Errorf("no listening socket: LISTEN_FDS is %q; run it as a wasmlet pod with a TCP containerPort (the executor opens the port and hands it over), or natively with ADDR=host:port", os.Getenv("LISTEN_FDS"))
	}
	start := 3 // systemd's SD_LISTEN_FDS_START
	if s, err := strconv.Atoi(os.Getenv("LISTEN_FDS_START")); err == nil {
		start = s
	}
	names := strings.Split(os.Getenv("LISTEN_FDNAMES"), ":")
	var ls []net.Listener
	for i := range n {
		fd := start + i
		name := fmt.Sprintf("fd%d", fd)
		if i < len(names) && names[i] != "" {
			name = names[i]
		}
		// Without non-blocking mode, accept would block the whole module
		// (its goroutines share one thread).
		if err := syscall.SetNonblock(fd, true); err != nil {
			return nil, fmt.Errorf("socket %s (fd %d): %v", name, fd, err)
		}
		l, err := net.FileListener(os.NewFile(uintptr(fd), name))
		if err != nil {
			return nil, fmt.Errorf("socket %s (fd %d): %v", name, fd, err)
		}
		ls = append(ls, l)
	}
	return ls, nil
}
