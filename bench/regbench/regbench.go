// Package regbench measures the registry cache against its targets
// (TargetHitLatency, and the origin counts that Report.Check holds), with
// a real registry (Debian's docker-registry, started on loopback) behind a
// counting proxy, and the cache served over gRPC on a unix socket as
// `registry-cache serve` serves it:
//
//   - hit latency: a cached module reaching an executor — Resolve
//     (IfNotPresent) and Fetch through the gRPC proxy client, every byte
//     read and its sha256 checked;
//   - concurrent: Concurrency concurrent Resolve+Fetch of one uncached
//     module over two client connections — one blob GET at the origin,
//     every request served;
//   - second node: a second node agent (and its executors) using the same
//     cache over its own connection, as a cluster deploys it. After the
//     first node pulled a module, the second node's Resolve+Fetch reaches
//     the origin 0 times under IfNotPresent, and only for one manifest
//     (0 blobs) under Always.
//
// It owns a temporary directory (registry storage, cache, socket) that it
// removes at the end, and the processes it starts there. It is test
// tooling (it links the test registry harness) and must stay out of the
// shipped binaries: bench/cmd/registry-bench and package bench run it.
//
//	rep, err := regbench.Run(ctx, regbench.Config{})
//	rep.Print(os.Stdout)
//	err = rep.Check()
package regbench

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"

	"github.com/wasmlet/wasmlet/internal/grpcutil"
	"github.com/wasmlet/wasmlet/internal/testharness/testregistry"
	"github.com/wasmlet/wasmlet/services/registry-cache/push"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/local"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/proxy"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/server"
)

// Config sizes the runs; zero values take the defaults.
type Config struct {
	ModuleBytes   int // default 3 MiB
	HitIterations int // default 200
	Concurrency   int // default 100
	// RegistryBinary defaults to testregistry.Binary.
	RegistryBinary string
	Logger         *slog.Logger
}

// TargetHitLatency is the p50 a cache hit must meet.
const TargetHitLatency = 10 * time.Millisecond

// Report holds the figures measured.
type Report struct {
	ModuleBytes int

	// Hit latency of Resolve+Fetch+read+verify through gRPC.
	HitIterations              int
	HitP50, HitP90, HitP99     time.Duration
	HitMin, HitMax, HitMean    time.Duration
	FetchOnlyP50, FetchOnlyP99 time.Duration

	// Concurrent Resolves of one uncached module.
	Concurrency        int
	ConcurrentServed   int
	ConcurrentBlobGets int64
	ConcurrentElapsed  time.Duration
	ConcurrentErrors   []string

	// Second node.
	SecondIfNotPresentManifests, SecondIfNotPresentBlobs int64
	SecondAlwaysManifests, SecondAlwaysBlobs             int64
}

// Check returns an error naming every target the report misses.
func (r Report) Check() error {
	var errs []error
	if r.HitP50 > TargetHitLatency {
		errs = append(errs, fmt.Errorf("cache hit p50 %v over the target of %v", r.HitP50, TargetHitLatency))
	}
	if r.ConcurrentBlobGets != 1 || r.ConcurrentServed != r.Concurrency {
		errs = append(errs, fmt.Errorf("%d concurrent resolves: %d origin blob GETs (want 1), %d served (want all)", r.Concurrency, r.ConcurrentBlobGets, r.ConcurrentServed))
	}
	if r.SecondIfNotPresentManifests != 0 || r.SecondIfNotPresentBlobs != 0 {
		errs = append(errs, fmt.Errorf("second node, IfNotPresent: %d manifest and %d blob GETs at the origin, want 0 and 0", r.SecondIfNotPresentManifests, r.SecondIfNotPresentBlobs))
	}
	if r.SecondAlwaysManifests != 1 || r.SecondAlwaysBlobs != 0 {
		errs = append(errs, fmt.Errorf("second node, Always: %d manifest and %d blob GETs at the origin, want 1 and 0", r.SecondAlwaysManifests, r.SecondAlwaysBlobs))
	}
	return errors.Join(errs...)
}

