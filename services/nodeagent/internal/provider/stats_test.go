package provider

import (
	"testing"
	"time"
)

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
