// Command hello is wasmlet's example module: a WASI program built from Go
// with GOOS=wasip1 GOARCH=wasm, pushed as an OCI artifact and run as a pod.
//
// It greets, prints its arguments and a few environment variables the pod
// sets, counts to COUNT (default 3), pausing SLEEP (a Go duration) between
// counts, and exits with EXIT_CODE (default 0). To show volumes at work it
// writes WRITE ("path=content") and prints the files named in CAT
// (comma-separated).
package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// version is set at link time (-ldflags "-X main.version=v2") to make
// module builds that differ only in it, e.g. for a rolling update.
var version = "v1"

func main() {
	name := os.Getenv("POD_NAME")
	if name == "" {
		name = "somewhere"
	}
	fmt.Printf("Hello from WebAssembly, running as pod %s!\n", name)
	fmt.Printf("version %s\n", version)
	fmt.Printf("argv: %q\n", os.Args)
	if g := os.Getenv("GREETING"); g != "" {
		fmt.Println(g)
	}
	if w := os.Getenv("WRITE"); w != "" {
		path, content, _ := strings.Cut(w, "=")
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			fmt.Fprintf(os.Stderr, "write %s: %v\n", path, err)
			os.Exit(4)
		}
		fmt.Printf("wrote %s\n", path)
	}
	for _, path := range strings.Split(os.Getenv("CAT"), ",") {
		if path == "" {
			continue
		}
		b, err := os.ReadFile(path)
		if err != nil {
			fmt.Fprintf(os.Stderr, "read %s: %v\n", path, err)
			os.Exit(4)
		}
		fmt.Printf("%s: %s\n", path, b)
	}
	count, _ := strconv.Atoi(os.Getenv("COUNT"))
	if count == 0 {
		count = 3
	}
	pause, _ := time.ParseDuration(os.Getenv("SLEEP"))
	for i := 1; i <= count; i++ {
		fmt.Printf("count %d\n", i)
		time.Sleep(pause)
	}
	code, _ := strconv.Atoi(os.Getenv("EXIT_CODE"))
	if code != 0 {
		fmt.Fprintf(os.Stderr, "exiting with code %d as asked\n", code)
	}
	os.Exit(code)
}
