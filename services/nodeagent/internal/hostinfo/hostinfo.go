// Package hostinfo reads the host's figures from /proc (a directory given
// by the caller, so that tests can hand it their own files): CPU time and
// boot time from stat, memory from meminfo. It only reads.
package hostinfo

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// userHZ is the unit of /proc/stat's CPU times (USER_HZ, 100 on Linux).
const userHZ = 100

// ProcStat returns the CPU time all CPUs spent busy (not idle, not
// waiting for I/O), in ns, and the boot time.
func ProcStat(path string) (uint64, time.Time, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, time.Time{}, err
	}
	var busy uint64
	var boot time.Time
	found := false
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 8 && f[0] == "cpu":
			// user nice system idle iowait irq softirq steal ...
			for i, v := range f[1:min(len(f), 9)] {
				if i == 3 || i == 4 {
					continue
				}
				n, err := strconv.ParseUint(v, 10, 64)
				if err != nil {
					return 0, time.Time{}, fmt.Errorf("%s: cpu field %d: %w", path, i+1, err)
				}
				busy += n
			}
			found = true
		case len(f) == 2 && f[0] == "btime":
			if sec, err := strconv.ParseInt(f[1], 10, 64); err == nil {
				boot = time.Unix(sec, 0)
			}
		}
	}
	if !found {
		return 0, time.Time{}, fmt.Errorf("%s: no cpu line", path)
	}
	return busy * uint64(time.Second/userHZ), boot, nil
}

// Meminfo returns /proc/meminfo's figures in bytes.
func Meminfo(path string) (map[string]uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]uint64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fs := strings.Fields(v)
		if len(fs) == 0 {
			continue
		}
		n, err := strconv.ParseUint(fs[0], 10, 64)
		if err != nil {
			continue
		}
		if len(fs) > 1 && fs[1] == "kB" {
			n *= 1024
		}
		out[k] = n
	}
	if out["MemTotal"] == 0 {
		return nil, fmt.Errorf("%s: no MemTotal", path)
	}
	return out, sc.Err()
}
