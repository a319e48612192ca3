package nodestatus

import (
	"testing"

	v1 "k8s.io/api/core/v1"
)

func TestPressureConditions(t *testing.T) {
	calm := Readings{MemAvailable: 8 << 30, DiskAvailable: 50 << 30, DiskTotal: 100 << 30, PIDs: 300, PIDMax: 4194304}
	for typ, c := range pressureConditions(calm) {
		if c[0] != string(v1.ConditionFalse) {
			t.Errorf("%s = %v on a calm host", typ, c)
		}
	}
	tight := Readings{MemAvailable: 50 << 20, DiskAvailable: 5 << 30, DiskTotal: 100 << 30, PIDs: 32000, PIDMax: 32768}
	got := pressureConditions(tight)
	for _, typ := range []v1.NodeConditionType{v1.NodeMemoryPressure, v1.NodeDiskPressure, v1.NodePIDPressure} {
		if got[typ][0] != string(v1.ConditionTrue) || got[typ][2] == "" {
			t.Errorf("%s = %v under pressure", typ, got[typ])
		}
	}
	if unknown := pressureConditions(Readings{}); unknown[v1.NodeMemoryPressure][0] != string(v1.ConditionFalse) {
		t.Errorf("no readings gave %v", unknown)
	}
}

func TestReadGivesHostFigures(t *testing.T) {
	r := read(t.TempDir())
	if r.MemAvailable <= 0 || r.DiskTotal <= 0 || r.PIDMax <= 0 || r.PIDs <= 0 {
		t.Errorf("readings = %+v", r)
	}
}
