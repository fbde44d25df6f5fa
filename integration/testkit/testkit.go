// Package testkit holds the small helpers every test package of connsync
// uses: polling with a deadline instead of sleeping, and a log writer that
// is safe to use from goroutines that outlive the test. It imports nothing
// of connsync, so any package's tests may use it.
package testkit

import (
	"bytes"
	"sync"
	"testing"
	"time"
)

// CheckFor calls fn every interval until it returns nil, failing the test
// with fn's last error after timeout.
func CheckFor(tb testing.TB, timeout, interval time.Duration, fn func() error) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("condition not met within %v: %v", timeout, err)
		}
		time.Sleep(interval)
	}
}

// LogWriter sends what is written to the test log until the test ends;
// afterwards it drops it (goroutines that log after a test ended must not
// call t.Logf: the testing package panics). Create it before anything that
// logs to it, so its cleanup runs after theirs.
type LogWriter struct {
	tb      testing.TB
	mu      sync.Mutex
	stopped bool
}

// NewLogWriter returns a LogWriter for tb.
func NewLogWriter(tb testing.TB) *LogWriter {
	w := &LogWriter{tb: tb}
	tb.Cleanup(w.Stop)
	return w
}

func (w *LogWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.stopped {
		w.tb.Logf("%s", bytes.TrimRight(p, "\n"))
	}
	return len(p), nil
}

// Stop drops everything written from now on.
func (w *LogWriter) Stop() {
	w.mu.Lock()
	w.stopped = true
	w.mu.Unlock()
}
