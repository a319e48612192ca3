// Package localcluster starts a real, local Kubernetes control plane — etcd,
// kube-apiserver, kube-scheduler and kube-controller-manager — as plain processes
// on 127.0.0.1, for the end-to-end tests and for the developer stack (`make up`).
//
// It owns one state directory (Config.Dir) and nothing outside it:
//
//	pki/         cluster CA, front-proxy CA, serving and client certificates,
//	             the service-account key pair, node client certificates
//	logs/        one <component>.log per process (appended across restarts)
//	pids/        one <component>.pid per running process
//	etcd/        etcd's data
//	*.kubeconfig admin.kubeconfig and the components' own; nodes/<name>.kubeconfig,
//	             nodes/bootstrap-<token id>.kubeconfig (Config.BootstrapTokenAuth)
//	cluster.json the ports and paths Attach needs
//
// It does not build the binaries (hack/controlplane/build.sh does), does not run a
// kubelet or any node, and never touches the caller's kubeconfig.
//
// For a node with a pod network, a test run as root may add the real kube-proxy
// (Cluster.StartKubeProxy: iptables mode, for one node): it writes the host's
// iptables, and its stop function removes every KUBE-* chain it added.
//
// Processes are detached (own session, output to files, PIDs in files), so a cluster
// started by one command can be attached to or stopped by another:
//
//	c, err := localcluster.Start(ctx, localcluster.Config{Dir: dir, BinDir: bins})
//	...
//	kc, err := c.NodeKubeconfig("wasm-node-1") // the node agent's identity, not admin
//	...
//	err = localcluster.Stop(dir) // or c.Stop(), from any process
//
// The command in cmd/localcluster wraps this for the Makefile: `up` (idempotent),
// `status`, `node-kubeconfig NAME` and `down`.
//
// The PKI is generated once and reused while it is valid; etcd data persists in Dir
// across Stop/Start. etcd runs with --unsafe-no-fsync: this is a throwaway cluster and
// fsync dominates its latency on a loaded machine, so a host crash may lose its data.
//
// The kubelet client CA (KubeletClientCAPath) is the cluster CA, as with kubeadm: the
// node agent's kubelet API accepts the API server's client certificate and any other
// client certificate the cluster signs, and must authorize them (SubjectAccessReview).
//
// Tests use StartForTest, or Shared to run one cluster for a whole test package (a
// control plane takes 10–20 s to start):
//
//	var cluster localcluster.Shared
//
//	func TestMain(m *testing.M) { os.Exit(cluster.Run(m)) }
//
//	func TestSomething(t *testing.T) {
//		c := cluster.Get(t) // starts on first use; skips when the binaries are absent
//		...
//	}
//
// Binaries are found by FindBinDir: $WASMLET_CONTROLPLANE_DIR, else the newest
// complete directory under ${WASMLET_CACHE:-$HOME/.cache/wasmlet}/controlplane/. When
// none is found a test is skipped, unless WASMLET_REQUIRE_CLUSTER is set, then it fails.
package localcluster
