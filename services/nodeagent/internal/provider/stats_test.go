package provider

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
	cpu, boot, err := readProcStat(filepath.Join(dir, "stat"))
	// user+nice+system+irq+softirq+steal = 170 ticks of 10 ms.
	if err != nil || cpu != 1700*uint64(time.Millisecond) || boot.Unix() != 1700000000 {
		t.Fatalf("readProcStat = %d, %v, %v", cpu, boot, err)
	}
	mi, err := readMeminfo(filepath.Join(dir, "meminfo"))
	if err != nil || mi["MemTotal"] != 1000*1024 || mi["MemAvailable"] != 600*1024 {
		t.Fatalf("readMeminfo = %v, %v", mi, err)
	}
	if _, _, err := readProcStat(filepath.Join(dir, "meminfo")); err == nil {
		t.Fatal("a file without a cpu line was read as /proc/stat")
	}
	// The real files parse.
	if cpu, _, err := readProcStat("/proc/stat"); err != nil || cpu == 0 {
		t.Fatalf("/proc/stat: %d %v", cpu, err)
	}
	if _, err := readMeminfo("/proc/meminfo"); err != nil {
		t.Fatal(err)
	}
}

func TestRate(t *testing.T) {
	p := &Provider{cpuPrev: map[string]cpuReading{}}
	t0 := time.Unix(1000, 0)
	if r := p.rate("i/a", 1e9, t0); r != nil {
		t.Fatalf("first reading gave a rate %d", *r)
	}
	// Half a core: 1 s of CPU over 2 s.
	if r := p.rate("i/a", 2e9, t0.Add(2*time.Second)); r == nil || *r != 5e8 {
		t.Fatalf("rate = %v, want 5e8 nanocores", r)
	}
	// A counter that went back (a new instance under the key) gives none.
	if r := p.rate("i/a", 1e6, t0.Add(3*time.Second)); r != nil {
		t.Fatalf("rate after a reset = %d", *r)
	}
}
