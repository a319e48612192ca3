package server

import (
	executorv1 "github.com/wasmlet/wasmlet/gen/wasmlet/executor/v1"
	"github.com/wasmlet/wasmlet/services/executor/internal/confine"
)

// WithConfinement tells what GetInfo reports about the process's
// confinement. Without it GetInfo reports none.
func WithConfinement(st confine.Status) Option {
	return func(s *Server) {
		s.confinement = &executorv1.Confinement{
			NoNewPrivs:            st.NoNewPrivs,
			Seccomp:               st.Seccomp,
			LandlockAbi:           int32(st.LandlockABI),
			LandlockMissingReason: st.LandlockWhy,
			Uid:                   uint32(st.UID),
			Gid:                   uint32(st.GID),
			NetworkIsolated:       st.NetworkIsolated,
			Description:           st.String(),
		}
	}
}
