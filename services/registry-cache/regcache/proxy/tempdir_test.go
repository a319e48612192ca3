package proxy_test

import (
	"os"
	"testing"
)

func shortTempDir(t *testing.T) (string, error) {
	dir, err := os.MkdirTemp("", "rc")
	if err != nil {
		return "", err
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir, nil
}
