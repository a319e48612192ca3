// Package podnet gives pods their network namespaces and IPs through CNI, the
// way a container runtime does for a kubelet.
//
// It owns, per pod: a network namespace, kept as a bind-mounted file at
// <StateDir>/netns/<pod UID>; that namespace's attachments to the configured
// CNI network (the first network config in ConfDir, as CRI runtimes pick it)
// and to a loopback network; and libcni's cache of those attachments
// (CacheDir, default <StateDir>/cni), from which it reads a pod's IPs back
// after a restart. The CNI container ID of a pod is "wasmlet-<pod UID>"; CNI_ARGS
// carry K8S_POD_NAMESPACE, K8S_POD_NAME, K8S_POD_INFRA_CONTAINER_ID and
// K8S_POD_UID, and hostPorts go to plugins as the portMappings capability.
//
// It must not touch pods' status or the executor: it returns a namespace path
// and IPs, and the pod worker decides what to do with them. It changes nothing
// on the host itself; the plugins do (the bridge plugin creates a bridge and
// veth pairs and, as a gateway, turns on IP forwarding; portmap adds DNAT
// rules for hostPorts; firewall accepts pod addresses in the FORWARD chain).
//
// WriteDefaultConfig writes the network the local stack and the tests use: a
// bridge with host-local IPAM on the node's pod CIDR, portmap and firewall,
// without masquerade, so that pod addresses are reachable from the node and
// from other pods on it and lead nowhere else. On a real node the cluster's CNI config in
// /etc/cni/net.d and plugins in /opt/cni/bin are used unaltered.
//
// Usage:
//
//	m, err := podnet.New(podnet.Config{StateDir: "/var/lib/wasmlet/podnet"})
//	adopted, err := m.Cleanup(ctx, runningPods) // once, before any Setup
//	att, err := m.Setup(ctx, podnet.PodOf(pod), podnet.HostPorts(&pod.Spec))
//	// att.NetNS: the namespace to open the pod's listeners in (InNamespace);
//	// att.IPs: status.podIPs.
//	err = m.Teardown(ctx, podnet.PodOf(pod)) // when the pod is gone
//
// Setup, Teardown and InNamespace need CAP_SYS_ADMIN and CAP_NET_ADMIN (root).
// Calls for different pods may run concurrently; calls for one pod must not.
package podnet
