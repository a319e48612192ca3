package podnet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
)

// Defaults, those of a kubelet's container runtime.
const (
	DefaultConfDir   = "/etc/cni/net.d"
	DefaultPluginDir = "/opt/cni/bin"
	DefaultIfName    = "eth0"
)

// containerIDPrefix marks the CNI attachments (and so the cache entries)
// that are this package's: a pod's container ID is the prefix and its UID.
const containerIDPrefix = "wasmlet-"

// undoTimeout bounds the teardown that undoes a failed Setup.
const undoTimeout = time.Minute

// Config configures a Manager.
type Config struct {
	// StateDir holds the pods' namespace files (StateDir/netns/<pod UID>)
	// and, by default, libcni's cache (StateDir/cni). Required.
	StateDir string
	// ConfDir holds the CNI network configs. Default DefaultConfDir.
	ConfDir string
	// NetworkName picks the config of that name; default the first in
	// ConfDir by file name.
	NetworkName string
	// PluginDirs are searched for plugin binaries. Default DefaultPluginDir.
	PluginDirs []string
	// CacheDir is libcni's cache of attachments, from which a pod's IPs are
	// read back and its attachment deleted with the config it was added
	// with. Default StateDir/cni. It must be this node agent's alone:
	// Cleanup deletes every attachment it finds there that is not a kept
	// pod's.
	CacheDir string
	// IfName is the pod's interface. Default DefaultIfName.
	IfName string
	Log    *slog.Logger // optional
}

// Pod identifies a pod to the network plugins. UID names its namespace and
// its CNI container ID, so it must be set and made of [A-Za-z0-9_.-].
type Pod struct {
	Namespace, Name, UID string
}

func (p Pod) String() string { return p.Namespace + "/" + p.Name }

