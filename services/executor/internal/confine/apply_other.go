//go:build !linux

package confine

import (
	"errors"
	"os"
)

// Apply confines nothing off Linux: no_new_privs, seccomp and Landlock
// are Linux's. Asking for any of them is an error.
func Apply(cfg Config) (Status, error) {
	if cfg.Seccomp || cfg.Landlock || cfg.IsolateNetwork || cfg.User != "" || cfg.Group != "" {
		return Status{}, errors.New("confine: process confinement needs Linux; give --confine=false")
	}
	return Status{UID: os.Getuid(), GID: os.Getgid(), LandlockWhy: "not Linux"}, nil
}
