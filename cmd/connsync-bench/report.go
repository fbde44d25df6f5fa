package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
)

// field is one named value of an event or of a scenario's figures.
type field struct {
	key string
	val any
}

// record is an ordered set of fields; it marshals to a JSON object with its
// keys in order, so the figures read the same in every run.
type record []field

func (r record) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, f := range r {
		if i > 0 {
			b.WriteByte(',')
		}
		k, err := json.Marshal(f.key)
		if err != nil {
			return nil, err
		}
		v, err := json.Marshal(f.val)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f.key, err)
		}
		b.Write(k)
		b.WriteByte(':')
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// get returns the value of key, or nil.
func (r record) get(key string) any {
	for _, f := range r {
		if f.key == key {
			return f.val
		}
	}
	return nil
}

// reporter writes a scenario's output: events, tables and figures on
// stdout (JSON lines with -json), and one progress line on stderr that is
// rewritten in place.
type reporter struct {
	stdout, stderr io.Writer
	json           bool
	showProgress   bool
	plotDir        string // -plot: where scenarios write their charts ("" none)
	lineMax        int    // the progress line's longest length (0: maxProgress)

	mu    sync.Mutex
	shown int // length of the progress line on stderr, 0 if none
}

// newReporter returns a reporter; the progress line is shown only when
// showProgress is set and stderr is a terminal (in a log, a line rewritten
// with carriage returns is noise).
func newReporter(stdout, stderr io.Writer, jsonOut, showProgress bool) *reporter {
	return &reporter{stdout: stdout, stderr: stderr, json: jsonOut, showProgress: showProgress && isTerminal(stderr)}
}

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// clearLocked erases the progress line so other output starts on a clean
// line. r.mu is held.
func (r *reporter) clearLocked() {
	if r.shown > 0 {
		fmt.Fprintf(r.stderr, "\r%s\r", strings.Repeat(" ", r.shown))
		r.shown = 0
	}
}

// event reports something that happened: a JSON line with -json, else a
// line on stderr (stdout is kept for the tables).
func (r *reporter) event(name string, fs ...field) {
	rec := append(record{{"event", name}}, fs...)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.clearLocked()
	if r.json {
		r.writeJSONLocked(rec)
		return
	}
	parts := make([]string, 0, len(fs))
	for _, f := range fs {
		parts = append(parts, fmt.Sprintf("%s=%s", f.key, format(f.key, f.val)))
	}
	fmt.Fprintf(r.stderr, "%s: %s\n", name, strings.Join(parts, " "))
}

func (r *reporter) writeJSONLocked(rec record) {
	b, err := json.Marshal(rec)
	if err != nil {
		b, _ = json.Marshal(map[string]string{"event": "error", "error": err.Error()})
	}
	fmt.Fprintf(r.stdout, "%s\n", b)
}

// table prints rows under a header (tables mode only: with -json the same
// facts travel as events).
func (r *reporter) table(header []string, rows [][]string) {
	if r.json {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.clearLocked()
	tw := tabwriter.NewWriter(r.stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, strings.Join(header, "\t")+"\t")
	for _, row := range rows {
		fmt.Fprintln(tw, strings.Join(row, "\t")+"\t")
	}
	tw.Flush()
	fmt.Fprintln(r.stdout)
}

// figures prints the scenario's result: the last JSON line with -json, a
// two-column table otherwise.
func (r *reporter) figures(rec record) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.clearLocked()
	if r.json {
		r.writeJSONLocked(rec)
		return
	}
	tw := tabwriter.NewWriter(r.stdout, 0, 0, 2, ' ', 0)
	for _, f := range rec {
		fmt.Fprintf(tw, "%s\t%s\n", f.key, format(f.key, f.val))
	}
	tw.Flush()
}

// format renders a value for people: milliseconds with two decimals,
// rates with thousands separators.
func format(key string, v any) string {
	switch x := v.(type) {
	case float64:
		switch {
		case strings.HasSuffix(key, "_per_sec"):
			return thousands(int64(math.Round(x)))
		case strings.HasSuffix(key, "_ms"):
			return fmt.Sprintf("%.2f", x)
		default:
			return fmt.Sprintf("%.2f", x)
		}
	case int64:
		return thousands(x)
	case int:
		return thousands(int64(x))
	default:
		return fmt.Sprint(v)
	}
}

// thousands writes n with commas: 1234567 -> 1,234,567.
func thousands(n int64) string {
	s := fmt.Sprint(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// progressEvery is how often the progress line is rewritten.
const progressEvery = 250 * time.Millisecond

// maxProgress keeps the progress line within an 80-column terminal: a
// line that wraps cannot be rewritten with \r.
const maxProgress = 79

// progress shows line() on stderr, rewritten every progressEvery, until
// stop is called (which erases it). One progress line at a time.
func (r *reporter) progress(line func() string) (stop func()) {
	if !r.showProgress {
		return func() {}
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	show := func() {
		s := line()
		limit := maxProgress
		if r.lineMax > 0 {
			limit = r.lineMax
		}
		if len(s) > limit {
			s = s[:limit-3] + "..."
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		pad := ""
		if r.shown > len(s) {
			pad = strings.Repeat(" ", r.shown-len(s))
		}
		fmt.Fprintf(r.stderr, "\r%s%s", s, pad)
		r.shown = len(s)
	}
	go func() {
		defer close(finished)
		t := time.NewTicker(progressEvery)
		defer t.Stop()
		show()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				show()
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			close(done)
			<-finished
			r.mu.Lock()
			r.clearLocked()
			r.mu.Unlock()
		})
	}
}

// stderrWriter is stderr for others (a member's log tail), erasing the
// progress line first.
func (r *reporter) stderrWriter() io.Writer { return clearingWriter{r} }

type clearingWriter struct{ r *reporter }

func (w clearingWriter) Write(p []byte) (int, error) {
	w.r.mu.Lock()
	defer w.r.mu.Unlock()
	w.r.clearLocked()
	return w.r.stderr.Write(p)
}

// percentile returns the nearest-rank p-th percentile (0 < p <= 100) of
// sorted durations: the smallest value with at least p% of the values at or
// below it. 0 for no values.
func percentile(sorted []time.Duration, p float64) time.Duration {
	n := len(sorted)
	if n == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(n)))
	return sorted[min(max(rank, 1), n)-1]
}

// latencyFigures sorts lat and returns p50_ms, p99_ms and max_ms.
func latencyFigures(lat []time.Duration) record {
	slices.Sort(lat)
	var worst time.Duration
	if len(lat) > 0 {
		worst = lat[len(lat)-1]
	}
	return record{{"p50_ms", ms(percentile(lat, 50))}, {"p99_ms", ms(percentile(lat, 99))}, {"max_ms", ms(worst)}}
}

// ms is d in milliseconds, to the microsecond.
func ms(d time.Duration) float64 { return round(float64(d.Microseconds())/1000, 3) }

// round rounds x to n decimals.
func round(x float64, n int) float64 {
	p := math.Pow(10, float64(n))
	return math.Round(x*p) / p
}
