package wazero

import (
	"testing"

	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine/enginetest"
)

func newEngine(t testing.TB, dir string, cpu engine.ThreadLimiter) engine.Engine {
	t.Helper()
	e, err := New(Config{CacheDir: dir, CPU: cpu})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func TestConformance(t *testing.T) {
	enginetest.Run(t, newEngine)
}

func TestPages(t *testing.T) {
	for _, tc := range []struct {
		limit int64
		want  uint32
	}{{0, 65536}, {-1, 65536}, {1, 1}, {64 << 10, 1}, {64<<10 + 1, 1}, {64 << 20, 1024}, {4 << 30, 65536}, {8 << 30, 65536}} {
		if got := pages(tc.limit); got != tc.want {
			t.Errorf("pages(%d) = %d, want %d", tc.limit, got, tc.want)
		}
	}
}

func BenchmarkEngine(b *testing.B) {
	enginetest.Bench(b, newEngine)
}
