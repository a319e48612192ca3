// Package podworker runs the lifecycle of one pod on a wasmlet node: one
// Worker per pod, one goroutine per Worker. The Worker pulls each container's
// module through the registry cache, starts one executor instance per
// container, turns instance state changes into the pod's status, applies the
// restart policy with the kubelet's crash-loop back-off, and on deletion stops
// its instances within the grace period.
//
// Every phase of a pod is a named State with declared transitions
// (transitions in state.go); an undeclared transition is a bug and is logged
// and refused. The Worker is the only writer of its pod's status: it builds
// the status from its own state and hands a copy to Deps.Notify, which may
// coalesce (virtual-kubelet's status queue does).
//
// What the package must not touch: the Kubernetes API (beyond reading the
// secrets and config maps a pod references, through Deps.Client) and the
// executor's internals or its wire protocol — it speaks to executors only
// through instances.Runtime.
//
// Usage:
//
//	w := podworker.New(deps, pod)
//	go w.Run(ctx)
//	w.InstanceChanged(inst)   // an instances.Instance from the replica's watch
//	w.Terminate(30 * time.Second)
//	<-w.Done()
package podworker
