package podnet

import corev1 "k8s.io/api/core/v1"

// PodOf is the identity a pod is known by to the network plugins.
func PodOf(pod *corev1.Pod) Pod {
	return Pod{Namespace: pod.Namespace, Name: pod.Name, UID: string(pod.UID)}
}

// HostPorts are the ports of a pod's containers that it publishes on the
// node (hostPort set), as the kubelet hands them to its runtime for the
// portMappings capability. A hostPort with no containerPort is invalid in
// the API and not seen here.
func HostPorts(spec *corev1.PodSpec) []PortMapping {
	var out []PortMapping
	for _, c := range spec.Containers {
		for _, p := range c.Ports {
			if p.HostPort <= 0 {
				continue
			}
			proto := string(p.Protocol)
			if proto == "" {
				proto = string(corev1.ProtocolTCP)
			}
			out = append(out, PortMapping{HostPort: p.HostPort, ContainerPort: p.ContainerPort, Protocol: proto, HostIP: p.HostIP})
		}
	}
	return out
}
