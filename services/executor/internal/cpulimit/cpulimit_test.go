package cpulimit

import (
	"testing"
	"time"
)

func TestSlice(t *testing.T) {
	for _, tc := range []struct {
		millis        int64
		period, quota time.Duration
	}{
		{1000, 10 * time.Millisecond, 10 * time.Millisecond},
		{250, 10 * time.Millisecond, 2500 * time.Microsecond},
		{100, 10 * time.Millisecond, time.Millisecond},
		{50, 20 * time.Millisecond, time.Millisecond},
		{10, 100 * time.Millisecond, time.Millisecond},
		{2000, 10 * time.Millisecond, 20 * time.Millisecond},
	} {
		if p, q := Slice(tc.millis); p != tc.period || q != tc.quota {
			t.Errorf("Slice(%d) = %v, %v; want %v, %v", tc.millis, p, q, tc.period, tc.quota)
		}
	}
}

func TestNewRefusesANonCgroup(t *testing.T) {
	if _, err := New(t.TempDir()); err == nil {
		t.Fatal("a plain directory was accepted as a cgroup")
	}
}
