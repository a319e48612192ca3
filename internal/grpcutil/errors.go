package grpcutil

import (
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrorCode pairs a domain's sentinel error with the gRPC code it travels as.
type ErrorCode struct {
	Err  error
	Code codes.Code
}

// ErrorCodes is a domain's table of sentinels and codes, read both ways:
// ToStatus at a server, FromStatus at its client (containerd's errdefs
// shape), so that callers on either side test errors.Is(err, sentinel).
type ErrorCodes struct {
	Table []ErrorCode
	// Other is the code of an error that matches no sentinel and is not
	// already a status.
	Other codes.Code
}

// ToStatus turns err into a status error with its message: the code of
// the first sentinel it wraps, else its own if it is a status, else Other.
// nil stays nil.
func (c ErrorCodes) ToStatus(err error) error {
	if err == nil {
		return nil
	}
	for _, e := range c.Table {
		if errors.Is(err, e.Err) {
			return status.Error(e.Code, err.Error())
		}
	}
	if st, ok := status.FromError(err); ok {
		return st.Err()
	}
	return status.Error(c.Other, err.Error())
}

// FromStatus turns a status error back into an error that wraps the
// sentinel its code names, with the server's message; status.Code still
// reads it. An error whose code names no sentinel is returned as it is.
func (c ErrorCodes) FromStatus(err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	for _, e := range c.Table {
		if st.Code() == e.Code {
			return &StatusError{Status: st, Sentinel: e.Err}
		}
	}
	return err
}

// StatusError is an error received over gRPC: the server's status, and
// the sentinel its code stands for.
type StatusError struct {
	Status   *status.Status
	Sentinel error
}

func (e *StatusError) Error() string              { return e.Status.Message() }
func (e *StatusError) Unwrap() error              { return e.Sentinel }
func (e *StatusError) GRPCStatus() *status.Status { return e.Status }
