package podnet

import "errors"

// Errors a caller may tell apart with errors.Is; the wrapping error says on
// what and what to do.
var (
	// ErrNoConfig: no CNI network config in the conf dir (or none of the
	// configured name).
	ErrNoConfig = errors.New("no CNI network config")
	// ErrPluginNotFound: a plugin the network config names is in none of the
	// plugin directories.
	ErrPluginNotFound = errors.New("CNI plugin not found")
	// ErrAddressesExhausted: the network's IPAM has no address left to give.
	ErrAddressesExhausted = errors.New("no pod IP address left")
	// ErrNotPermitted: the process may not create or enter network namespaces.
	ErrNotPermitted = errors.New("not permitted to manage network namespaces (needs CAP_SYS_ADMIN and CAP_NET_ADMIN: run the node agent as root)")
	// ErrInvalidPod: a pod identity that cannot name a namespace or a CNI
	// container (empty, or a UID with characters other than [A-Za-z0-9_.-]).
	ErrInvalidPod = errors.New("invalid pod identity")
)
