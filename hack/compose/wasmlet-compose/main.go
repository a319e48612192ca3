// Command wasmlet-compose is the glue of the docker compose stack
// (deploy/compose): a static binary copied into every image of the stack,
// which are built FROM scratch and so have no shell.
//
//	wasmlet-compose init  --dir /pki --nodes wasmlet-1,wasmlet-2   # PKI, kubeconfigs, NATS token (once per volume)
//	wasmlet-compose exec  [--env-file F] [--mint DIR --issuer NAME] -- PROGRAM ARGS...
//	wasmlet-compose probe https|http|grpc|node|tcp ...            # a container's healthcheck
//	wasmlet-compose setup --kubeconfig F --manifest F             # RuntimeClasses, once the API server answers
//	wasmlet-compose instances ADDR --cert F --key F --ca F        # what an executor runs (namespace/pod container STATE)
//
// exec replaces {ip} and {hostname} in ARGS with the container's address and
// host name, which a compose file cannot know for a scaled service, adds the
// variables of each --env-file (the NATS token, which must stay out of argv),
// and with --mint issues the container a TLS key pair for its address from an
// issuing CA made by init, then executes PROGRAM in its place.
//
// It owns the files under its --dir (init) and --mint directory, and nothing
// else; it is no part of the product: a real deployment issues certificates
// and configuration its own way.
package main

import (
	"fmt"
	"os"
)

const usage = `usage: wasmlet-compose init|exec|probe|setup|instances [flags] (see the package doc)`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	args := os.Args[2:]
	switch os.Args[1] {
	case "init":
		err = runInit(args)
	case "exec":
		err = runExec(args)
	case "probe":
		err = runProbe(args)
	case "setup":
		err = runSetup(args)
	case "instances":
		err = runInstances(args)
	default:
		err = fmt.Errorf("unknown command %q\n%s", os.Args[1], usage)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "wasmlet-compose %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}
