package wire

import (
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/wasmlet/wasmlet/services/executor/instances"
)

func TestStatusBothWays(t *testing.T) {
	for _, c := range errorCodes.Table {
		err := fmt.Errorf("do x: %w", c.Err)
		st := ToStatus(err)
		if status.Code(st) != c.Code || status.Convert(st).Message() != err.Error() {
			t.Errorf("ToStatus(%v) = %v, want code %v", err, st, c.Code)
		}
		back := FromStatus(st)
		if !errors.Is(back, c.Err) || back.Error() != err.Error() || status.Code(back) != c.Code {
			t.Errorf("FromStatus(%v) = %v, does not wrap %v", st, back, c.Err)
		}
		// Through both again: a proxy's error served on.
		if status.Code(ToStatus(back)) != c.Code {
			t.Errorf("ToStatus(FromStatus(%v)) = %v", st, ToStatus(back))
		}
	}
	if ToStatus(nil) != nil || FromStatus(nil) != nil {
		t.Error("nil is not nil")
	}
	if got := ToStatus(errors.New("boom")); status.Code(got) != codes.Internal {
		t.Errorf("unknown error: %v", got)
	}
	if got := ToStatus(status.Error(codes.Unimplemented, "no")); status.Code(got) != codes.Unimplemented {
		t.Errorf("a status error: %v", got)
	}
	internal := status.Error(codes.Internal, "bug")
	if got := FromStatus(internal); got != internal {
		t.Errorf("FromStatus(Internal) = %v", got)
	}
	if got := FromStatus(io.EOF); got != io.EOF {
		t.Errorf("FromStatus(EOF) = %v", got)
	}
}

func TestRoundTrip(t *testing.T) {
	now := time.Unix(1700000000, 123).UTC()
	in := instances.Instance{
		ID: "i1",
		Spec: instances.Spec{
			Module:           instances.Module{Digest: "sha256:ab", Reference: "r/m:v1"},
			Args:             []string{"m", "x"},
			Env:              []instances.EnvVar{{Name: "A", Value: "1"}},
			Preopens:         []instances.Preopen{{HostPath: "/h", GuestPath: "/g", ReadOnly: true}},
			MemoryLimitBytes: 1 << 20, CPULimitMillis: 250, LogSubject: "s", Labels: map[string]string{"k": "v"},
			Listeners: []instances.Listener{{Name: "http", Port: 8080, Protocol: instances.ProtocolTCP}, {Port: 53, Protocol: instances.ProtocolUDP},
				{Name: "default", Port: 9090}, {Name: "sctp", Port: 1, Protocol: "SCTP"}},
			NetworkNamespace: "/var/run/netns/p", ListenAddress: "10.0.0.5", HandedListeners: true,
			Handler: instances.HandlerWAGI,
		},
		State: instances.StateExited, ExitCode: 3, Reason: "Error", Message: "m",
		CreatedAt: now, StartedAt: now.Add(time.Second), FinishedAt: now.Add(2 * time.Second), Sequence: 7,
	}
	want := in
	// A protocol the wire does not name arrives as one the executor refuses, never as TCP.
	want.Spec.Listeners = slices.Clone(in.Spec.Listeners)
	want.Spec.Listeners[3].Protocol = "1000"
	if got := InstanceFromProto(InstanceToProto(in)); !reflect.DeepEqual(got, want) {
		t.Errorf("instance:\n got %+v\nwant %+v", got, want)
	}
	// A handler mode the wire does not name arrives as one the executor refuses, never as none.
	odd := instances.Spec{Handler: "fastcgi"}
	if got := SpecFromProto(SpecToProto(odd)).Handler; got != "1000" {
		t.Errorf("unknown handler mode arrives as %q, want one refused", got)
	}
	for s := instances.StateUnspecified; s <= instances.StateFailed; s++ {
		if got := StateFromProto(StateToProto(s)); got != s {
			t.Errorf("state %v -> %v", s, got)
		}
	}
	st := instances.Stats{ID: "i1", State: instances.StateRunning, Labels: map[string]string{"k": "v"}, Time: now, MemoryBytes: 65536, CPU: time.Millisecond, CPUMeasured: true}
	if got := StatsFromProto(StatsToProto(st)); !reflect.DeepEqual(got, st) {
		t.Errorf("stats: %+v", got)
	}
	info := instances.Info{ExecutorID: "e", Engine: "wazero", Version: "1", OS: "linux", Arch: "amd64", MaxInstances: 9, Instances: 2,
		CPULimitsEnforced: true, CPULimitsWords: "how", Listeners: true, ListenerHandoff: true,
		HandlerModes: []instances.HandlerMode{instances.HandlerWAGI},
		Confinement:  instances.Confinement{NoNewPrivs: true, Seccomp: true, LandlockABI: 3, UID: 1, GID: 2, NetworkIsolated: true, Description: "d"}}
	if got := InfoFromProto(InfoToProto(info)); !reflect.DeepEqual(got, info) {
		t.Errorf("info: %+v", got)
	}
	if p := InfoToProto(instances.Info{}); p.GetConfinement() != nil || p.GetCpuLimits() != 1 {
		t.Errorf("info with no confinement nor CPU limits: %v", p)
	}
	if got := InstanceFromProto(nil); !reflect.DeepEqual(got, instances.Instance{Spec: instances.Spec{}}) {
		t.Errorf("nil instance: %+v", got)
	}
}
