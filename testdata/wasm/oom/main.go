//go:build wasip1

// Command oom is a test module that allocates memory, touching it, until
// the allocation fails.
package main

import "fmt"

func main() {
	var keep [][]byte
	for i := 0; ; i++ {
		b := make([]byte, 1<<20)
		for j := range b {
			b[j] = byte(j)
		}
		keep = append(keep, b)
		if i%16 == 0 {
			fmt.Println("allocated MiB:", len(keep))
		}
	}
}
