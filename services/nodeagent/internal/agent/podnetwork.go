package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"

	"github.com/wasmlet/wasmlet/services/nodeagent/internal/podnet"
)

// Pod network modes (Config.PodNetwork, --pod-network).
const (
	// PodNetworkAuto: pods that declare ports go on the CNI network of
	// CNIConfDir, when the node agent runs as root and finds a config
	// there at start; otherwise they keep the node's address.
	PodNetworkAuto = "auto"
	// PodNetworkBridge: the node agent writes the default network itself,
	// a bridge on the Node's spec.podCIDR (the controller-manager's
	// --allocate-node-cidrs), once that is allocated. Needs root.
	PodNetworkBridge = "bridge"
	// PodNetworkOff: no pod network.
	PodNetworkOff = "off"
)

// startPodNetwork returns the node's pod network, or nil when pods have
// none, after removing what pods gone since the last start left (their
// namespaces and addresses) and keeping what the node's running pods hold.
func startPodNetwork(ctx context.Context, cfg Config, client kubernetes.Interface, log *slog.Logger) (*podnet.Manager, error) {
	mode := cfg.PodNetwork
	if mode == "" {
		mode = PodNetworkAuto
	}
	confDir := cfg.CNIConfDir
	switch mode {
	case PodNetworkOff:
		return nil, nil
	case PodNetworkBridge:
		if confDir == "" {
			confDir = filepath.Join(cfg.StateDir, "cni", "net.d")
		}
		if os.Geteuid() != 0 {
			return nil, errors.New("--pod-network=bridge: making pods' network namespaces needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN)")
		}
	case PodNetworkAuto:
		if confDir == "" {
			confDir = podnet.DefaultConfDir
		}
		if os.Geteuid() != 0 {
			log.Info("no pod network: the node agent is not root; pods keep the node's address and their ports are opened on it")
			return nil, nil
		}
		if entries, _ := os.ReadDir(confDir); len(entries) == 0 {
			log.Info("no pod network: no CNI config; pods keep the node's address and their ports are opened on it", "cni_conf_dir", confDir)
			return nil, nil
		}
	default:
		return nil, fmt.Errorf("--pod-network %q: want auto, bridge or off", mode)
	}
	var pluginDirs []string
	if cfg.CNIBinDir != "" {
		pluginDirs = []string{cfg.CNIBinDir}
	}
	m, err := podnet.New(podnet.Config{StateDir: filepath.Join(cfg.StateDir, "podnet"), ConfDir: confDir, PluginDirs: pluginDirs, Log: log})
	if err != nil {
		return nil, err
	}
	keep, err := runningPods(ctx, client, cfg.NodeName)
	if err != nil {
		return nil, fmt.Errorf("pod network: list the node's pods: %w", err)
	}
	if _, err := m.Cleanup(ctx, keep); err != nil {
		log.Warn("pod network: clean-up of what gone pods left failed", "err", err)
	}
	if mode == PodNetworkBridge {
		go writeBridgeConfig(ctx, client, cfg, confDir, log)
	}
	log.Info("pod network", "mode", mode, "cni_conf_dir", confDir, "cni_bin_dirs", pluginDirs)
	return m, nil
}

// runningPods are the node's pods that may still run.
func runningPods(ctx context.Context, client kubernetes.Interface, node string) ([]podnet.Pod, error) {
	list, err := client.CoreV1().Pods(v1.NamespaceAll).List(ctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("spec.nodeName", node).String(),
	})
	if err != nil {
		return nil, err
	}
	var out []podnet.Pod
	for i := range list.Items {
		if p := &list.Items[i]; p.Status.Phase != v1.PodSucceeded && p.Status.Phase != v1.PodFailed {
			out = append(out, podnet.PodOf(p))
		}
	}
	return out, nil
}

// writeBridgeConfig waits for the Node's spec.podCIDR and writes the
// default bridge network on it. Pods that need the network before then
// fail to set it up (no CNI config) and try again after a back-off.
func writeBridgeConfig(ctx context.Context, client kubernetes.Interface, cfg Config, confDir string, log *slog.Logger) {
	for said := false; ctx.Err() == nil; {
		n, err := client.CoreV1().Nodes().Get(ctx, cfg.NodeName, metav1.GetOptions{})
		if err == nil && n.Spec.PodCIDR != "" {
			cidr, err := netip.ParsePrefix(n.Spec.PodCIDR)
			if err != nil {
				log.Error("pod network: the Node's spec.podCIDR is not a CIDR", "pod_cidr", n.Spec.PodCIDR, "err", err)
				return
			}
			path, err := podnet.WriteDefaultConfig(confDir, podnet.DefaultNetwork{PodCIDR: cidr, Bridge: podnet.BridgeFor(cfg.NodeName), DataDir: filepath.Join(cfg.StateDir, "podnet", "ipam")})
			if err != nil {
				log.Error("pod network: write the bridge network", "err", err)
				return
			}
			log.Info("pod network: bridge network written", "pod_cidr", cidr, "bridge", podnet.BridgeFor(cfg.NodeName), "config", path)
			return
		}
		if !said && err == nil {
			said = true
			log.Info("pod network: waiting for the Node's spec.podCIDR (kube-controller-manager --allocate-node-cidrs --cluster-cidr)")
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}
