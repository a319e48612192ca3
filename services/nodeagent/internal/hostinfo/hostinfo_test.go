package hostinfo

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestReadProc(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "stat"), []byte("cpu  100 5 50 9000 30 2 3 10 0 0\ncpu0 50 2 25 4500 15 1 1 5 0 0\nbtime 1700000000\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "meminfo"), []byte("MemTotal:       1000 kB\nMemFree:         200 kB\nMemAvailable:    600 kB\n"), 0o644)
	cpu, boot, err := ProcStat(filepath.Join(dir, "stat"))
	// user+nice+system+irq+softirq+steal = 170 ticks of 10 ms.
	if err != nil || cpu != 1700*uint64(time.Millisecond) || boot.Unix() != 1700000000 {
		t.Fatalf("ProcStat = %d, %v, %v", cpu, boot, err)
	}
	mi, err := Meminfo(filepath.Join(dir, "meminfo"))
	if err != nil || mi["MemTotal"] != 1000*1024 || mi["MemAvailable"] != 600*1024 {
		t.Fatalf("Meminfo = %v, %v", mi, err)
	}
	if _, _, err := ProcStat(filepath.Join(dir, "meminfo")); err == nil {
		t.Fatal("a file without a cpu line was read as /proc/stat")
	}
	// The real files parse.
	if cpu, _, err := ProcStat("/proc/stat"); err != nil || cpu == 0 {
		t.Fatalf("/proc/stat: %d %v", cpu, err)
	}
	if _, err := Meminfo("/proc/meminfo"); err != nil {
		t.Fatal(err)
	}
}
