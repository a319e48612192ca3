package main

import (
	"maps"
	"strings"
	"testing"
)

// TestExecutorFlag: --executor FLAVOUR=ADDRESS still works, and
// FLAVOUR=ADDRESS,listener-socket=PATH names the executor's listener
// socket too; a later --executor of the same flavour replaces both; a
// relative or over-long path, an unknown option or a missing address is
// refused, saying what is wanted.
func TestExecutorFlag(t *testing.T) {
	long := "/" + strings.Repeat("d", 120) + "/l.sock"
	for _, c := range []struct {
		name         string
		args         []string
		addrs, socks map[string]string
		err          string
	}{
		{"address only", []string{"--executor", "wazero=unix:///run/wasmlet/wazero.sock"},
			map[string]string{"wazero": "unix:///run/wasmlet/wazero.sock"}, map[string]string{}, ""},
		{"with a listener socket", []string{"--executor", "wazero=unix:///run/e.sock,listener-socket=/run/wasmlet/listeners.sock", "--executor", "wasmtime=tcp://127.0.0.1:7001"},
			map[string]string{"wazero": "unix:///run/e.sock", "wasmtime": "tcp://127.0.0.1:7001"}, map[string]string{"wazero": "/run/wasmlet/listeners.sock"}, ""},
		{"given again without one", []string{"--executor", "wazero=unix:///a.sock,listener-socket=/l.sock", "--executor", "wazero=unix:///b.sock"},
			map[string]string{"wazero": "unix:///b.sock"}, map[string]string{}, ""},
		{"relative socket", []string{"--executor", "wazero=unix:///a.sock,listener-socket=l.sock"}, nil, nil, `listener-socket "l.sock": want an absolute path`},
		{"too long a socket", []string{"--executor", "wazero=unix:///a.sock,listener-socket=" + long}, nil, nil, "at most 107 bytes"},
		{"unknown option", []string{"--executor", "wazero=unix:///a.sock,tls=on"}, nil, nil, `unknown option "tls=on"; want FLAVOUR=ADDRESS or FLAVOUR=ADDRESS,listener-socket=PATH`},
		{"no address", []string{"--executor", "wazero=,listener-socket=/l.sock"}, nil, nil, "want FLAVOUR=ADDRESS"},
	} {
		cfg, _, err := parseFlags(append([]string{"--kubeconfig", "k.yaml"}, c.args...))
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s: %v, want an error containing %q", c.name, err, c.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if !maps.Equal(cfg.Executors, c.addrs) || !maps.Equal(cfg.ExecutorListenerSockets, c.socks) {
			t.Errorf("%s: executors %v listener sockets %v, want %v %v", c.name, cfg.Executors, cfg.ExecutorListenerSockets, c.addrs, c.socks)
		}
	}
}
