package wagi

import (
	"bytes"
	"fmt"
	"io"
	"sync"
)

// lines writes to a sink a line at a time from many runs at once: the
// sink takes writes from one goroutine at a time (engine.Spec), and a
// line of one run is never cut by another's.
type lines struct {
	mu   sync.Mutex
	sink io.Writer
}

// maxPartial bounds the unterminated line a run's stream keeps: longer, it
// is written as it is.
const maxPartial = 64 << 10

func newLines(sink io.Writer) *lines { return &lines{sink: sink} }

func (l *lines) write(p []byte) {
	if l.sink == nil || len(p) == 0 {
		return
	}
	l.mu.Lock()
	l.sink.Write(p)
	l.mu.Unlock()
}

// printf writes one line of the executor's.
func (l *lines) printf(format string, args ...any) {
	l.write([]byte(fmt.Sprintf(format, args...) + "\n"))
}

// request is the stream of one run, flushed when it has ended.
func (l *lines) request() *stream { return &stream{l: l} }

// stream keeps a run's unterminated last line.
type stream struct {
	l       *lines
	partial []byte
}

func (s *stream) Write(p []byte) (int, error) {
	n := len(p)
	if i := bytes.LastIndexByte(p, '\n'); i >= 0 {
		s.partial = append(s.partial, p[:i+1]...)
		s.l.write(s.partial)
		s.partial = append(s.partial[:0], p[i+1:]...)
	} else {
		s.partial = append(s.partial, p...)
	}
	if len(s.partial) > maxPartial {
		s.flush()
	}
	return n, nil
}

// flush writes what is left.
func (s *stream) flush() {
	s.l.write(s.partial)
	s.partial = s.partial[:0]
}
