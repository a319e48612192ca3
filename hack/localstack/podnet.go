package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
	"golang.org/x/sys/unix"

	"github.com/wasmlet/wasmlet/internal/testharness/localcluster"
	"github.com/wasmlet/wasmlet/internal/testharness/testpki"
)

// The pod network of the local node, as root: the node agent's
// --pod-network=bridge (a bridge named after the node on its spec.podCIDR,
// with the CNI plugins `make cni` builds; no masquerade, so pod addresses
// are reachable from this machine and lead nowhere else) and a detached
// kube-proxy for Services. What it changes on the host and `down` undoes:
//
//	the bridge link              localcluster.NodeBridge(nodeName)
//	pods' namespaces, veths      .state/node/podnet/netns/ (bind mounts; CNI DEL)
//	host-local leases, CNI cache .state/node/podnet/{ipam,cni}/, .state/node/cni/
//	CNI-* iptables chains        the firewall plugin's; removed when they were
//	                             not there before (.state/pod-network.json)
//	KUBE-* iptables chains       kube-proxy's (localcluster.StopKubeProxy;
//	                             .state/cluster/kube-proxy.json)

// cniPlugins are the plugins the node agent's bridge network uses.
var cniPlugins = []string{"bridge", "host-local", "loopback", "portmap", "firewall"}

// podNetworkFile records, before the node agent first makes the bridge
// network, what `down` needs to undo it.
const podNetworkFile = "pod-network.json"

type podNetworkState struct {
	CNIBinDir string `json:"cniBinDir"`
	Bridge    string `json:"bridge"`
	// CNIChainsBefore are the host's CNI-* chains before the first `up`
	// that has not been taken down yet.
	CNIChainsBefore []string `json:"cniChainsBefore"`
}

// podNetwork is what `up` chose.
type podNetwork struct {
	cniBinDir string // "" without a pod network
	why       string // why none
	proxy     bool   // kube-proxy runs
	proxyWhy  string // why not
}

func (n podNetwork) on() bool { return n.cniBinDir != "" }

// choosePodNetwork gives the node a pod network when this runs as root and
// the CNI plugins are built, and kube-proxy beside it when the control
// plane's build has it.
func (s *stack) choosePodNetwork() podNetwork {
	if os.Geteuid() != 0 {
		return podNetwork{why: "not run as root (a bridge, network namespaces and kube-proxy's iptables rules need it)"}
	}
	dir, err := cniBinDir()
	if err != nil {
		return podNetwork{why: err.Error()}
	}
	n := podNetwork{cniBinDir: dir, proxy: true}
	if err := s.cluster.CheckKubeProxy(); err != nil {
		n.proxy, n.proxyWhy = false, err.Error()
	}
	return n
}

// cniBinDir is the newest complete build of the plugins under
// $WASMLET_CACHE/cni/*/bin (hack/cni/build.sh, `make cni`).
func cniBinDir() (string, error) {
	cache := os.Getenv("WASMLET_CACHE")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", err
		}
		cache = filepath.Join(home, ".cache", "wasmlet")
	}
	dirs, _ := filepath.Glob(filepath.Join(cache, "cni", "*", "bin"))
	var best string
	var bestTime time.Time
	for _, d := range dirs {
		if strings.HasSuffix(filepath.Dir(d), ".tmp") {
			continue
		}
		complete := true
		for _, p := range cniPlugins {
			if st, err := os.Stat(filepath.Join(d, p)); err != nil || st.Mode()&0o111 == 0 {
				complete = false
			}
		}
		if st, err := os.Stat(d); complete && err == nil && (best == "" || st.ModTime().After(bestTime)) {
			best, bestTime = d, st.ModTime()
		}
	}
	if best == "" {
		return "", fmt.Errorf("no CNI plugins built in %s/cni (run `make cni`)", cache)
	}
	return best, nil
}

// recordPodNetwork saves, before the node agent makes the network, what
// `down` needs: a record left by an `up` not yet taken down is kept, since
// its snapshot predates what that `up` added.
func (s *stack) recordPodNetwork(n podNetwork) error {
	path := filepath.Join(s.state, podNetworkFile)
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	before, err := localcluster.SnapshotChains("CNI-")
	if err != nil {
		return fmt.Errorf("pod network: %w", err)
	}
	b, err := json.MarshalIndent(podNetworkState{CNIBinDir: n.cniBinDir, Bridge: localcluster.NodeBridge(nodeName), CNIChainsBefore: before.List()}, "", "  ")
	if err != nil {
		return err
	}
	return testpki.WriteFile(path, append(b, '\n'), 0o644)
}