// Print writes the report for people.
func (r Report) Print(w io.Writer) {
	verdict := func(ok bool) string {
		if ok {
			return "target met"
		}
		return "TARGET MISSED"
	}
	fmt.Fprintf(w, "module size: %d bytes\n", r.ModuleBytes)
	fmt.Fprintf(w, "cache hit through gRPC (Resolve+Fetch+read+sha256, %d runs): p50 %v  p90 %v  p99 %v  min %v  max %v  mean %v  [target p50 <= %v: %s]\n",
		r.HitIterations, r.HitP50, r.HitP90, r.HitP99, r.HitMin, r.HitMax, r.HitMean, TargetHitLatency, verdict(r.HitP50 <= TargetHitLatency))
	fmt.Fprintf(w, "  of which Fetch+read+sha256 alone: p50 %v  p99 %v\n", r.FetchOnlyP50, r.FetchOnlyP99)
	fmt.Fprintf(w, "%d concurrent Resolve+Fetch of one uncached module: %d served, %d origin blob GETs, %v in all  [target 1 GET, all served: %s]\n",
		r.Concurrency, r.ConcurrentServed, r.ConcurrentBlobGets, r.ConcurrentElapsed, verdict(r.ConcurrentBlobGets == 1 && r.ConcurrentServed == r.Concurrency))
	for _, e := range r.ConcurrentErrors {
		fmt.Fprintf(w, "  error: %s\n", e)
	}
	fmt.Fprintf(w, "second node, IfNotPresent: %d manifest + %d blob GETs at the origin  [target 0+0: %s]\n",
		r.SecondIfNotPresentManifests, r.SecondIfNotPresentBlobs, verdict(r.SecondIfNotPresentManifests == 0 && r.SecondIfNotPresentBlobs == 0))
	fmt.Fprintf(w, "second node, Always: %d manifest + %d blob GETs at the origin  [target 1+0: %s]\n",
		r.SecondAlwaysManifests, r.SecondAlwaysBlobs, verdict(r.SecondAlwaysManifests == 1 && r.SecondAlwaysBlobs == 0))
}

// Run sets everything up, measures, and tears it down.
func Run(ctx context.Context, cfg Config) (Report, error) {
	if cfg.ModuleBytes <= 0 {
		cfg.ModuleBytes = 3 << 20
	}
	if cfg.HitIterations <= 0 {
		cfg.HitIterations = 200
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 100
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	rep := Report{ModuleBytes: cfg.ModuleBytes, HitIterations: cfg.HitIterations, Concurrency: cfg.Concurrency}

	// Short: unix socket paths are limited to ~100 bytes.
	dir, err := os.MkdirTemp("", "rcbench")
	if err != nil {
		return rep, err
	}
	defer os.RemoveAll(dir)
	reg, err := testregistry.Start(filepath.Join(dir, "registry"), testregistry.Options{Binary: cfg.RegistryBinary})
	if err != nil {
		return rep, err
	}
	defer reg.Stop()
	origin, err := testregistry.StartProxy(reg)
	if err != nil {
		return rep, err
	}
	defer origin.Close()

	// Three modules, pushed straight to the registry so that the proxy
	// counts only the cache's requests. Random bytes: every run is cold.
	var refs [3]string
	var modules [3][]byte
	for i, name := range []string{"hit", "concurrent", "second"} {
		modules[i] = randomModule(cfg.ModuleBytes)
		if _, err := push.Push(ctx, push.Options{Bytes: modules[i], Reference: reg.Host + "/bench/" + name + ":v1", PlainHTTP: true}); err != nil {
			return rep, fmt.Errorf("push: %w", err)
		}
		refs[i] = origin.Host + "/bench/" + name + ":v1"
	}

	lc, err := local.New(local.Config{Dir: filepath.Join(dir, "cache"), InsecureHosts: []string{origin.Host}, Logger: cfg.Logger})
	if err != nil {
		return rep, err
	}
	l, err := grpcutil.Listen("unix://" + filepath.Join(dir, "r.sock"))
	if err != nil {
		return rep, err
	}
	srv := grpc.NewServer()
	server.New(lc).Register(srv)
	sctx, stop := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- grpcutil.Serve(sctx, srv, l, time.Second) }()
	defer func() { stop(); <-served }()

	// Two nodes: two connections to the one cache.
	var nodes [2]*proxy.Client
	for i := range nodes {
		conn, err := grpcutil.Dial(grpcutil.Address(l))
		if err != nil {
			return rep, err
		}
		defer conn.Close()
		if err := grpcutil.WaitHealthy(ctx, conn); err != nil {
			return rep, err
		}
		nodes[i] = proxy.New(conn)
	}

	if err := measureHits(ctx, nodes[0], refs[0], modules[0], &rep); err != nil {
		return rep, fmt.Errorf("cache hit: %w", err)
	}
	measureConcurrent(ctx, nodes, origin, refs[1], modules[1], &rep)
	if err := measureSecondNode(ctx, nodes, origin, refs[2], modules[2], &rep); err != nil {
		return rep, fmt.Errorf("second node: %w", err)
	}
	return rep, nil
}

