// Command wasmlet-bench is `make bench`: it builds wasmlet, starts the local
// stack with a wasmlet node and a no-op node, measures both, and writes
// bench/results/<date>.json and .md.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/wasmlet/wasmlet/bench"
	"github.com/wasmlet/wasmlet/internal/profiling"
)

func main() {
	short := flag.Bool("short", false, "small counts (what make test runs)")
	out := flag.String("out", "bench/results", "directory for the results")
	only := flag.String("only", "", "comma-separated sections to run (default all: "+strings.Join(bench.SectionNames(), ",")+")")
	density := flag.String("density", "", "comma-separated numbers of pods for the density section (default: the suite's)")
	engine := flag.String("engine", "wasmtime", "the engine the wasmlet node runs its pods on (its --default-executor): wasmtime or wazero")
	cpuProfile := flag.String("cpu-profile", "", "write CPU profiles of the node agent and executor into this directory (see internal/profiling)")
	flag.Parse()
	if *cpuProfile != "" {
		dir, err := filepath.Abs(*cpuProfile)
		if err == nil {
			err = os.MkdirAll(dir, 0o755)
		}
		if err == nil {
			// The node agent's executor runs as an unprivileged user
			// (--executor-user) and writes its profiles here too.
			err = os.Chmod(dir, 0o1777)
		}
		if err == nil {
			err = os.Setenv(profiling.EnvDir, dir)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "wasmlet-bench:", err)
			os.Exit(2)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *short, *out, *only, *engine, *density); err != nil {
		fmt.Fprintln(os.Stderr, "wasmlet-bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, short bool, out, only, engine, density string) error {
	root, err := os.Getwd()
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "wasmlet-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	bin := filepath.Join(work, "bin")
	fmt.Println("building wasmlet")
	if err := bench.Build(root, bin); err != nil {
		return err
	}
	fmt.Println("starting the control plane, a registry, a wasmlet node and a no-op node")
	sctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	s, err := bench.StartStack(sctx, work, bin, engine)
	cancel()
	if err != nil {
		return err
	}
	defer s.Stop()
	opts := bench.FullOptions
	if short {
		opts = bench.ShortOptions
	}
	if only != "" {
		opts.Only = strings.Split(only, ",")
	}
	if density != "" {
		opts.Density = nil
		for _, f := range strings.Split(density, ",") {
			n, err := strconv.Atoi(f)
			if err != nil || n <= 0 {
				return fmt.Errorf("-density %s: want positive numbers of pods", density)
			}
			opts.Density = append(opts.Density, n)
		}
	}
	fmt.Println("measuring")
	r, runErr := bench.Run(ctx, s, opts)
	if runErr != nil {
		// What was measured is kept: a failure an hour into a run
		// should not take its figures with it.
		r.Error = runErr.Error()
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	base := filepath.Join(out, r.Date.Format("2006-01-02T15-04-05Z"))
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(base+".json", js, 0o644); err != nil {
		return err
	}
	md := r.Markdown()
	if err := os.WriteFile(base+".md", []byte(md), 0o644); err != nil {
		return err
	}
	fmt.Print("\n", md, "\nwritten: ", base, ".json and .md\n")
	return runErr
}