var validUID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.\-]*$`)

func (p Pod) validate() error {
	if !validUID.MatchString(p.UID) {
		return fmt.Errorf("%w: pod %s has UID %q", ErrInvalidPod, p, p.UID)
	}
	return nil
}

// PortMapping is a container port published on the node (a hostPort),
// passed to plugins as the portMappings capability.
type PortMapping struct {
	HostPort      int32
	ContainerPort int32
	Protocol      string // TCP (default), UDP or SCTP
	HostIP        string // optional
}

// Attachment is a pod's place on the network.
type Attachment struct {
	// NetNS is the path of the pod's network namespace.
	NetNS string
	// IPs are the pod's addresses (status.podIPs), in the order the
	// network gave them.
	IPs []netip.Addr
	// Network is the name of the CNI network the pod is attached to.
	Network string
}

// Manager sets pods' networks up and tears them down. It is safe for
// concurrent use by different pods.
type Manager struct {
	cfg      Config
	cni      *libcni.CNIConfig
	loopback *libcni.NetworkConfigList
	log      *slog.Logger
}

// New checks cfg and fills in its defaults. It reads no config and runs no
// plugin: a missing config or plugin is reported by Setup, naming what is
// missing and where it looked.
func New(cfg Config) (*Manager, error) {
	if cfg.StateDir == "" {
		return nil, errors.New("podnet: no state dir")
	}
	if cfg.ConfDir == "" {
		cfg.ConfDir = DefaultConfDir
	}
	if len(cfg.PluginDirs) == 0 {
		cfg.PluginDirs = []string{DefaultPluginDir}
	}
	if cfg.CacheDir == "" {
		cfg.CacheDir = filepath.Join(cfg.StateDir, "cni")
	}
	if cfg.IfName == "" {
		cfg.IfName = DefaultIfName
	}
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	return &Manager{
		cfg:      cfg,
		cni:      libcni.NewCNIConfigWithCacheDir(cfg.PluginDirs, cfg.CacheDir, nil),
		loopback: loopbackNetwork(),
		log:      log,
	}, nil
}

func (m *Manager) netnsDir() string            { return filepath.Join(m.cfg.StateDir, "netns") }
func (m *Manager) netnsPath(uid string) string { return filepath.Join(m.netnsDir(), uid) }
func containerID(uid string) string            { return containerIDPrefix + uid }

// Setup gives the pod a network namespace attached to the configured network
// (and its loopback brought up) and returns where it is. Calling it again for
// a pod that is set up returns the same attachment; a namespace left by a
// Setup that failed half-way is detached and attached afresh. On error
// nothing is left behind.
func (m *Manager) Setup(ctx context.Context, pod Pod, ports []PortMapping) (Attachment, error) {
	if err := pod.validate(); err != nil {
		return Attachment{}, err
	}
	path := m.netnsPath(pod.UID)
	if isNetNS(path) {
		if att, ok := m.cached(pod.UID, path); ok {
			return att, nil
		}
	}
	list, err := loadNetwork(m.cfg.ConfDir, m.cfg.NetworkName)
	if err != nil {
		return Attachment{}, fmt.Errorf("set up network of pod %s: %w", pod, err)
	}
	for _, l := range []*libcni.NetworkConfigList{list, m.loopback} {
		if err := m.checkPlugins(l); err != nil {
			return Attachment{}, fmt.Errorf("set up network of pod %s: %w", pod, err)
		}
	}
	if isNetNS(path) {
		if err := m.detach(ctx, pod, path, list); err != nil {
			return Attachment{}, fmt.Errorf("set up network of pod %s: detach a half-done attachment: %w", pod, err)
		}
	} else {
		if err := removeNetNS(path); err != nil { // a file a reboot unmounted
			return Attachment{}, fmt.Errorf("set up network of pod %s: %w", pod, err)
		}
		if err := newNetNS(path); err != nil {
			return Attachment{}, fmt.Errorf("set up network of pod %s: %w", pod, err)
		}
	}
	att, err := m.attach(ctx, pod, path, list, ports)
	if err != nil {
		// Undo even when ctx ended (the pod went away meanwhile): a lease
		// left behind is an address lost until Cleanup.
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), undoTimeout)
		defer cancel()
		if derr := m.teardown(uctx, pod); derr != nil {
			m.log.Warn("undo failed pod network setup", "pod", pod.String(), "err", derr)
		}
		return Attachment{}, fmt.Errorf("set up network of pod %s: %w", pod, err)
	}
	m.log.Debug("pod network set up", "pod", pod.String(), "netns", path, "ips", att.IPs)
	return att, nil
}

func (m *Manager) attach(ctx context.Context, pod Pod, path string, list *libcni.NetworkConfigList, ports []PortMapping) (Attachment, error) {
	lo := m.runtimeConf(pod, path, nil)
	lo.IfName = "lo"
	if _, err := m.cni.AddNetworkList(ctx, m.loopback, lo); err != nil {
		return Attachment{}, fmt.Errorf("bring up loopback: %w", err)
	}
	res, err := m.cni.AddNetworkList(ctx, list, m.runtimeConf(pod, path, ports))
	if err != nil {
		if strings.Contains(err.Error(), "no IP addresses available") {
			err = fmt.Errorf("%w: %w (pods on this node hold every address of its range)", ErrAddressesExhausted, err)
		}
		return Attachment{}, fmt.Errorf("add to network %q: %w", list.Name, err)
	}
	ips, err := resultIPs(res)
	if err != nil {
		return Attachment{}, fmt.Errorf("network %q: %w", list.Name, err)
	}
	if len(ips) == 0 {
		return Attachment{}, fmt.Errorf("network %q gave the pod no IP address", list.Name)
	}
	return Attachment{NetNS: path, IPs: ips, Network: list.Name}, nil
}

// detach deletes the pod from the network without a cached attachment to go
// by (an ADD that failed or was cut short leaves none), with the current
// config.
func (m *Manager) detach(ctx context.Context, pod Pod, path string, list *libcni.NetworkConfigList) error {
	return m.cni.DelNetworkList(ctx, list, m.runtimeConf(pod, path, nil))
}

// Teardown deletes the pod's attachments with the configs they were added
// with and removes its namespace. A pod with neither (never set up, or torn
// down already) is no error. When a plugin fails, the namespace is kept so
// that Teardown can be called again.
func (m *Manager) Teardown(ctx context.Context, pod Pod) error {
	if err := pod.validate(); err != nil {
		return err
	}
	if err := m.teardown(ctx, pod); err != nil {
		return fmt.Errorf("tear down network of pod %s: %w", pod, err)
	}
	return nil
}

func (m *Manager) teardown(ctx context.Context, pod Pod) error {
	path := m.netnsPath(pod.UID)
	netns := ""
	if isNetNS(path) {
		netns = path
	}
	cid := containerID(pod.UID)
	atts, err := m.cni.GetCachedAttachments(cid)
	if err != nil {
		return fmt.Errorf("read CNI cache %s: %w", m.cfg.CacheDir, err)
	}
	var errs []error
	attached := false // to the pod's network, not only to loopback
	for _, a := range atts {
		attached = attached || a.IfName == m.cfg.IfName
		list, err := libcni.NetworkConfFromBytes(a.Config)
		if err != nil {
			errs = append(errs, fmt.Errorf("cached config of network %q: %w", a.Network, err))
			continue
		}
		rt := &libcni.RuntimeConf{ContainerID: cid, NetNS: netns, IfName: a.IfName, Args: a.CniArgs, CapabilityArgs: a.CapabilityArgs}
		if err := m.cni.DelNetworkList(ctx, list, rt); err != nil {
			errs = append(errs, fmt.Errorf("delete from network %q: %w", a.Network, err))
		}
	}
	if !attached && netns != "" {
		// A namespace without a cached attachment to the pod's network: an
		// ADD may have got half-way (an address leased, a veth made)
		// before it failed, and libcni caches only what succeeded.
		if list, err := loadNetwork(m.cfg.ConfDir, m.cfg.NetworkName); err == nil {
			if err := m.detach(ctx, pod, netns, list); err != nil {
				errs = append(errs, fmt.Errorf("delete from network %q: %w", list.Name, err))
			}
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	return removeNetNS(path)
}

// Cleanup is called once at start, before any Setup, with the pods still
// running. It tears down every namespace and cached attachment of a pod not
// in keep, and returns the attachments of kept pods, by UID, read back from
// the CNI cache. A kept pod whose namespace did not survive (the host
// rebooted) is cleaned up too and missing from the map: Setup it again.
// A kept pod whose namespace is there without a cached attachment is left
// alone and missing from the map: Setup repairs it.
func (m *Manager) Cleanup(ctx context.Context, keep []Pod) (map[string]Attachment, error) {
	kept := make(map[string]Pod, len(keep))
	for _, p := range keep {
		kept[p.UID] = p
	}
	found := map[string]bool{}
	entries, err := os.ReadDir(m.netnsDir())
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("clean up pod networks: %w", err)
	}
	for _, e := range entries {
		found[e.Name()] = true
	}
	atts, err := m.cni.GetCachedAttachments("")
	if err != nil {
		return nil, fmt.Errorf("clean up pod networks: read CNI cache %s: %w", m.cfg.CacheDir, err)
	}
	for _, a := range atts {
		if uid, ok := strings.CutPrefix(a.ContainerID, containerIDPrefix); ok {
			found[uid] = true
		}
	}
	adopted := map[string]Attachment{}
	var errs []error
	for uid := range found {
		pod, keep := kept[uid]
		if !keep {
			pod = Pod{UID: uid}
		}
		if err := pod.validate(); err != nil {
			errs = append(errs, err)
			continue
		}
		path := m.netnsPath(uid)
		if keep && isNetNS(path) {
			if att, ok := m.cached(uid, path); ok {
				adopted[uid] = att
			}
			continue
		}
		if err := m.teardown(ctx, pod); err != nil {
			errs = append(errs, fmt.Errorf("pod UID %s: %w", uid, err))
			continue
		}
		m.log.Info("removed leftover pod network", "podUID", uid, "kept", keep)
	}
	if len(errs) > 0 {
		return adopted, fmt.Errorf("clean up pod networks: %w", errors.Join(errs...))
	}
	return adopted, nil
}

// cached reads a pod's attachment back from the CNI cache.
func (m *Manager) cached(uid, path string) (Attachment, bool) {
	atts, err := m.cni.GetCachedAttachments(containerID(uid))
	if err != nil {
		return Attachment{}, false
	}
	for _, a := range atts {
		if a.IfName != m.cfg.IfName {
			continue
		}
		list, err := libcni.NetworkConfFromBytes(a.Config)
		if err != nil {
			continue
		}
		res, err := m.cni.GetNetworkListCachedResult(list, &libcni.RuntimeConf{ContainerID: a.ContainerID, IfName: a.IfName})
		if err != nil || res == nil {
			continue
		}
		ips, err := resultIPs(res)
		if err != nil || len(ips) == 0 {
			continue
		}
		return Attachment{NetNS: path, IPs: ips, Network: list.Name}, true
	}
	return Attachment{}, false
}

// runtimeConf is what a CRI runtime passes for a pod sandbox.
func (m *Manager) runtimeConf(pod Pod, netns string, ports []PortMapping) *libcni.RuntimeConf {
	cid := containerID(pod.UID)
	rt := &libcni.RuntimeConf{
		ContainerID: cid,
		NetNS:       netns,
		IfName:      m.cfg.IfName,
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", pod.Namespace},
			{"K8S_POD_NAME", pod.Name},
			{"K8S_POD_INFRA_CONTAINER_ID", cid},
			{"K8S_POD_UID", pod.UID},
		},
	}
	var pm []map[string]any
	for _, p := range ports {
		if p.HostPort <= 0 {
			continue
		}
		proto := strings.ToLower(p.Protocol)
		if proto == "" {
			proto = "tcp"
		}
		e := map[string]any{"hostPort": p.HostPort, "containerPort": p.ContainerPort, "protocol": proto}
		if p.HostIP != "" {
			e["hostIP"] = p.HostIP
		}
		pm = append(pm, e)
	}
	if len(pm) > 0 {
		rt.CapabilityArgs = map[string]any{"portMappings": pm}
	}
	return rt
}

// checkPlugins fails, naming it and where it looked, on the first plugin of
// list (or IPAM plugin) that is in none of the plugin dirs.
func (m *Manager) checkPlugins(list *libcni.NetworkConfigList) error {
	for _, p := range list.Plugins {
		for _, typ := range []string{p.Network.Type, p.Network.IPAM.Type} {
			if typ == "" {
				continue
			}
			if _, err := invoke.FindInPath(typ, m.cfg.PluginDirs); err != nil {
				return fmt.Errorf("%w: %q (network %q) is in none of %s: install the network's plugins there, or build the standard ones with make cni (hack/cni/build.sh) and use the directory it prints",
					ErrPluginNotFound, typ, list.Name, strings.Join(m.cfg.PluginDirs, ", "))
			}
		}
	}
	return nil
}

// resultIPs returns the addresses a result gives to interfaces inside the
// pod's namespace (or to no interface in particular).
func resultIPs(res types.Result) ([]netip.Addr, error) {
	r, err := current.NewResultFromResult(res)
	if err != nil {
		return nil, fmt.Errorf("read CNI result: %w", err)
	}
	var ips []netip.Addr
	for _, ip := range r.IPs {
		if ip.Interface != nil && *ip.Interface >= 0 && *ip.Interface < len(r.Interfaces) && r.Interfaces[*ip.Interface].Sandbox == "" {
			continue
		}
		if a, ok := netip.AddrFromSlice(ip.Address.IP); ok {
			ips = append(ips, a.Unmap())
		}
	}
	return ips, nil
}
