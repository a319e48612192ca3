package bench

import (
	"context"
	"fmt"
	"time"

	"github.com/wasmlet/wasmlet/bench/regbench"
)

// registry runs the registry cache's own benchmark (package regbench: a
// docker-registry of its own behind a counting proxy, the cache served
// over gRPC) and reports its figures here, so that one report holds them
// all. It does not use the stack's node.
func registry(ctx context.Context, _ *Stack, opts Options) ([]Figure, error) {
	cfg := regbench.Config{}
	if opts.Short {
		cfg.HitIterations, cfg.Concurrency = 20, 10
	}
	rep, err := regbench.Run(ctx, cfg)
	if err != nil {
		return nil, err
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	hit := Figure{
		Name:   "registry cache: hit latency",
		Method: fmt.Sprintf("Resolve (IfNotPresent) + Fetch of a cached %d MiB module through the gRPC client, every byte read and its sha256 checked", rep.ModuleBytes>>20),
		Unit:   "ms", Samples: rep.HitIterations,
		Min: ms(rep.HitMin), Median: ms(rep.HitP50), P99: ms(rep.HitP99), Max: ms(rep.HitMax),
	}
	hit.Hold("median", ms(regbench.TargetHitLatency))
	fanIn := Values(fmt.Sprintf("registry cache: origin blob GETs for %d concurrent misses", rep.Concurrency),
		fmt.Sprintf("%d concurrent Resolve+Fetch of one uncached module over two connections; GETs counted at the origin (%d of %d served)", rep.Concurrency, rep.ConcurrentServed, rep.Concurrency),
		"requests", []float64{float64(rep.ConcurrentBlobGets)})
	fanIn.Hold("max", 1)
	second := Values("registry cache: origin requests for a second node (IfNotPresent)",
		"manifest + blob GETs at the origin when a second node agent pulls a module the first one pulled, through the same cache",
		"requests", []float64{float64(rep.SecondIfNotPresentManifests + rep.SecondIfNotPresentBlobs)})
	second.Hold("max", 0)
	always := Values("registry cache: origin blob GETs for a second node (Always)",
		fmt.Sprintf("blob GETs at the origin for the second node under imagePullPolicy Always (it re-resolves: %d manifest GETs)", rep.SecondAlwaysManifests),
		"requests", []float64{float64(rep.SecondAlwaysBlobs)})
	always.Hold("max", 0)
	if rep.ConcurrentServed != rep.Concurrency {
		return []Figure{hit, fanIn, second, always}, fmt.Errorf("%d of %d concurrent pulls served: %v", rep.ConcurrentServed, rep.Concurrency, rep.ConcurrentErrors)
	}
	return []Figure{hit, fanIn, second, always}, nil
}
