package podnet

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
)

// loadNetwork returns the network a pod is attached to: the config of the
// given name in dir, or else the first (by file name) that parses, as CRI
// runtimes choose it. A .conf file is turned into a one-plugin list.
func loadNetwork(dir, name string) (*libcni.NetworkConfigList, error) {
	files, err := libcni.ConfFiles(dir, []string{".conf", ".conflist", ".json"})
	if err != nil {
		return nil, fmt.Errorf("read CNI config dir %s: %w", dir, err)
	}
	slices.Sort(files)
	var skipped []error
	for _, f := range files {
		var list *libcni.NetworkConfigList
		if strings.HasSuffix(f, ".conflist") {
			list, err = libcni.NetworkConfFromFile(f)
		} else {
			var conf *libcni.PluginConfig
			if conf, err = libcni.ConfFromFile(f); err == nil {
				list, err = libcni.ConfListFromConf(conf)
			}
		}
		if err != nil {
			skipped = append(skipped, fmt.Errorf("%s: %w", f, err))
			continue
		}
		if name == "" || list.Name == name {
			return list, nil
		}
	}
	what := "no CNI network config"
	if name != "" {
		what = fmt.Sprintf("no CNI network config named %q", name)
	}
	err = fmt.Errorf("%w: %s in %s (write one, e.g. with podnet.WriteDefaultConfig for the local stack, or install the cluster's network)", ErrNoConfig, what, dir)
	return nil, errors.Join(append([]error{err}, skipped...)...)
}

// loopbackNetwork brings up a pod's "lo", as CRI runtimes do beside the
// cluster's network, with the standard loopback plugin.
func loopbackNetwork() *libcni.NetworkConfigList {
	list, err := libcni.NetworkConfFromBytes([]byte(`{"cniVersion":"1.0.0","name":"wasmlet-loopback","plugins":[{"type":"loopback"}]}`))
	if err != nil {
		panic(err) // a constant that parses
	}
	return list
}

// DefaultNetwork describes the network WriteDefaultConfig writes.
type DefaultNetwork struct {
	// PodCIDR is the node's spec.podCIDR. Required. It must be a private
	// range used nowhere else on the host: the local stack takes
	// 10.244.<n>.0/24 out of the cluster CIDR 10.244.0.0/16 given to the
	// controller-manager (--allocate-node-cidrs --cluster-cidr), the range
	// kubeadm-style clusters use for pods; the bridge's address in it is the
	// pods' gateway.
	PodCIDR netip.Prefix
	// Name of the network (and its config file's, 10-<name>.conflist).
	// Default "wasmlet".
	Name string
	// Bridge is the bridge interface in the host namespace (at most 15
	// bytes). Default "cni-wasmlet0"; a node agent names its own
	// (BridgeFor), so that two nodes on one host each have theirs.
	Bridge string
	// DataDir is where host-local keeps its leases, one file per address
	// under DataDir/<Name>. Default host-local's (/var/lib/cni/networks).
	DataDir string
}

// BridgeFor is the bridge of node's default network: "cni-wl-" and 8 hex
// digits of a hash of the node's name (the name itself may be longer than
// an interface name may be). Each node on a host has its own bridge, with
// its own podCIDR's gateway address on it.
func BridgeFor(node string) string {
	sum := sha256.Sum256([]byte(node))
	return "cni-wl-" + hex.EncodeToString(sum[:4])
}

// WriteDefaultConfig writes dir/10-<name>.conflist: a bridge with host-local
// IPAM on the pod CIDR, portmap for hostPorts, and firewall. The bridge is
// the pods' gateway and their default route (so that replies reach the
// node's own addresses, and Service IPs that kube-proxy rewrites on the node
// are reachable) but does not masquerade: a packet a pod sends beyond the
// node leaves with a pod address no one routes back, so it is never
// answered (and Wasm guests cannot open outbound connections). firewall (its
// iptables backend) accepts the pods' addresses in the host's FORWARD chain:
// with br_netfilter loaded, traffic between pods on the bridge passes that
// chain, and a policy of DROP (Docker sets one) would stop it. Returns the
// file's path; a file already there is replaced.
func WriteDefaultConfig(dir string, n DefaultNetwork) (string, error) {
	if !n.PodCIDR.IsValid() {
		return "", errors.New("write default CNI config: no pod CIDR (the node's spec.podCIDR)")
	}
	if n.Name == "" {
		n.Name = "wasmlet"
	}
	if n.Bridge == "" {
		n.Bridge = "cni-wasmlet0"
	}
	if len(n.Bridge) > 15 {
		return "", fmt.Errorf("write default CNI config: bridge name %q is longer than 15 bytes", n.Bridge)
	}
	defaultRoute := "0.0.0.0/0"
	if n.PodCIDR.Addr().Is6() {
		defaultRoute = "::/0"
	}
	ipam := map[string]any{
		"type":   "host-local",
		"ranges": [][]map[string]string{{{"subnet": n.PodCIDR.Masked().String()}}},
		"routes": []map[string]string{{"dst": defaultRoute}},
	}
	if n.DataDir != "" {
		ipam["dataDir"] = n.DataDir
	}
	conf := map[string]any{
		"cniVersion": "1.0.0",
		"name":       n.Name,
		"plugins": []map[string]any{
			{
				"type":        "bridge",
				"bridge":      n.Bridge,
				"isGateway":   true,
				"ipMasq":      false,
				"hairpinMode": true,
				"ipam":        ipam,
			},
			{
				"type":         "portmap",
				"capabilities": map[string]bool{"portMappings": true},
			},
			{
				"type":    "firewall",
				"backend": "iptables",
			},
		},
	}
	b, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("write default CNI config: %w", err)
	}
	path := filepath.Join(dir, "10-"+n.Name+".conflist")
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return "", fmt.Errorf("write default CNI config: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("write default CNI config: %w", err)
	}
	return path, nil
}

// CachedPluginDir returns the newest complete build of the standard plugins
// that hack/cni/build.sh (make cni) leaves under cache/cni/<version>-<hash>/bin,
// where cache is $WASMLET_CACHE or ~/.cache/wasmlet when empty.
func CachedPluginDir(cache string) (string, error) {
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("find the CNI plugins build: %w", err)
		}
		cache = filepath.Join(home, ".cache", "wasmlet")
	}
	root := filepath.Join(cache, "cni")
	dirs, _ := filepath.Glob(filepath.Join(root, "*", "bin"))
	var best string
	var bestTime time.Time
	for _, d := range dirs {
		if strings.HasSuffix(filepath.Dir(d), ".tmp") {
			continue
		}
		complete := true
		for _, p := range standardPlugins {
			if st, err := os.Stat(filepath.Join(d, p)); err != nil || st.Mode()&0o111 == 0 {
				complete = false
			}
		}
		st, err := os.Stat(d)
		if complete && err == nil && (best == "" || st.ModTime().After(bestTime)) {
			best, bestTime = d, st.ModTime()
		}
	}
	if best == "" {
		return "", fmt.Errorf("%w: no build of the standard CNI plugins in %s: run make cni (hack/cni/build.sh)", ErrPluginNotFound, root)
	}
	return best, nil
}

// standardPlugins are the plugins hack/cni/build.sh builds: those the
// default network and the loopback network use.
var standardPlugins = [...]string{"bridge", "host-local", "loopback", "portmap", "firewall"}
