// Package prober runs one container instance's readiness, liveness and startup
// probes with the kubelet's semantics and reports what they found.
//
// It owns, per container instance: the probes' schedule (initialDelaySeconds,
// periodSeconds, timeoutSeconds), their consecutive success and failure counts
// against successThreshold and failureThreshold, the startup probe's gate on the
// other two, and the httpGet, tcpSocket and grpc handlers that reach the pod's
// IP. exec probes are refused at construction with ErrExecUnsupported: a Wasm
// module has no processes to exec into.
//
// It must not touch pod status, module instances or the API server: it keeps a
// Status that the pod worker reads (level-based, woken by Changed), and hands
// the Unhealthy and ProbeWarning events it would record to a callback. Killing
// and restarting the instance after a failed liveness or startup probe is the
// pod worker's decision, under the pod's restart policy.
//
// A Worker serves one container instance: after Status().Restart it probes no
// more, and the next instance gets a new Worker, so a restarted container starts
// unready with fresh counts, as the kubelet does for a new container ID. All
// probes of a container run one after another on one goroutine driven by a
// timer; a probe made late by another one's timeout runs as soon as that one
// is done, and runs it missed are dropped, not made up.
//
// Usage:
//
//	w, err := prober.New(prober.Config{
//		Container: &pod.Spec.Containers[i], // probes and named ports
//		PodIP:     podIP,
//		StartedAt: startedAt, // when this instance began running
//		Record:    func(e prober.Event) { recorder.Event(pod, e.Type, e.Reason, e.Message) },
//	})
//	if errors.Is(err, prober.ErrExecUnsupported) { /* refuse the pod at admission */ }
//	w.Start()
//	defer w.Stop() // waits for the probing goroutine
//	for range w.Changed() {
//		s := w.Status() // s.Ready → Ready condition; s.Restart → kill with s.Message
//	}
//	w.Terminating() // when the pod is deleted: liveness and startup stop, readiness goes on
package prober
