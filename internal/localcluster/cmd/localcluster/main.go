// Command localcluster starts, inspects and stops the local control plane of
// package localcluster, for the developer stack (`make up` / `make down`):
//
//	localcluster [-dir DIR] [-bin DIR] up                 # idempotent
//	localcluster [-dir DIR] status                        # exit 1 when not running
//	localcluster [-dir DIR] node-kubeconfig NODE_NAME     # prints the kubeconfig path
//	localcluster [-dir DIR] down
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"syscall"

	"github.com/wasmlet/wasmlet/internal/localcluster"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "localcluster:", err)
		os.Exit(1)
	}
}

func run() error {
	fs := flag.NewFlagSet("localcluster", flag.ContinueOnError)
	dir := fs.String("dir", defaultDir(), "state directory of the cluster")
	bin := fs.String("bin", "", "directory of the control plane binaries (default: $"+localcluster.EnvBinDir+", else the newest build in the cache)")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: localcluster [flags] up | status | node-kubeconfig NODE_NAME | down")
		fs.PrintDefaults()
	}
	if err := fs.Parse(os.Args[1:]); err != nil {
		return err
	}
	args := fs.Args()
	if len(args) == 0 {
		fs.Usage()
		return errors.New("no command given")
	}
	switch args[0] {
	case "up":
		return up(*dir, *bin)
	case "status":
		c, err := localcluster.Attach(*dir)
		if err != nil {
			return err
		}
		printCluster(c)
		return nil
	case "node-kubeconfig":
		if len(args) != 2 {
			return errors.New("node-kubeconfig needs one NODE_NAME")
		}
		c, err := localcluster.Attach(*dir)
		if err != nil {
			return err
		}
		path, err := c.NodeKubeconfig(args[1])
		if err != nil {
			return err
		}
		fmt.Println(path)
		return nil
	case "down":
		return localcluster.Stop(*dir)
	}
	fs.Usage()
	return fmt.Errorf("unknown command %q", args[0])
}

func up(dir, bin string) error {
	if c, err := localcluster.Attach(dir); err == nil {
		printCluster(c)
		return nil
	}
	if bin == "" {
		var err error
		if bin, err = localcluster.FindBinDir(); err != nil {
			return err
		}
	}
	// Ctrl-C during start-up aborts it (Start then stops what it started); once up,
	// the cluster runs on without this command.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	c, err := localcluster.Start(ctx, localcluster.Config{Dir: dir, BinDir: bin, Logs: os.Stderr})
	if err != nil {
		return err
	}
	printCluster(c)
	return nil
}

func printCluster(c *localcluster.Cluster) {
	fmt.Printf("server:     %s\nkubeconfig: %s\nlogs:       %s\n", c.Server(), c.KubeconfigPath(), filepath.Join(c.Dir(), "logs"))
	pids := c.PIDs()
	names := make([]string, 0, len(pids))
	for name := range pids {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		fmt.Printf("pid:        %s %d\n", name, pids[name])
	}
}

func defaultDir() string {
	cache := os.Getenv(localcluster.EnvCache)
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return ".localcluster"
		}
		cache = filepath.Join(home, ".cache", "wasmlet")
	}
	return filepath.Join(cache, "localcluster")
}
