package executors

import (
	"testing"

	"github.com/wasmlet/wasmlet/services/executor/instances"
)

func TestChoose(t *testing.T) {
	ok := func(id string, used, capacity int) candidate {
		return candidate{id: id, ok: true, used: used, capacity: capacity}
	}
	for _, tc := range []struct {
		name string
		cs   []candidate
		want int
	}{
		{"fewest relative to capacity", []candidate{ok("a", 5, 10), ok("b", 30, 100)}, 1},
		{"empty beats busy", []candidate{ok("a", 1, 10), ok("b", 0, 10)}, 1},
		{"tie: most free", []candidate{ok("a", 1, 10), ok("b", 10, 100)}, 1},
		{"tie: by id", []candidate{ok("b", 2, 10), ok("a", 2, 10)}, 1},
		{"unhealthy skipped", []candidate{{id: "a", used: 0, capacity: 10}, ok("b", 9, 10)}, 1},
		{"full skipped", []candidate{ok("a", 10, 10), ok("b", 99, 100)}, 1},
		{"unknown capacity counts as room", []candidate{ok("a", 3, 0), ok("b", 1, 10)}, 0},
		{"none: an announced replica is not used", []candidate{{id: "a"}, ok("b", 10, 10)}, -1},
		{"none: a static replica is kept", []candidate{{id: "a"}, {id: "wasmtime", static: true}}, 1},
		{"no replica", nil, -1},
	} {
		if got := choose(tc.cs); got != tc.want {
			t.Errorf("%s: choose = %d, want %d", tc.name, got, tc.want)
		}
	}
}

// TestPlaceSpreads places pods one after another on two equal replicas:
// the count of what was placed alternates them before any report comes
// back from the executors.
func TestPlaceSpreads(t *testing.T) {
	p := &Pool{execs: map[string]*Executor{}}
	for _, id := range []string{"a", "b"} {
		p.execs[id] = &Executor{ID: id, Flavour: "wasmtime", healthy: true, gone: make(chan struct{})}
	}
	p.execs["c"] = &Executor{ID: "c", Flavour: "wazero", healthy: true, gone: make(chan struct{})}
	count := map[string]int{}
	for range 10 {
		count[p.place("wasmtime", 1).ID]++
	}
	if count["a"] != 5 || count["b"] != 5 {
		t.Errorf("placed %v, want 5 on a and 5 on b", count)
	}
	if e := p.place("none", 1); e != nil {
		t.Errorf("placed a flavour with no replica on %s", e.ID)
	}
}

// A pod with ports goes to a flavour whose executors can hand modules
// listening sockets when its own cannot.
func TestServingFlavour(t *testing.T) {
	p := &Pool{execs: map[string]*Executor{}}
	add := func(id, flavour string, info *instances.Info) {
		p.execs[id] = &Executor{ID: id, Flavour: flavour, healthy: true, gone: make(chan struct{}), info: info}
	}
	add("a", "wasmtime", &instances.Info{Engine: "wasmtime"})
	add("b", "wazero", &instances.Info{Engine: "wazero", Listeners: true})
	add("c", "pending", nil)
	for _, tc := range []struct {
		flavour, want string
		ok            bool
	}{
		{"wasmtime", "wazero", true},
		{"wazero", "wazero", true},
		{"pending", "pending", true}, // not reported yet: as asked
	} {
		if got, ok := p.ServingFlavour(tc.flavour); got != tc.want || ok != tc.ok {
			t.Errorf("ServingFlavour(%s) = %s, %v; want %s, %v", tc.flavour, got, ok, tc.want, tc.ok)
		}
	}
	delete(p.execs, "b")
	if got, ok := p.ServingFlavour("wasmtime"); got != "wasmtime" || ok {
		t.Errorf("no flavour serves: ServingFlavour = %s, %v; want wasmtime, false", got, ok)
	}
}
