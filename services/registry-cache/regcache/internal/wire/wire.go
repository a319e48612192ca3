// Package wire is the one table that turns regcache errors into gRPC status
// codes and back, and converts pull policies, for the server and the proxy.
// It owns no state and touches nothing but values.
//
//	return nil, wire.ToStatus(err)                   // in the server
//	return regcache.Resolved{}, wire.FromStatus(err) // in the proxy
package wire

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	registryv1 "github.com/wasmlet/wasmlet/gen/wasmlet/registry/v1"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
)

var table = []struct {
	err  error
	code codes.Code
}{
	{regcache.ErrInvalidReference, codes.InvalidArgument},
	{regcache.ErrNotFound, codes.NotFound},
	{regcache.ErrUnauthorized, codes.Unauthenticated},
	{regcache.ErrNotWasm, codes.FailedPrecondition},
	{regcache.ErrDigestMismatch, codes.DataLoss},
	{regcache.ErrTooLarge, codes.ResourceExhausted},
	{regcache.ErrUnavailable, codes.Unavailable},
	{context.Canceled, codes.Canceled},
	{context.DeadlineExceeded, codes.DeadlineExceeded},
}

// ToStatus turns err into a gRPC status error, keeping its message.
func ToStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	for _, e := range table {
		if errors.Is(err, e.err) {
			return status.Error(e.code, err.Error())
		}
	}
	return status.Error(codes.Unknown, err.Error())
}

// Error is an error received over the wire: the server's message, and the
// sentinel its code stands for.
type Error struct {
	Msg      string
	Sentinel error
	Code     codes.Code
}

func (e *Error) Error() string { return e.Msg }
func (e *Error) Unwrap() error { return e.Sentinel }

// GRPCStatus lets status.FromError see the original status.
func (e *Error) GRPCStatus() *status.Status { return status.New(e.Code, e.Msg) }

// FromStatus turns a gRPC error back into one that errors.Is matches
// against the regcache sentinels (and context errors).
func FromStatus(err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	for _, e := range table {
		if e.code == st.Code() {
			return &Error{Msg: st.Message(), Sentinel: e.err, Code: st.Code()}
		}
	}
	return err
}

// PolicyToProto converts a pull policy for the wire.
func PolicyToProto(p regcache.PullPolicy) registryv1.PullPolicy {
	switch p {
	case regcache.PullAlways:
		return registryv1.PullPolicy_PULL_POLICY_ALWAYS
	case regcache.PullNever:
		return registryv1.PullPolicy_PULL_POLICY_NEVER
	case regcache.PullIfNotPresent:
		return registryv1.PullPolicy_PULL_POLICY_IF_NOT_PRESENT
	}
	return registryv1.PullPolicy(-1)
}

// PolicyFromProto converts a pull policy from the wire; unspecified means
// IfNotPresent, as for a container without imagePullPolicy and a tag.
func PolicyFromProto(p registryv1.PullPolicy) (regcache.PullPolicy, bool) {
	switch p {
	case registryv1.PullPolicy_PULL_POLICY_ALWAYS:
		return regcache.PullAlways, true
	case registryv1.PullPolicy_PULL_POLICY_NEVER:
		return regcache.PullNever, true
	case registryv1.PullPolicy_PULL_POLICY_IF_NOT_PRESENT, registryv1.PullPolicy_PULL_POLICY_UNSPECIFIED:
		return regcache.PullIfNotPresent, true
	}
	return 0, false
}
