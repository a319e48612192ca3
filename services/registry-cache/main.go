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
// origin once for all nodes. It serves gRPC on a unix socket (created
// 0600) or over TCP with mutual TLS: with --tls-cert, --tls-key and
// --tls-ca a tcp:// --listen may be any address, and every client must
// present a certificate signed by --tls-ca; without them a tcp:// --listen
// is refused, on loopback too (any local user could otherwise store
// precompiled artifacts and pins). --metrics-listen serves Prometheus
// metrics at /metrics on a loopback address only.
//
// main only turns flags into a config and hands it, with a context that
// ends on SIGINT or SIGTERM, to internal/service (serve) or push.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/wasmlet/wasmlet/services/registry-cache/internal/service"
	"github.com/wasmlet/wasmlet/services/registry-cache/push"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/local"
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

// run dispatches a command line; tests call it as main does.
func run(ctx context.Context, args []string, stdin io.Reader, stdout io.Writer, logger *slog.Logger) error {
	if len(args) == 0 {
		return errors.New(usage)
	}
	switch args[0] {
	case "serve":
		cfg, err := parseServe(args[1:])
		if err != nil {
			return err
		}
		cfg.Logger = logger
		return service.Run(ctx, cfg)
	case "push":
		opts, err := parsePush(args[1:], stdin)
		if err != nil {
			return err
		}
		ref, err := push.Push(ctx, opts)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintln(stdout, ref)
		return err
	}
	return fmt.Errorf("unknown command %q\n%s", args[0], usage)
}

// listFlag collects a repeatable flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func parseServe(args []string) (service.Config, error) {
	var cfg service.Config
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.StringVar(&cfg.Listen, "listen", "", "address to serve on: unix:///path (created 0600), or tcp://HOST:port with --tls-* (mutual TLS; plaintext TCP is refused, on loopback too)")
	cfg.TLS.AddFlags(fs, "", "the registry cache's gRPC server (--listen)")
	var insecure listFlag
	fs.StringVar(&cfg.Cache.Dir, "dir", "", "directory of the cache")
	fs.Var(&insecure, "insecure-registry", "registry host:port reached by plain HTTP (repeatable)")
	fs.StringVar(&cfg.Cache.CAFile, "ca-file", "", "PEM file of extra CA certificates for registries")
	fs.Int64Var(&cfg.Cache.MaxManifestBytes, "max-manifest-bytes", local.DefaultMaxManifestBytes, "largest manifest accepted")
	fs.Int64Var(&cfg.Cache.MaxLayerBytes, "max-layer-bytes", local.DefaultMaxLayerBytes, "largest module accepted")
	fs.Int64Var(&cfg.Cache.MaxPrecompiledBytes, "max-precompiled-bytes", local.DefaultMaxPrecompiledBytes, "largest precompiled module accepted")
	fs.Int64Var(&cfg.Cache.MaxStoreBytes, "max-store-bytes", 0, "size budget of the store; least recently used, unpinned blobs are evicted past it (0: no budget)")
	fs.DurationVar(&cfg.Cache.EvictionGrace, "eviction-grace", local.DefaultEvictionGrace, "blobs used this recently are never evicted")
	fs.StringVar(&cfg.MetricsListen, "metrics-listen", "", "loopback host:port to serve Prometheus metrics on at /metrics (default off)")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if cfg.Listen == "" || cfg.Cache.Dir == "" || fs.NArg() != 0 {
		return cfg, errors.New("serve: --listen and --dir are required, and nothing else\n" + usage)
	}
	if err := cfg.TLS.CheckServerFlags("listen", cfg.Listen, ""); err != nil {
		return cfg, fmt.Errorf("serve: %w", err)
	}
	cfg.Cache.InsecureHosts = insecure
	return cfg, nil
}

func parsePush(args []string, stdin io.Reader) (push.Options, error) {
	var opts push.Options
	fs := flag.NewFlagSet("push", flag.ContinueOnError)
	fs.BoolVar(&opts.PlainHTTP, "plain-http", false, "talk plain HTTP to the registry")
	fs.StringVar(&opts.CAFile, "ca-file", "", "PEM file of extra CA certificates")
	fs.StringVar(&opts.Credentials.Username, "username", "", "registry user name")
	passwordStdin := fs.Bool("password-stdin", false, "read the password from standard input")
	if err := fs.Parse(args); err != nil {
		return opts, err
	}
	if fs.NArg() != 2 {
		return opts, errors.New("push: want FILE REFERENCE\n" + usage)
	}
	if *passwordStdin {
		if opts.Credentials.Username == "" {
			return opts, errors.New("push: --password-stdin needs --username")
		}
		b, err := io.ReadAll(io.LimitReader(stdin, 64<<10))
		if err != nil {
			return opts, fmt.Errorf("push: read password: %w", err)
		}
		opts.Credentials.Password = strings.TrimRight(string(b), "\r\n")
	}
	opts.File, opts.Reference = fs.Arg(0), fs.Arg(1)
	return opts, nil
}