// downPodNetwork undoes what the node agent's bridge network left on the
// host once the node agent and executors are stopped: each pod's CNI
// attachments (DEL from libcni's cache, as the node agent would: the veth,
// the lease, the firewall plugin's rules), the namespaces, the bridge, the
// CNI state under .state/node, and the CNI-* chains that were not there
// before the first `up`. With nothing of it there it does nothing, as any
// user.
func (s *stack) downPodNetwork(ctx context.Context) error {
	nodeDir := filepath.Join(s.state, "node")
	podnetDir := filepath.Join(nodeDir, "podnet")
	recordPath := filepath.Join(s.state, podNetworkFile)
	var rec podNetworkState
	b, err := os.ReadFile(recordPath)
	recorded := err == nil
	if recorded {
		if err := json.Unmarshal(b, &rec); err != nil {
			return fmt.Errorf("read %s: %w", recordPath, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if rec.Bridge == "" {
		rec.Bridge = localcluster.NodeBridge(nodeName)
	}
	confDir := filepath.Join(nodeDir, "cni")
	_, podnetErr := os.Stat(podnetDir)
	_, confErr := os.Stat(confDir)
	if podnetErr != nil && confErr != nil && !linkExists(rec.Bridge) && !recorded {
		return nil
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("the pod network of a `make up` as root is left (bridge %s, %s): run `make down` as root", rec.Bridge, podnetDir)
	}
	var errs []error
	if podnetErr == nil {
		if rec.CNIBinDir == "" {
			rec.CNIBinDir, _ = cniBinDir()
		}
		if err := cniDelAll(ctx, filepath.Join(podnetDir, "cni"), rec.CNIBinDir); err != nil {
			errs = append(errs, err)
		}
		if err := localcluster.UnmountUnder(filepath.Join(podnetDir, "netns")); err != nil {
			errs = append(errs, err)
		}
	}
	// The node agent writes the bridge network's config once the Node has a
	// podCIDR, whether or not a pod used it.
	for _, d := range []string{podnetDir, confDir} {
		if err := os.RemoveAll(d); err != nil {
			errs = append(errs, err)
		}
	}
	if linkExists(rec.Bridge) {
		if out, err := exec.Command("ip", "link", "delete", rec.Bridge).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("ip link delete %s: %v: %s", rec.Bridge, err, strings.TrimSpace(string(out))))
		}
	}
	if recorded { // else which CNI-* chains are ours is unknown
		if err := removeCNIChains(rec, recordPath); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("pod network: %w", errors.Join(errs...))
	}
	return nil
}

// removeCNIChains removes the CNI-* chains that were not there before the
// first `up` (the firewall plugin's), and then the record, unless other
// node agents' bridge networks on this host (an end-to-end test's) may
// use them.
func removeCNIChains(rec podNetworkState, recordPath string) error {
	if others := otherBridges(rec.Bridge); len(others) > 0 {
		fmt.Printf("   left the CNI-* iptables chains: the pod networks of other nodes on this host (bridges %s) use them; `make down` again removes them once those are gone\n", strings.Join(others, ", "))
		return nil
	}
	if err := localcluster.RemoveNewChains(localcluster.ChainsOf(rec.CNIChainsBefore), "CNI-"); err != nil {
		return fmt.Errorf("remove the CNI plugins' iptables chains: %w", err)
	}
	if err := os.Remove(recordPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// cniDelAll runs CNI DEL for every attachment in libcni's cache, with the
// cached config and arguments (a pod's namespace only while it is still
// there: the plugins clean up without it).
func cniDelAll(ctx context.Context, cacheDir, pluginDir string) error {
	cni := libcni.NewCNIConfigWithCacheDir([]string{pluginDir}, cacheDir, nil)
	atts, err := cni.GetCachedAttachments("")
	if err != nil {
		return fmt.Errorf("read the CNI cache %s: %w", cacheDir, err)
	}
	var errs []error
	for _, a := range atts {
		list, err := libcni.NetworkConfFromBytes(a.Config)
		if err != nil {
			errs = append(errs, fmt.Errorf("cached config of %s on network %q: %w", a.ContainerID, a.Network, err))
			continue
		}
		netns := a.NetNS
		var st unix.Statfs_t
		if unix.Statfs(netns, &st) != nil || st.Type != unix.NSFS_MAGIC {
			netns = ""
		}
		rt := &libcni.RuntimeConf{ContainerID: a.ContainerID, NetNS: netns, IfName: a.IfName, Args: a.CniArgs, CapabilityArgs: a.CapabilityArgs}
		dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err = cni.DelNetworkList(dctx, list, rt)
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("CNI DEL %s from network %q: %w", a.ContainerID, a.Network, err))
		}
	}
	return errors.Join(errs...)
}

func linkExists(name string) bool {
	_, err := os.Stat(filepath.Join("/sys/class/net", name))
	return err == nil
}

// otherBridges are the node agents' bridges on this host other than ours.
func otherBridges(ours string) []string {
	entries, _ := os.ReadDir("/sys/class/net")
	var out []string
	for _, e := range entries {
		if n := e.Name(); strings.HasPrefix(n, "cni-wl-") && n != ours {
			out = append(out, n)
		}
	}
	return out
}
