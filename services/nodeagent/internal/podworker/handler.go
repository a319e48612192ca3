package podworker

import (
	"fmt"

	v1 "k8s.io/api/core/v1"

	"github.com/wasmlet/wasmlet/services/executor/instances"
)

// Handler-mode annotations. A pod opts its containers into handler mode,
// where the executor serves HTTP on a container's ports itself and runs
// the module once per request, WAGI style (instances.HandlerWAGI), with
//
//	wasmlet.io/handler: wagi
//
// for every container that declares ports, and
//
//	wasmlet.io/handler.<container>: wagi   (or "server": the default)
//
// for one container, which takes precedence.
const (
	AnnotationHandler          = "wasmlet.io/handler"
	annotationHandlerContainer = AnnotationHandler + "."
	handlerServer              = "server"
)

// handlerOf is container c's handler mode from the pod's annotations:
// none for a server (the module serves its sockets itself). A mode asked
// of a container without ports, or one this node does not know, is the
// pod's configuration error.
func handlerOf(pod *v1.Pod, c *v1.Container) (instances.HandlerMode, error) {
	key := annotationHandlerContainer + c.Name
	v, ok := pod.Annotations[key]
	if !ok {
		key = AnnotationHandler
		if v, ok = pod.Annotations[key]; !ok || len(c.Ports) == 0 {
			return "", nil // pod-wide: only the containers that serve
		}
	}
	switch mode := instances.HandlerMode(v); mode {
	case "", handlerServer:
		return "", nil
	case instances.HandlerWAGI:
		if len(c.Ports) == 0 {
			return "", fmt.Errorf("annotation %s: %s: container %q declares no containerPort to serve HTTP on", key, v, c.Name)
		}
		return mode, nil
	default:
		return "", fmt.Errorf("annotation %s: %q: want %q (a module run once per HTTP request) or %q (the module serves its ports itself)", key, v, instances.HandlerWAGI, handlerServer)
	}
}

// HandlesRequests reports whether every container of the pod that declares
// ports is in a handler mode: then the executor serves its ports, and the
// module needs no sockets of its own.
func HandlesRequests(pod *v1.Pod) bool {
	served := false
	for _, cs := range [][]v1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for i := range cs {
			if len(cs[i].Ports) == 0 {
				continue
			}
			if mode, err := handlerOf(pod, &cs[i]); err != nil || mode == "" {
				return false
			}
			served = true
		}
	}
	return served
}
