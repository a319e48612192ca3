//go:build !linux

package binpages

import (
	"context"
	"errors"
	"log/slog"
	"time"
)

// Settle is as on Linux.
const Settle = 10 * time.Second

// DropAfter does nothing but on Linux.
func DropAfter(context.Context, time.Duration, *slog.Logger) {}

// Drop needs Linux.
func Drop() (int, error) { return 0, errors.New("binpages: needs Linux") }
