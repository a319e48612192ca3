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
	for _, e := range errorCodes.Table {
		orig := fmt.Errorf("pull x: %w: detail", e.Err)
		st := ToStatus(orig)
		if status.Code(st) != e.Code {
			t.Errorf("%v: code %v, want %v", e.Err, status.Code(st), e.Code)
		}
		back := FromStatus(st)
		if !errors.Is(back, e.Err) || back.Error() != orig.Error() {
			t.Errorf("%v: came back as %q (%v)", e.Err, back, back)
		}
		if status.Code(back) != e.Code {
			t.Errorf("%v: status of the received error is %v", e.Err, status.Code(back))
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
