//go:build !linux

package podnet

import "errors"

var errUnsupported = errors.New("network namespaces exist only on Linux")

func newNetNS(string) error    { return errUnsupported }
func removeNetNS(string) error { return errUnsupported }
func isNetNS(string) bool      { return false }

// InNamespace runs fn in the network namespace at path (Linux only).
func InNamespace(string, func() error) error { return errUnsupported }