func randomModule(n int) []byte {
	b := make([]byte, max(n, 8))
	rand.Read(b)
	copy(b, "\x00asm\x01\x00\x00\x00")
	return b
}

// get resolves ref and fetches, reads and verifies its module, as a node
// agent and then an executor would.
func get(ctx context.Context, c regcache.Cache, ref string, policy regcache.PullPolicy, want []byte) error {
	res, err := c.Resolve(ctx, regcache.ResolveRequest{Reference: ref, Policy: policy})
	if err != nil {
		return err
	}
	return fetch(ctx, c, res.ModuleDigest, want)
}

func fetch(ctx context.Context, c regcache.Cache, dgst string, want []byte) error {
	rc, size, err := c.Fetch(ctx, dgst)
	if err != nil {
		return err
	}
	defer rc.Close()
	h := sha256.New()
	n, err := io.Copy(h, rc)
	if err != nil {
		return err
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); n != size || n != int64(len(want)) || got != dgst {
		return fmt.Errorf("fetched %d bytes with digest %s, want %d bytes with %s", n, got, len(want), dgst)
	}
	return nil
}

func measureHits(ctx context.Context, c regcache.Cache, ref string, module []byte, rep *Report) error {
	res, err := c.Resolve(ctx, regcache.ResolveRequest{Reference: ref})
	if err != nil {
		return err
	}
	// Warm up the connection and the page cache.
	for range 5 {
		if err := get(ctx, c, ref, regcache.PullIfNotPresent, module); err != nil {
			return err
		}
	}
	hits := make([]time.Duration, rep.HitIterations)
	fetches := make([]time.Duration, rep.HitIterations)
	for i := range hits {
		start := time.Now()
		if err := get(ctx, c, ref, regcache.PullIfNotPresent, module); err != nil {
			return err
		}
		hits[i] = time.Since(start)
		start = time.Now()
		if err := fetch(ctx, c, res.ModuleDigest, module); err != nil {
			return err
		}
		fetches[i] = time.Since(start)
	}
	slices.Sort(hits)
	slices.Sort(fetches)
	var sum time.Duration
	for _, d := range hits {
		sum += d
	}
	rep.HitP50, rep.HitP90, rep.HitP99 = pct(hits, 50), pct(hits, 90), pct(hits, 99)
	rep.HitMin, rep.HitMax, rep.HitMean = hits[0], hits[len(hits)-1], sum/time.Duration(len(hits))
	rep.FetchOnlyP50, rep.FetchOnlyP99 = pct(fetches, 50), pct(fetches, 99)
	return nil
}

func pct(sorted []time.Duration, p int) time.Duration {
	i := (len(sorted)*p + 99) / 100
	return sorted[min(max(i-1, 0), len(sorted)-1)]
}

func measureConcurrent(ctx context.Context, nodes [2]*proxy.Client, origin *testregistry.Proxy, ref string, module []byte, rep *Report) {
	before := origin.BlobGets()
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	release := make(chan struct{})
	for i := range rep.Concurrency {
		wg.Go(func() {
			<-release
			err := get(ctx, nodes[i%len(nodes)], ref, regcache.PullIfNotPresent, module)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				rep.ConcurrentErrors = append(rep.ConcurrentErrors, err.Error())
				return
			}
			rep.ConcurrentServed++
		})
	}
	close(release)
	wg.Wait()
	rep.ConcurrentElapsed = time.Since(start)
	rep.ConcurrentBlobGets = origin.BlobGets() - before
}

func measureSecondNode(ctx context.Context, nodes [2]*proxy.Client, origin *testregistry.Proxy, ref string, module []byte, rep *Report) error {
	if err := get(ctx, nodes[0], ref, regcache.PullIfNotPresent, module); err != nil {
		return fmt.Errorf("first node: %w", err)
	}
	m, b := origin.ManifestGets(), origin.BlobGets()
	if err := get(ctx, nodes[1], ref, regcache.PullIfNotPresent, module); err != nil {
		return fmt.Errorf("second node, IfNotPresent: %w", err)
	}
	rep.SecondIfNotPresentManifests, rep.SecondIfNotPresentBlobs = origin.ManifestGets()-m, origin.BlobGets()-b
	m, b = origin.ManifestGets(), origin.BlobGets()
	if err := get(ctx, nodes[1], ref, regcache.PullAlways, module); err != nil {
		return fmt.Errorf("second node, Always: %w", err)
	}
	rep.SecondAlwaysManifests, rep.SecondAlwaysBlobs = origin.ManifestGets()-m, origin.BlobGets()-b
	return nil
}
