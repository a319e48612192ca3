// Package podworker runs the lifecycle of one pod on a wasmlet node: one
// Worker per pod, one goroutine per Worker, and the only writer of its
// pod's status. It owns pulling through the registry cache, the pod's
// volumes, its place on the pod network when it declares ports (through
// Deps.Network, network.go: set up with the volumes, torn down when its
// instances have stopped; its containers' ports handed to the executor as
// listeners), one executor instance per container (spec.go), the restart
// policy with one back-off (backoff.go) and the status built from the
// containers (status.go).
//
// It must not touch the Kubernetes API beyond reading what a pod
// references (Deps.Client), nor the executor's internals or wire: it holds
// an instances.Runtime. Restart counts live in instance labels
// (LabelRestartCount), so a restarted node agent adopts what it finds.
//
// Each State has a handler (state.go) that reads the world (the pod, its
// instances) and returns the next state; Run enters what it returns. The
// states that run instances share one level-based handler: apply what the
// executor reported, start what is due, name the state, wait for a change
// or the periodic resync. Init containers go through it like the others.
// The resync lists the pod's instances on its executor: what it shows is
// applied, and an instance believed live that it lacks is lost, as on the
// executor's loss (a failed list changes nothing; an instance created
// while it ran is not judged by it).
//
//	state             kubectl shows                               next
//	Registered        Pending                                     Pulling
//	Pulling           ContainerCreating; ErrImagePull             PreparingVolumes, PullBackOff
//	PullBackOff       ImagePullBackOff                            Pulling
//	PreparingVolumes  ContainerCreating; CreateContainerConfigError Initializing, Starting
//	Initializing      Init:N/M                                    Starting, Running, CrashLoopBackOff, Completed
//	Starting          ContainerCreating; CreateContainerError     Running, CrashLoopBackOff, Completed
//	Running           Running                                     Starting, CrashLoopBackOff, Completed
//	CrashLoopBackOff  (Init:)CrashLoopBackOff                     Initializing, Starting, Running
//	Completed         Completed, Error, Init:Error                -
//	Terminating       Terminating                                 Terminated
//
// Every state but Terminated may go to Terminating (the pod was deleted,
// or its deadline passed).
//
// Usage:
//
//	w := podworker.New(deps, pod)
//	go w.Run(ctx)
//	w.InstanceChanged(inst)   // an instances.Instance from the replica's watch
//	w.InstancesLost(reason)   // its executor is gone
//	w.Terminate(30 * time.Second)
//	<-w.Done()
package podworker
