package bench

import (
	"os/exec"
	"strconv"
	"strings"
)

// composeImages are the compose stack's images of wasmlet's own services
// (deploy/compose, built FROM scratch by make compose-images).
var composeImages = []string{"nodeagent", "executor", "executor-wazero", "executor-arm64", "registry-cache"}

// imageSizes reports the compose stack's images as the Docker engine has
// them (tag WASMLET_COMPOSE_TAG's default, dev), or nothing when no engine
// answers or they were not built: the footprint section does not build
// them.
func imageSizes() []Figure {
	var figs []Figure
	for _, img := range composeImages {
		ref := "wasmlet-compose/" + img + ":dev"
		out, err := exec.Command("docker", "image", "inspect", "--format", "{{.Size}}", ref).Output()
		if err != nil {
			continue
		}
		size, err := strconv.ParseFloat(strings.TrimSpace(string(out)), 64)
		if err != nil {
			continue
		}
		figs = append(figs, Values("compose image size, "+img, "docker image inspect "+ref+" (make compose-images; FROM scratch: the binaries and what they need)", "MB", []float64{size / 1e6}))
	}
	return figs
}
