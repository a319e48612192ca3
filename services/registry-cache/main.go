// Command registry-cache runs wasmlet's shared registry cache as its own
// process, or pushes a .wasm module to a registry.
//
//	registry-cache serve --listen unix:///run/wasmlet/registry.sock --dir /var/lib/wasmlet/registry \
//	    [--insecure-registry host:port]... [--ca-file ca.pem]
//	registry-cache push [--plain-http] [--ca-file ca.pem] [--username U --password-stdin] FILE REFERENCE
//
// main only wires flags to the packages that do the work: regcache/local
// (the cache), regcache/server (its gRPC face) and push.
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
	"time"

	"google.golang.org/grpc"

	"github.com/wasmlet/wasmlet/internal/grpcutil"
	"github.com/wasmlet/wasmlet/services/registry-cache/push"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/local"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/server"
)

const usage = `usage:
  registry-cache serve --listen unix:///path|tcp://127.0.0.1:port --dir DIR [--insecure-registry host:port]... [--ca-file F]
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
	listen := fs.String("listen", "", "address to serve on: unix:///path or tcp://127.0.0.1:port")
	var cfg local.Config
	var insecure listFlag
	fs.StringVar(&cfg.Dir, "dir", "", "directory of the cache")
	fs.Var(&insecure, "insecure-registry", "registry host:port reached by plain HTTP (repeatable)")
	fs.StringVar(&cfg.CAFile, "ca-file", "", "PEM file of extra CA certificates for registries")
	fs.Int64Var(&cfg.MaxManifestBytes, "max-manifest-bytes", local.DefaultMaxManifestBytes, "largest manifest accepted")
	fs.Int64Var(&cfg.MaxLayerBytes, "max-layer-bytes", local.DefaultMaxLayerBytes, "largest module accepted")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *listen == "" || cfg.Dir == "" || fs.NArg() != 0 {
		return errors.New("serve: --listen and --dir are required, and nothing else\n" + usage)
	}
	cfg.InsecureHosts = insecure
	cfg.Logger = logger
	cache, err := local.New(cfg)
	if err != nil {
		return err
	}
	l, err := grpcutil.Listen(*listen)
	if err != nil {
		return err
	}
	srv := grpc.NewServer()
	server.New(cache).Register(srv)
	logger.Info("serving registry cache", "address", grpcutil.Address(l), "dir", cfg.Dir, "insecure_registries", insecure.String())
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
