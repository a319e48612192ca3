// Command registry-cache runs wasmlet's shared registry cache as its own
// process, or pushes a .wasm module to a registry.
//
//	registry-cache serve --listen unix:///run/wasmlet/registry.sock --dir /var/lib/wasmlet/registry \
//	    [--insecure-registry host:port]... [--ca-file ca.pem] [--max-store-bytes N] \
//	    [--metrics-listen 127.0.0.1:9464] [--tls-cert F --tls-key F --tls-ca F]
//	registry-cache push [--plain-http] [--ca-file ca.pem] [--username U --password-stdin] FILE REFERENCE
//
// One cache serves a cluster: every node agent (and its executors) reaches
// the same `serve` over gRPC, so a module crosses the network from its
// origin once for all nodes. With --metrics-listen it serves Prometheus
// metrics at /metrics, on a loopback address only (the metrics name
// the modules in use; put a proxy in front to expose them further).
// It serves gRPC on a unix socket (created 0600) or over TCP with mutual
// TLS: with --tls-cert, --tls-key and --tls-ca a tcp:// --listen may be
// any address, and every client (node agents, executors) must present a
// certificate signed by --tls-ca; without them a tcp:// --listen is
// refused, on loopback too (any local user could otherwise store
// precompiled artifacts and pins).
//
// main only wires flags to the packages that do the work: regcache/local
// (the cache), regcache/server (its gRPC face), and push.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/wasmlet/wasmlet/internal/grpcutil"
	"github.com/wasmlet/wasmlet/services/registry-cache/push"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/local"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/server"
)

const usage = `usage:
  registry-cache serve --listen unix:///path|tcp://HOST:port --dir DIR [--insecure-registry host:port]... [--ca-file F]
      [--max-store-bytes N] [--eviction-grace D] [--metrics-listen 127.0.0.1:PORT] [--tls-cert F --tls-key F --tls-ca F]
  registry-cache push [--plain-http] [--ca-file F] [--username U --password-stdin] FILE REFERENCE`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(ctx, os.Args[1:], os.Stdin, os.Stdout, logger); err != nil {
		fmt.Fprintln(os.Stderr, "registry-cache:", err)
		stop()
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdin io.Reader, stdout io.Writer, logger *slog.Logger) error {
	if len(args) == 0 {
		return errors.New(usage)
	}
	switch args[0] {
	case "serve":
		return serve(ctx, args[1:], logger)
	case "push":
		return pushCmd(ctx, args[1:], stdin, stdout)
	}
	return fmt.Errorf("unknown command %q\n%s", args[0], usage)
}

// listFlag collects a repeatable flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func serve(ctx context.Context, args []string, logger *slog.Logger) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	listen := fs.String("listen", "", "address to serve on: unix:///path (created 0600), or tcp://HOST:port with --tls-* (mutual TLS; plaintext TCP is refused, on loopback too)")
	var serverTLS grpcutil.TLS
	serverTLS.AddFlags(fs, "", "the registry cache's gRPC server (--listen)")
	var cfg local.Config
	var insecure listFlag
	fs.StringVar(&cfg.Dir, "dir", "", "directory of the cache")
	fs.Var(&insecure, "insecure-registry", "registry host:port reached by plain HTTP (repeatable)")
	fs.StringVar(&cfg.CAFile, "ca-file", "", "PEM file of extra CA certificates for registries")
	fs.Int64Var(&cfg.MaxManifestBytes, "max-manifest-bytes", local.DefaultMaxManifestBytes, "largest manifest accepted")
	fs.Int64Var(&cfg.MaxLayerBytes, "max-layer-bytes", local.DefaultMaxLayerBytes, "largest module accepted")
	fs.Int64Var(&cfg.MaxPrecompiledBytes, "max-precompiled-bytes", local.DefaultMaxPrecompiledBytes, "largest precompiled module accepted")
	fs.Int64Var(&cfg.MaxStoreBytes, "max-store-bytes", 0, "size budget of the store; least recently used, unpinned blobs are evicted past it (0: no budget)")
	fs.DurationVar(&cfg.EvictionGrace, "eviction-grace", local.DefaultEvictionGrace, "blobs used this recently are never evicted")
	metricsListen := fs.String("metrics-listen", "", "loopback host:port to serve Prometheus metrics on at /metrics (default off)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *listen == "" || cfg.Dir == "" || fs.NArg() != 0 {
		return errors.New("serve: --listen and --dir are required, and nothing else\n" + usage)
	}
	if err := serverTLS.CheckServerFlags("listen", *listen, ""); err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	cfg.InsecureHosts = insecure
	cfg.Logger = logger

	var metricsL net.Listener
	var reg *prometheus.Registry
	if *metricsListen != "" {
		if !grpcutil.IsLoopback(*metricsListen) {
			return fmt.Errorf("serve: --metrics-listen %s is not a loopback address; metrics are served on loopback only (e.g. 127.0.0.1:9464)", *metricsListen)
		}
		reg = prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		m, err := local.NewMetrics(reg)
		if err != nil {
			return err
		}
		cfg.Metrics = m
		if metricsL, err = net.Listen("tcp", *metricsListen); err != nil {
			return fmt.Errorf("serve: metrics: %w", err)
		}
	}
	cache, err := local.New(cfg)
	if err != nil {
		return err
	}
	srv, l, err := grpcutil.NewServer(*listen, serverTLS)
	if err != nil {
		return err
	}
	server.New(cache).Register(srv)
	if metricsL != nil {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
		hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go hs.Serve(metricsL)
		defer hs.Close()
		logger.Info("serving metrics", "address", metricsL.Addr().String())
	}
	logger.Info("serving registry cache", "address", grpcutil.Address(l), "mutual_tls", serverTLS.Enabled(), "dir", cfg.Dir, "insecure_registries", insecure.String(),
		"max_store_bytes", cfg.MaxStoreBytes)
	err = grpcutil.Serve(ctx, srv, l, 5*time.Second)
	logger.Info("registry cache stopped")
	return err
}

func pushCmd(ctx context.Context, args []string, stdin io.Reader, stdout io.Writer) error {
	fs := flag.NewFlagSet("push", flag.ContinueOnError)
	var opts push.Options
	fs.BoolVar(&opts.PlainHTTP, "plain-http", false, "talk plain HTTP to the registry")
	fs.StringVar(&opts.CAFile, "ca-file", "", "PEM file of extra CA certificates")
	fs.StringVar(&opts.Credentials.Username, "username", "", "registry user name")
	passwordStdin := fs.Bool("password-stdin", false, "read the password from standard input")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 2 {
		return errors.New("push: want FILE REFERENCE\n" + usage)
	}
	if *passwordStdin {
		if opts.Credentials.Username == "" {
			return errors.New("push: --password-stdin needs --username")
		}
		b, err := io.ReadAll(io.LimitReader(stdin, 64<<10))
		if err != nil {
			return fmt.Errorf("push: read password: %w", err)
		}
		opts.Credentials.Password = strings.TrimRight(string(b), "\r\n")
	}
	opts.File, opts.Reference = fs.Arg(0), fs.Arg(1)
	ref, err := push.Push(ctx, opts)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(stdout, ref)
	return err
}
