//go:build wasip1

// Command spin is a test module that computes forever without a host call,
// so that only the engine's interruption can stop it.
package main

import "fmt"

func main() {
	fmt.Println("spinning")
	x := uint64(1)
	for {
		x = x*6364136223846793005 + 1442695040888963407
		if x == 0 {
			break
		}
	}
	fmt.Println(x)
}
