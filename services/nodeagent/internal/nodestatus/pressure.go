package nodestatus

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	v1 "k8s.io/api/core/v1"

	"github.com/wasmlet/wasmlet/services/nodeagent/internal/hostinfo"
)

// Readings are what the pressure conditions are computed from.
type Readings struct {
	MemAvailable  int64 // bytes (MemAvailable in /proc/meminfo)
	DiskAvailable int64 // bytes free to unprivileged users on the state dir's filesystem
	DiskTotal     int64
	PIDs          int64 // processes (and threads) on the host
	PIDMax        int64 // /proc/sys/kernel/pid_max
}

// The kubelet's default hard eviction thresholds: memory.available<100Mi,
// nodefs.available<10%; for PIDs (no kubelet default) fewer than 10% left.
const (
	memoryPressureBelow = 100 << 20
	diskPressureBelow   = 0.10
	pidPressureBelow    = 0.10
)

// pressureConditions turns readings into the three pressure conditions:
// status, reason and message for each.
func pressureConditions(r Readings) map[v1.NodeConditionType][3]string {
	out := map[v1.NodeConditionType][3]string{}
	if r.MemAvailable > 0 && r.MemAvailable < memoryPressureBelow {
		out[v1.NodeMemoryPressure] = [3]string{string(v1.ConditionTrue), "KubeletHasInsufficientMemory", fmt.Sprintf("only %d MiB of memory available", r.MemAvailable>>20)}
	} else {
		out[v1.NodeMemoryPressure] = [3]string{string(v1.ConditionFalse), "KubeletHasSufficientMemory", "kubelet has sufficient memory available"}
	}
	if r.DiskTotal > 0 && float64(r.DiskAvailable) < diskPressureBelow*float64(r.DiskTotal) {
		out[v1.NodeDiskPressure] = [3]string{string(v1.ConditionTrue), "KubeletHasDiskPressure", fmt.Sprintf("only %d MiB free on the state directory's filesystem", r.DiskAvailable>>20)}
	} else {
		out[v1.NodeDiskPressure] = [3]string{string(v1.ConditionFalse), "KubeletHasNoDiskPressure", "kubelet has no disk pressure"}
	}
	if r.PIDMax > 0 && float64(r.PIDMax-r.PIDs) < pidPressureBelow*float64(r.PIDMax) {
		out[v1.NodePIDPressure] = [3]string{string(v1.ConditionTrue), "KubeletHasInsufficientPID", fmt.Sprintf("%d of %d process IDs in use", r.PIDs, r.PIDMax)}
	} else {
		out[v1.NodePIDPressure] = [3]string{string(v1.ConditionFalse), "KubeletHasSufficientPID", "kubelet has sufficient PID available"}
	}
	return out
}

// read takes the host's readings; what cannot be read stays zero (no pressure).
func read(stateDir string) Readings {
	var r Readings
	if mi, err := hostinfo.Meminfo("/proc/meminfo"); err == nil {
		r.MemAvailable = int64(mi["MemAvailable"])
	}
	var st syscall.Statfs_t
	if stateDir != "" && syscall.Statfs(stateDir, &st) == nil {
		r.DiskAvailable = int64(st.Bavail) * st.Bsize
		r.DiskTotal = int64(st.Blocks) * st.Bsize
	}
	if b, err := os.ReadFile("/proc/sys/kernel/pid_max"); err == nil {
		r.PIDMax, _ = strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		// The fourth field is "running/total" scheduling entities.
		if f := strings.Fields(string(b)); len(f) > 3 {
			if _, total, ok := strings.Cut(f[3], "/"); ok {
				r.PIDs, _ = strconv.ParseInt(total, 10, 64)
			}
		}
	}
	return r
}
