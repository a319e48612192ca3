package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"sort"
	"strings"
	"time"

	executorv1 "github.com/wasmlet/wasmlet/gen/wasmlet/executor/v1"
	"github.com/wasmlet/wasmlet/internal/grpcutil"
)

// runInstances prints what an executor is ("# executor ID: ENGINE VERSION
// on OS/ARCH") and the instances it holds, one line each: "namespace/pod
// container STATE". It is how the stack's test sees which
// replica of a flavour runs which pod; run it in the executor's container
// (docker exec), with that container's own key pair:
//
//	wasmlet-compose instances tcp://{ip}:7000 --cert F --key F --ca F
func runInstances(args []string) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return errors.New("want the executor's address first")
	}
	addr := args[0]
	fs := flag.NewFlagSet("instances", flag.ContinueOnError)
	var t grpcutil.TLS
	fs.StringVar(&t.CertFile, "cert", "", "client certificate")
	fs.StringVar(&t.KeyFile, "key", "", "client key")
	fs.StringVar(&t.CAFile, "ca", "", "CA that signs the executor")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if strings.Contains(addr, "{ip}") {
		ip, err := containerIP()
		if err != nil {
			return err
		}
		addr = strings.ReplaceAll(addr, "{ip}", ip)
	}
	conn, err := grpcutil.DialTLS(addr, t)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client := executorv1.NewExecutorServiceClient(conn)
	info, err := client.GetInfo(ctx, &executorv1.GetInfoRequest{})
	if err != nil {
		return fmt.Errorf("%s: %w", addr, err)
	}
	fmt.Printf("# executor %s: %s %s on %s/%s\n", info.GetExecutorId(), info.GetEngine(), info.GetEngineVersion(), info.GetOs(), info.GetArch())
	resp, err := client.ListInstances(ctx, &executorv1.ListInstancesRequest{})
	if err != nil {
		return fmt.Errorf("%s: %w", addr, err)
	}
	var lines []string
	for _, in := range resp.GetInstances() {
		l := in.GetSpec().GetLabels()
		state := strings.TrimPrefix(in.GetState().String(), "INSTANCE_STATE_")
		lines = append(lines, fmt.Sprintf("%s/%s %s %s", l["wasmlet.io/namespace"], l["wasmlet.io/pod"], l["wasmlet.io/container"], state))
	}
	sort.Strings(lines)
	for _, l := range lines {
		fmt.Println(l)
	}
	return nil
}
