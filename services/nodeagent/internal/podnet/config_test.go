package podnet

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/wasmlet/wasmlet/internal/testharness/localcluster"
)

func TestWriteDefaultConfig(t *testing.T) {
	dir := t.TempDir()
	path, err := WriteDefaultConfig(dir, DefaultNetwork{PodCIDR: netip.MustParsePrefix("10.244.3.7/24"), DataDir: "/x/leases"})
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, "10-wasmlet.conflist"); path != want {
		t.Errorf("path %s, want %s", path, want)
	}
	list, err := loadNetwork(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, p := range list.Plugins {
		types = append(types, p.Network.Type)
	}
	if list.Name != "wasmlet" || strings.Join(types, ",") != "bridge,portmap,firewall" {
		t.Fatalf("network %s with plugins %v, want wasmlet: bridge, portmap, firewall", list.Name, types)
	}
	if got := list.Plugins[0].Network.IPAM.Type; got != "host-local" {
		t.Errorf("IPAM %q, want host-local", got)
	}
	var bridge struct {
		Bridge    string `json:"bridge"`
		IsGateway bool   `json:"isGateway"`
		IPMasq    bool   `json:"ipMasq"`
		IPAM      struct {
			DataDir string                `json:"dataDir"`
			Ranges  [][]map[string]string `json:"ranges"`
		} `json:"ipam"`
	}
	if err := json.Unmarshal(list.Plugins[0].Bytes, &bridge); err != nil {
		t.Fatal(err)
	}
	if bridge.Bridge != "cni-wasmlet0" || !bridge.IsGateway || bridge.IPMasq {
		t.Errorf("bridge %+v, want cni-wasmlet0, gateway, no masquerade", bridge)
	}
	if bridge.IPAM.DataDir != "/x/leases" || len(bridge.IPAM.Ranges) != 1 || bridge.IPAM.Ranges[0][0]["subnet"] != "10.244.3.0/24" {
		t.Errorf("IPAM %+v, want subnet 10.244.3.0/24 (masked), dataDir /x/leases", bridge.IPAM)
	}
	if _, err := WriteDefaultConfig(dir, DefaultNetwork{}); err == nil {
		t.Error("no pod CIDR: no error")
	}
	if _, err := WriteDefaultConfig(dir, DefaultNetwork{PodCIDR: netip.MustParsePrefix("10.0.0.0/24"), Bridge: "a-name-too-long-for-linux"}); err == nil {
		t.Error("bridge name of 25 bytes: no error")
	}
}

func TestLoadNetwork(t *testing.T) {
	dir := t.TempDir()
	if _, err := loadNetwork(dir, ""); !errors.Is(err, ErrNoConfig) || !strings.Contains(err.Error(), dir) {
		t.Errorf("empty dir: %v, want ErrNoConfig naming %s", err, dir)
	}
	if _, err := loadNetwork(filepath.Join(dir, "absent"), ""); !errors.Is(err, ErrNoConfig) {
		t.Errorf("absent dir: %v, want ErrNoConfig", err)
	}
	// A broken file is skipped (and named), a .conf is made a list, and the
	// first by file name wins unless a name is asked for.
	os.WriteFile(filepath.Join(dir, "00-broken.conflist"), []byte("{"), 0o644)
	os.WriteFile(filepath.Join(dir, "20-single.conf"), []byte(`{"cniVersion":"1.0.0","name":"single","type":"bridge"}`), 0o644)
	if _, err := WriteDefaultConfig(dir, DefaultNetwork{PodCIDR: netip.MustParsePrefix("10.244.0.0/24"), Name: "other"}); err != nil {
		t.Fatal(err)
	}
	list, err := loadNetwork(dir, "")
	if err != nil || list.Name != "other" {
		t.Fatalf("first network: %v, %v; want other", list, err)
	}
	list, err = loadNetwork(dir, "single")
	if err != nil || list.Name != "single" || len(list.Plugins) != 1 {
		t.Fatalf("network single: %v, %v; want a one-plugin list", list, err)
	}
	if _, err := loadNetwork(dir, "nope"); !errors.Is(err, ErrNoConfig) || !strings.Contains(err.Error(), "00-broken.conflist") {
		t.Errorf("unknown name: %v, want ErrNoConfig naming the broken file", err)
	}
}

// Errors that come before any namespace is made need no privilege.
func TestSetupErrorsLeaveNothing(t *testing.T) {
	state, conf, bins := t.TempDir(), t.TempDir(), t.TempDir()
	m, err := New(Config{StateDir: state, ConfDir: conf, PluginDirs: []string{bins}})
	if err != nil {
		t.Fatal(err)
	}
	pod := Pod{Namespace: "ns", Name: "p", UID: "0f3c9a52-1111-2222-3333-444455556666"}
	_, err = m.Setup(t.Context(), pod, nil)
	if !errors.Is(err, ErrNoConfig) || !strings.Contains(err.Error(), "ns/p") {
		t.Errorf("no config: %v, want ErrNoConfig naming the pod", err)
	}
	if _, err := WriteDefaultConfig(conf, DefaultNetwork{PodCIDR: netip.MustParsePrefix("10.244.0.0/24")}); err != nil {
		t.Fatal(err)
	}
	_, err = m.Setup(t.Context(), pod, nil)
	if !errors.Is(err, ErrPluginNotFound) || !strings.Contains(err.Error(), `"bridge"`) || !strings.Contains(err.Error(), bins) || !strings.Contains(err.Error(), "make cni") {
		t.Errorf("no plugins: %v, want ErrPluginNotFound naming bridge, %s and make cni", err, bins)
	}
	for _, name := range []string{"bridge", "portmap"} {
		os.WriteFile(filepath.Join(bins, name), []byte("#!/bin/sh\nexit 1\n"), 0o755)
	}
	_, err = m.Setup(t.Context(), pod, nil)
	if !errors.Is(err, ErrPluginNotFound) || !strings.Contains(err.Error(), `"host-local"`) {
		t.Errorf("no IPAM plugin: %v, want ErrPluginNotFound naming host-local", err)
	}
	if _, err := m.Setup(t.Context(), Pod{Namespace: "ns", Name: "p", UID: "../x"}, nil); !errors.Is(err, ErrInvalidPod) {
		t.Errorf("UID ../x: %v, want ErrInvalidPod", err)
	}
	if entries, _ := os.ReadDir(filepath.Join(state, "netns")); len(entries) != 0 {
		t.Errorf("failed Setups left %d namespace files", len(entries))
	}
	if err := m.Teardown(t.Context(), pod); err != nil {
		t.Errorf("Teardown of a pod never set up: %v", err)
	}
	adopted, err := m.Cleanup(context.Background(), nil)
	if err != nil || len(adopted) != 0 {
		t.Errorf("Cleanup of nothing: %v, %v", adopted, err)
	}
}

