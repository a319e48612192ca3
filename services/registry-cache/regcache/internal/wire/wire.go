// Package wire is the one table that turns regcache errors into gRPC status
// codes and back, and converts pull policies, for the server and the proxy.
// It owns no state and touches nothing but values.
//
//	return nil, wire.ToStatus(err)                   // in the server
//	return regcache.Resolved{}, wire.FromStatus(err) // in the proxy
package wire

import (
	"context"

	"google.golang.org/grpc/codes"

	registryv1 "github.com/wasmlet/wasmlet/gen/wasmlet/registry/v1"
	"github.com/wasmlet/wasmlet/internal/grpcutil"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
)

var errorCodes = grpcutil.ErrorCodes{Other: codes.Unknown, Table: []grpcutil.ErrorCode{
	{Err: regcache.ErrInvalidReference, Code: codes.InvalidArgument},
	{Err: regcache.ErrNotFound, Code: codes.NotFound},
	{Err: regcache.ErrUnauthorized, Code: codes.Unauthenticated},
	{Err: regcache.ErrNotWasm, Code: codes.FailedPrecondition},
	{Err: regcache.ErrDigestMismatch, Code: codes.DataLoss},
	{Err: regcache.ErrTooLarge, Code: codes.ResourceExhausted},
	{Err: regcache.ErrUnavailable, Code: codes.Unavailable},
	{Err: context.Canceled, Code: codes.Canceled},
	{Err: context.DeadlineExceeded, Code: codes.DeadlineExceeded},
}}

// ToStatus turns err into a gRPC status error, keeping its message.
func ToStatus(err error) error { return errorCodes.ToStatus(err) }

// FromStatus turns a gRPC error back into one that errors.Is matches
// against the regcache sentinels (and context errors).
func FromStatus(err error) error { return errorCodes.FromStatus(err) }

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
