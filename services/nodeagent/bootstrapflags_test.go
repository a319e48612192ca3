package main

import (
	"strings"
	"testing"
)

// --kubeconfig may be left out only when the node bootstraps its own.
func TestParseBootstrapFlags(t *testing.T) {
	t.Setenv("KUBECONFIG", "")
	if _, _, err := parseFlags(nil); err == nil || !strings.Contains(err.Error(), "--bootstrap-kubeconfig") {
		t.Errorf("no kubeconfig at all: %v, want an error naming --bootstrap-kubeconfig", err)
	}
	cfg, _, err := parseFlags([]string{"--bootstrap-kubeconfig", "boot.yaml", "--cert-dir", "/pki", "--rotate-certificates"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.BootstrapKubeconfig != "boot.yaml" || cfg.CertDir != "/pki" || !cfg.RotateCertificates || cfg.Kubeconfig != "" {
		t.Errorf("parsed %q %q %v %q", cfg.BootstrapKubeconfig, cfg.CertDir, cfg.RotateCertificates, cfg.Kubeconfig)
	}
}
