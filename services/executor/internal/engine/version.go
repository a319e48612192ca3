package engine

import (
	"runtime/debug"
	"strings"
)

// ModuleVersion is the version (without "v") of the Go module at path that
// this binary was built with, or fallback when the build info does not say
// (a test binary, a stripped build).
func ModuleVersion(path, fallback string) string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path != path {
				continue
			}
			if d.Replace != nil {
				d = d.Replace
			}
			if v := strings.TrimPrefix(d.Version, "v"); v != "" && v != "(devel)" {
				return v
			}
		}
	}
	return fallback
}
