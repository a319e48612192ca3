//go:build tools

// Package cni pins the standard CNI plugins (bridge, host-local, loopback,
// portmap, firewall) that give pods their IPs in the local stack and in the node
// agent's network tests. It is its own module so that the plugins'
// dependencies (netlink, iptables, nftables) never enter the main module's
// graph; build.sh builds the binaries from it.
package cni

import (
	_ "github.com/containernetworking/plugins/plugins/ipam/host-local"
	_ "github.com/containernetworking/plugins/plugins/main/bridge"
	_ "github.com/containernetworking/plugins/plugins/main/loopback"
	_ "github.com/containernetworking/plugins/plugins/meta/firewall"
	_ "github.com/containernetworking/plugins/plugins/meta/portmap"
)
