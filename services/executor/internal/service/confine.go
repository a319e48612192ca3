package service

import (
	"os"
	"path/filepath"

	"github.com/wasmlet/wasmlet/internal/grpcutil"
	"github.com/wasmlet/wasmlet/internal/profiling"
	"github.com/wasmlet/wasmlet/services/executor/instances"
	"github.com/wasmlet/wasmlet/services/executor/internal/confine"
)

// ConfineConfig is the confinement the executor needs with this config
// (see internal/confine): read-write the state directory, the mount
// roots, the --landlock-rw directories, the sockets' directories (gRPC,
// listener hand-over), the CPU
// cgroup and the profile directory; read-only the TLS files' directories
// and the artifact key (or read-write its directory when it is to be
// created); connect to the registry cache's socket.
func (c Config) ConfineConfig() confine.Config {
	cc := confine.Config{
		ReadWrite:      append(append([]string{c.StateDir}, c.MountRoots...), c.LandlockRW...),
		Own:            []string{c.StateDir},
		User:           c.RunAsUser,
		Group:          c.RunAsGroup,
		IsolateNetwork: c.IsolateNetwork,
		Landlock:       c.Confine,
		Seccomp:        c.Confine,
	}
	if network, path, _ := grpcutil.Split(c.Listen); network == "unix" {
		cc.ReadWrite = append(cc.ReadWrite, filepath.Dir(path))
	}
	if c.ListenerSocket != "" {
		cc.ReadWrite = append(cc.ReadWrite, filepath.Dir(c.ListenerSocket))
	}
	if network, path, _ := grpcutil.Split(c.Registry); network == "unix" {
		cc.Connect = append(cc.Connect, filepath.Dir(path))
	}
	if c.CPUCgroup != "" {
		cc.ReadWrite = append(cc.ReadWrite, c.CPUCgroup)
	}
	if d := os.Getenv(profiling.EnvDir); d != "" {
		cc.ReadWrite = append(cc.ReadWrite, d)
	}
	if f := c.ArtifactKeyFile; f != "" {
		if _, err := os.Stat(f); err == nil {
			cc.ReadOnly = append(cc.ReadOnly, f)
		} else {
			cc.ReadWrite = append(cc.ReadWrite, filepath.Dir(f)) // it creates the key
		}
	}
	for _, f := range []string{c.TLS.CertFile, c.TLS.KeyFile, c.TLS.CAFile, c.RegistryTLS.CertFile, c.RegistryTLS.KeyFile, c.RegistryTLS.CAFile} {
		if f != "" {
			// The directory: files rotated by rename are new inodes.
			cc.ReadOnly = append(cc.ReadOnly, filepath.Dir(f))
		}
	}
	return cc
}

// confinement is what GetInfo reports of the walls confine.Apply put up.
func confinement(st confine.Status) instances.Confinement {
	return instances.Confinement{
		NoNewPrivs:            st.NoNewPrivs,
		Seccomp:               st.Seccomp,
		LandlockABI:           st.LandlockABI,
		LandlockMissingReason: st.LandlockWhy,
		UID:                   uint32(st.UID),
		GID:                   uint32(st.GID),
		NetworkIsolated:       st.NetworkIsolated,
		Description:           st.String(),
	}
}
