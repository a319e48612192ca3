// Command registry-bench is `make bench-registry`: it measures the registry
// cache alone (package regbench: a docker-registry of its own on loopback
// behind a counting proxy, a fresh cache served over gRPC), prints the
// figures and exits non-zero when a target is missed. It needs no control
// plane; `make bench` reports the same figures in its section "registry".
//
//	go run ./bench/cmd/registry-bench [--module-bytes N] [--iterations N] [--concurrency N]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/wasmlet/wasmlet/bench/regbench"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "registry-bench:", err)
		stop()
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("registry-bench", flag.ContinueOnError)
	var cfg regbench.Config
	fs.IntVar(&cfg.ModuleBytes, "module-bytes", 3<<20, "size of the test modules")
	fs.IntVar(&cfg.HitIterations, "iterations", 200, "cache hits to time")
	fs.IntVar(&cfg.Concurrency, "concurrency", 100, "concurrent requests for one uncached module")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return errors.New("no arguments; usage: registry-bench [--module-bytes N] [--iterations N] [--concurrency N]")
	}
	rep, err := regbench.Run(ctx, cfg)
	if err != nil {
		return err
	}
	rep.Print(stdout)
	return rep.Check()
}
