package podnet

import (
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestPodOfAndHostPorts(t *testing.T) {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web", UID: "u-1"},
		Spec: corev1.PodSpec{Containers: []corev1.Container{
			{Name: "a", Ports: []corev1.ContainerPort{{ContainerPort: 80, HostPort: 8080}, {ContainerPort: 81}}},
			{Name: "b", Ports: []corev1.ContainerPort{{ContainerPort: 53, HostPort: 5353, Protocol: corev1.ProtocolUDP, HostIP: "127.0.0.1"}}},
		}},
	}
	if got, want := PodOf(pod), (Pod{Namespace: "ns", Name: "web", UID: "u-1"}); got != want {
		t.Errorf("PodOf: %+v, want %+v", got, want)
	}
	want := []PortMapping{
		{HostPort: 8080, ContainerPort: 80, Protocol: "TCP"},
		{HostPort: 5353, ContainerPort: 53, Protocol: "UDP", HostIP: "127.0.0.1"},
	}
	if got := HostPorts(&pod.Spec); !reflect.DeepEqual(got, want) {
		t.Errorf("HostPorts: %+v, want %+v", got, want)
	}
	if got := HostPorts(&corev1.PodSpec{}); got != nil {
		t.Errorf("HostPorts of no containers: %+v", got)
	}
}