func TestRuntimeConf(t *testing.T) {
	m, err := New(Config{StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	pod := Pod{Namespace: "ns", Name: "web", UID: "u-1"}
	rt := m.runtimeConf(pod, "/x/netns/u-1", []PortMapping{
		{HostPort: 8080, ContainerPort: 80},
		{ContainerPort: 81}, // no hostPort: not published
		{HostPort: 5353, ContainerPort: 53, Protocol: "UDP", HostIP: "127.0.0.1"},
	})
	if rt.ContainerID != "wasmlet-u-1" || rt.IfName != "eth0" || rt.NetNS != "/x/netns/u-1" {
		t.Errorf("runtime conf %+v", rt)
	}
	args := map[string]string{}
	for _, a := range rt.Args {
		args[a[0]] = a[1]
	}
	want := map[string]string{"IgnoreUnknown": "1", "K8S_POD_NAMESPACE": "ns", "K8S_POD_NAME": "web", "K8S_POD_INFRA_CONTAINER_ID": "wasmlet-u-1", "K8S_POD_UID": "u-1"}
	for k, v := range want {
		if args[k] != v {
			t.Errorf("CNI_ARGS %s=%q, want %q", k, args[k], v)
		}
	}
	b, _ := json.Marshal(rt.CapabilityArgs)
	if got, want := string(b), `{"portMappings":[{"containerPort":80,"hostPort":8080,"protocol":"tcp"},{"containerPort":53,"hostIP":"127.0.0.1","hostPort":5353,"protocol":"udp"}]}`; got != want {
		t.Errorf("capability args %s, want %s", got, want)
	}
	if rt := m.runtimeConf(pod, "", nil); rt.CapabilityArgs != nil {
		t.Errorf("no ports: capability args %v", rt.CapabilityArgs)
	}
}

func TestResultIPs(t *testing.T) {
	host, pod := 1, 2
	res := &current.Result{
		CNIVersion: "1.0.0",
		Interfaces: []*current.Interface{{Name: "br0"}, {Name: "veth1"}, {Name: "eth0", Sandbox: "/x"}},
		IPs: []*current.IPConfig{
			{Interface: &host, Address: *mustCIDR(t, "10.1.0.1/24")},
			{Interface: &pod, Address: *mustCIDR(t, "10.1.0.5/24")},
			{Interface: &pod, Address: *mustCIDR(t, "fd00::5/64")},
		},
	}
	ips, err := resultIPs(res)
	if err != nil {
		t.Fatal(err)
	}
	if len(ips) != 2 || ips[0] != netip.MustParseAddr("10.1.0.5") || ips[1] != netip.MustParseAddr("fd00::5") {
		t.Errorf("pod IPs %v, want [10.1.0.5 fd00::5]", ips)
	}
}

func mustCIDR(t *testing.T, s string) *net.IPNet {
	t.Helper()
	ip, n, err := net.ParseCIDR(s)
	if err != nil {
		t.Fatal(err)
	}
	n.IP = ip
	return n
}

func TestCachedPluginDir(t *testing.T) {
	cache := t.TempDir()
	if _, err := CachedPluginDir(cache); !errors.Is(err, ErrPluginNotFound) || !strings.Contains(err.Error(), "make cni") {
		t.Errorf("empty cache: %v, want ErrPluginNotFound saying make cni", err)
	}
	build := func(name string, plugins ...string) string {
		d := filepath.Join(cache, "cni", name, "bin")
		os.MkdirAll(d, 0o755)
		for _, p := range plugins {
			os.WriteFile(filepath.Join(d, p), nil, 0o755)
		}
		return d
	}
	complete := build("v1.10.0-aaaa", standardPlugins[:]...)
	build("v1.10.0-bbbb.tmp", standardPlugins[:]...) // unfinished
	build("v1.10.0-cccc", "bridge")                  // incomplete
	if got, err := CachedPluginDir(cache); err != nil || got != complete {
		t.Errorf("CachedPluginDir: %s, %v; want %s", got, err, complete)
	}
}

// Each node's bridge has a name of its own that fits an interface name,
// and the test harness names it as the node agent does.
func TestBridgeFor(t *testing.T) {
	a, b := BridgeFor("wasmlet-1"), BridgeFor("a-node-name-longer-than-an-interface-name")
	if a == b || len(a) > 15 || len(b) > 15 || !strings.HasPrefix(a, "cni-wl-") {
		t.Errorf("BridgeFor: %q and %q", a, b)
	}
	if h := localcluster.NodeBridge("wasmlet-1"); h != a {
		t.Errorf("localcluster.NodeBridge = %q, BridgeFor = %q", h, a)
	}
}
