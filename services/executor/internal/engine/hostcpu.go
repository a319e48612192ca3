package engine

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
)

// x86Features are the /proc/cpuinfo flags that decide which instructions a
// compiler may emit on amd64: those Cranelift's host detection (and
// wazero's) looks at. Other flags (hypervisor, tsc_*, ...) differ between
// hosts that run the same code and would only split the shared cache.
var x86Features = []string{
	"pni", "ssse3", "cx16", "sse4_1", "sse4_2", "popcnt", "avx", "avx2", "fma",
	"bmi1", "bmi2", "abm", "lzcnt", "avx512f", "avx512dq", "avx512vl",
	"avx512vbmi", "avx512_bitalg", "avx512bw", "avx512cd", "f16c", "movbe",
}

// HostCPUFeatures returns the host CPU's instruction-set features from
// /proc/cpuinfo, sorted: on amd64 the flags in x86Features it has, on
// other architectures every feature it lists (the "Features" line of
// arm64). An error when they cannot be read: then an engine must not
// share artifacts, since it cannot say what CPU they need.
func HostCPUFeatures() ([]string, error) {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return nil, fmt.Errorf("host CPU features: %w", err)
	}
	defer f.Close()
	return parseCPUInfo(f, runtime.GOARCH)
}

// parseCPUInfo reads the first processor's feature line of a cpuinfo.
func parseCPUInfo(r io.Reader, goarch string) ([]string, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		name = strings.TrimSpace(name)
		if name != "flags" && name != "Features" {
			continue
		}
		have := strings.Fields(value)
		if goarch == "amd64" {
			var out []string
			for _, f := range x86Features {
				if slices.Contains(have, f) {
					out = append(out, f)
				}
			}
			have = out
		}
		slices.Sort(have)
		return slices.Compact(have), nil
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("host CPU features: %w", err)
	}
	return nil, errors.New("host CPU features: /proc/cpuinfo has no flags or Features line")
}

// EngineKey names what makes a precompiled artifact loadable: the engine,
// its version, the settings it compiles with (config), GOARCH and the CPU
// features (a digest of the sorted list, to keep the key short). Artifacts
// are kept, locally and in an ArtifactStore, under it.
func EngineKey(name, version, config string, features []string) string {
	sum := sha256.Sum256([]byte(strings.Join(features, ",")))
	return fmt.Sprintf("%s-%s-%s-%s-cpu%s", name, version, config, runtime.GOARCH, hex.EncodeToString(sum[:6]))
}
