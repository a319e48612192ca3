//go:build wasip1

// Command hello is a test module: it prints its arguments after argv[0] and
// the GREETING variable on stdout, one line on stderr, and exits with the
// code in EXIT_CODE (default 0). With READ_FILE set it prints that file's
// content; with WRITE_FILE set it writes "written" to that file; with
// LINK="path=target" it first replaces path by a symlink to target (what a
// hostile module can do in its volume); any failure is reported on stderr
// with exit code 4.
package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

func main() {
	fmt.Println("args:", strings.Join(os.Args[1:], " "))
	fmt.Println("greeting:", os.Getenv("GREETING"))
	if l := os.Getenv("LINK"); l != "" {
		path, target, _ := strings.Cut(l, "=")
		_ = os.RemoveAll(path)
		if err := os.Symlink(target, path); err != nil {
			fmt.Fprintln(os.Stderr, "link:", err)
			os.Exit(4)
		}
		fmt.Println("linked:", path, "->", target)
	}
	if p := os.Getenv("READ_FILE"); p != "" {
		b, err := os.ReadFile(p)
		if err != nil {
			fmt.Fprintln(os.Stderr, "read:", err)
			os.Exit(4)
		}
		fmt.Printf("read: %s\n", b)
	}
	if p := os.Getenv("WRITE_FILE"); p != "" {
		if err := os.WriteFile(p, []byte("written"), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "write:", err)
			os.Exit(4)
		}
		fmt.Println("wrote:", p)
	}
	fmt.Fprintln(os.Stderr, "hello on stderr")
	code := 0
	if s := os.Getenv("EXIT_CODE"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			fmt.Fprintln(os.Stderr, "EXIT_CODE:", err)
			os.Exit(2)
		}
		code = n
	}
	os.Exit(code)
}
