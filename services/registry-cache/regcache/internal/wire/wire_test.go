package wire

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
)

func TestRoundTrip(t *testing.T) {
	for _, e := range table {
		orig := fmt.Errorf("pull x: %w: detail", e.err)
		st := ToStatus(orig)
		if status.Code(st) != e.code {
			t.Errorf("%v: code %v, want %v", e.err, status.Code(st), e.code)
		}
		back := FromStatus(st)
		if !errors.Is(back, e.err) || back.Error() != orig.Error() {
			t.Errorf("%v: came back as %q (%v)", e.err, back, back)
		}
		if status.Code(back) != e.code {
			t.Errorf("%v: status of the received error is %v", e.err, status.Code(back))
		}
	}
	if c := status.Code(ToStatus(errors.New("other"))); c != codes.Unknown {
		t.Errorf("unmapped error: %v, want Unknown", c)
	}
	if errors.Is(FromStatus(status.Error(codes.Internal, "x")), regcache.ErrNotFound) || errors.Is(FromStatus(status.Error(codes.Internal, "x")), context.Canceled) {
		t.Error("Internal mapped to a sentinel")
	}
}

func TestPolicy(t *testing.T) {
	for _, p := range []regcache.PullPolicy{regcache.PullAlways, regcache.PullIfNotPresent, regcache.PullNever} {
		got, ok := PolicyFromProto(PolicyToProto(p))
		if !ok || got != p {
			t.Errorf("policy %d came back as %d (%v)", p, got, ok)
		}
	}
	if _, ok := PolicyFromProto(PolicyToProto(regcache.PullPolicy(42))); ok {
		t.Error("unknown policy accepted")
	}
}
