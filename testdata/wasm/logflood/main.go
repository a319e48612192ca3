//go:build wasip1

// Command logflood is a test and benchmark module: it prints numbered
// lines "<n> <unix nanoseconds>" on stdout, BURST lines per write, with
// PAUSE between writes (none by default: as fast as it can), LINES in all
// (0, the default: forever), after waiting DELAY (default none; lets a
// reader attach first). The time lets a reader measure how long a
// line took to reach it (the guest's clock is the host's).
//
//	LINES=500000 logflood        # a flood
//	BURST=1 PAUSE=20ms logflood  # one line every 20ms, forever
package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"time"
)

func main() {
	lines := envInt("LINES", 0)
	burst := max(envInt("BURST", 100), 1)
	pause := envDuration("PAUSE")
	time.Sleep(envDuration("DELAY"))
	w := bufio.NewWriterSize(os.Stdout, 64<<10)
	buf := make([]byte, 0, 64)
	for n := 1; lines == 0 || n <= lines; n++ {
		buf = strconv.AppendInt(buf[:0], int64(n), 10)
		buf = append(buf, ' ')
		buf = strconv.AppendInt(buf, time.Now().UnixNano(), 10)
		buf = append(buf, '\n')
		w.Write(buf)
		if n%burst == 0 {
			w.Flush()
			if pause > 0 {
				time.Sleep(pause)
			}
		}
	}
	w.Flush()
}

func envInt(name string, def int) int {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	v, err := strconv.Atoi(s)
	if err != nil || v < 0 {
		fmt.Fprintf(os.Stderr, "%s=%q: want a whole number\n", name, s)
		os.Exit(2)
	}
	return v
}

func envDuration(name string) time.Duration {
	s := os.Getenv(name)
	if s == "" {
		return 0
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(2)
	}
	return d
}
