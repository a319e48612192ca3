package engine

import (
	"slices"
	"strings"
	"testing"
)

const amd64Info = `processor	: 0
vendor_id	: AuthenticAMD
flags		: fpu vme sse sse2 ht pni ssse3 fma cx16 sse4_1 sse4_2 popcnt avx hypervisor bmi1 avx2 bmi2 avx512f
bugs		: sysret_ss_attrs

processor	: 1
flags		: fpu vme sse sse2 ht pni ssse3 fma cx16 sse4_1 sse4_2 popcnt avx hypervisor bmi1 avx2 bmi2 avx512f
`

const arm64Info = `processor	: 0
BogoMIPS	: 50.00
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid
CPU implementer	: 0x41
`

func TestParseCPUInfo(t *testing.T) {
	got, err := parseCPUInfo(strings.NewReader(amd64Info), "amd64")
	want := []string{"avx", "avx2", "avx512f", "bmi1", "bmi2", "cx16", "fma", "pni", "popcnt", "sse4_1", "sse4_2", "ssse3"}
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("amd64: %v, %v; want %v (only the flags that decide code generation)", got, err, want)
	}
	got, err = parseCPUInfo(strings.NewReader(arm64Info), "arm64")
	if err != nil || len(got) != 12 || !slices.Contains(got, "atomics") || !slices.IsSorted(got) {
		t.Errorf("arm64: %v, %v; want the 12 features, sorted", got, err)
	}
	if _, err := parseCPUInfo(strings.NewReader("processor	: 0\n"), "amd64"); err == nil {
		t.Error("a cpuinfo without flags gave no error")
	}
}

func TestEngineKey(t *testing.T) {
	a := EngineKey("wasmtime", "39.0.1", "epoch1", []string{"avx", "avx2"})
	if a != EngineKey("wasmtime", "39.0.1", "epoch1", []string{"avx", "avx2"}) {
		t.Error("the key is not deterministic")
	}
	for _, other := range []string{
		EngineKey("wasmtime", "39.0.1", "epoch1", []string{"avx"}),
		EngineKey("wasmtime", "39.0.2", "epoch1", []string{"avx", "avx2"}),
		EngineKey("wasmtime", "39.0.1", "epoch2", []string{"avx", "avx2"}),
		EngineKey("wazero", "39.0.1", "epoch1", []string{"avx", "avx2"}),
	} {
		if other == a {
			t.Errorf("%s: the key does not tell apart engines, versions, settings or CPU features", a)
		}
	}
	if len(a) > 100 {
		t.Errorf("key %q is long", a)
	}
}

func TestHostCPUFeatures(t *testing.T) {
	f, err := HostCPUFeatures()
	if err != nil {
		t.Skipf("no /proc/cpuinfo here: %v", err)
	}
	t.Logf("host CPU features: %v; key %s", f, EngineKey("wasmtime", "x", "y", f))
}
