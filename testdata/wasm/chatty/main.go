//go:build wasip1

// Command chatty is a test module that prints argv[1] numbered lines on
// stdout as fast as it can.
package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
)

func main() {
	n := 1000
	if len(os.Args) > 1 {
		v, err := strconv.Atoi(os.Args[1])
		if err != nil {
			fmt.Fprintln(os.Stderr, "argv[1]:", err)
			os.Exit(2)
		}
		n = v
	}
	w := bufio.NewWriter(os.Stdout)
	for i := 1; i <= n; i++ {
		fmt.Fprintf(w, "line %d\n", i)
	}
	w.Flush()
}
