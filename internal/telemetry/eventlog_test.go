package telemetry

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/defendergw/gateway/internal/testutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestNewEventLogErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name    string
		opts    EventLogOptions
		wantErr string // substring; "" for success
	}{
		{"stdout json", EventLogOptions{Path: "stdout", Format: "json"}, ""},
		{"default", EventLogOptions{}, ""},
		{"stderr squid", EventLogOptions{Path: "stderr", Format: "squid"}, ""},
		{"file", EventLogOptions{Path: filepath.Join(dir, "a.log"), Format: "squid"}, ""},
		{"bad format", EventLogOptions{Format: "xml"}, `"xml"`},
		{"bad format before opening", EventLogOptions{Path: filepath.Join(dir, "never.log"), Format: "csv"}, `"csv"`},
		{"unopenable path", EventLogOptions{Path: filepath.Join(dir, "missing", "a.log")}, filepath.Join(dir, "missing", "a.log")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, err := NewEventLog(tt.opts)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if err := l.Close(); err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil {
				l.Close()
				t.Fatal("no error")
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %q does not name %s", err, tt.wantErr)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(dir, "never.log")); err == nil {
		t.Error("file created despite a bad format")
	}
}

func TestEventLogFileMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.log")
	l, err := NewEventLog(EventLogOptions{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm&^0o640 != 0 {
		t.Errorf("mode %v, want at most 0640", perm)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestEventLogFormats(t *testing.T) {
	ev := tunnelEvent()
	tests := []struct {
		format string
		want   string
	}{
		{"json", string(AppendJSON(nil, &ev))},
		{"squid", string(AppendSquid(nil, &ev))},
	}
	for _, tt := range tests {
		t.Run(tt.format, func(t *testing.T) {
			var w testutil.Buffer
			var logged atomic.Int64
			l, err := newEventLog(&w, EventLogOptions{Format: tt.format, OnLogged: func() { logged.Add(1) }})
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			l.Log(ev)
			// Flushed as soon as the queue is empty, without Close.
			waitFor(t, "line", func() bool { return w.String() != "" })
			if got := w.String(); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
			if logged.Load() != 1 {
				t.Errorf("OnLogged called %d times", logged.Load())
			}
		})
	}
}

func TestEventLogSetsTimestamp(t *testing.T) {
	var w testutil.Buffer
	l, err := newEventLog(&w, EventLogOptions{})
	if err != nil {
		t.Fatal(err)
	}
	before := time.Now().Add(-time.Second)
	l.Log(Event{ActionType: ConnectionSuccess})
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	var got struct{ Timestamp time.Time }
	if err := json.Unmarshal([]byte(w.String()), &got); err != nil {
		t.Fatal(err)
	}
	if got.Timestamp.Before(before) {
		t.Errorf("timestamp %v not set to now", got.Timestamp)
	}
}

func TestEventLogCloseFlushes(t *testing.T) {
	const n = 5000
	path := filepath.Join(t.TempDir(), "events.log")
	var logged, dropped atomic.Int64
	l, err := NewEventLog(EventLogOptions{Path: path, Format: "squid", Buffer: n,
		OnLogged: func() { logged.Add(1) }, OnDropped: func() { dropped.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	ev := tunnelEvent()
	for range n {
		l.Log(ev)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if lines := bytes.Count(data, []byte("\n")); lines != n {
		t.Errorf("%d lines, want %d", lines, n)
	}
	if logged.Load() != n || dropped.Load() != 0 {
		t.Errorf("logged %d dropped %d, want %d and 0", logged.Load(), dropped.Load(), n)
	}
	l.Log(ev) // after Close: dropped, no panic
	if dropped.Load() != 1 {
		t.Errorf("Log after Close: dropped = %d, want 1", dropped.Load())
	}
	if err := l.Reopen(); err != ErrEventLogClosed {
		t.Errorf("Reopen after Close = %v, want ErrEventLogClosed", err)
	}
}

// blockingWriter blocks every Write until release is closed.
type blockingWriter struct {
	entered chan struct{} // closed at the first Write
	once    sync.Once
	release chan struct{}
}

func (w *blockingWriter) Write(p []byte) (int, error) {
	w.once.Do(func() { close(w.entered) })
	<-w.release
	return len(p), nil
}

func TestLogNeverBlocks(t *testing.T) {
	const n = 100_000
	w := &blockingWriter{entered: make(chan struct{}), release: make(chan struct{})}
	var dropped atomic.Int64
	l, err := newEventLog(w, EventLogOptions{Buffer: 1024, OnDropped: func() { dropped.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	l.timeout = 50 * time.Millisecond
	ev := tunnelEvent()
	l.Log(ev)
	<-w.entered // the writer goroutine is now stuck in Write

	start := time.Now()
	for range n {
		l.Log(ev)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("%d Log calls took %v", n, d)
	}
	if got := dropped.Load(); got < n-1024 {
		t.Errorf("dropped %d, want at least %d", got, n-1024)
	}
	if err := l.Close(); err == nil || !strings.Contains(err.Error(), "timed out") {
		t.Errorf("Close with a stuck writer = %v, want a timeout", err)
	}
	close(w.release)
	<-l.done
}

func TestLogConcurrent(t *testing.T) {
	var w testutil.Buffer
	l, err := newEventLog(&w, EventLogOptions{Buffer: 100_000})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			ev := tunnelEvent()
			ev.LocalPort = i
			for range 500 {
				l.Log(ev)
			}
		})
	}
	wg.Wait()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(strings.NewReader(w.String()))
	lines := 0
	for sc.Scan() {
		if !json.Valid(sc.Bytes()) {
			t.Fatalf("interleaved line %q", sc.Text())
		}
		lines++
	}
	if lines != 8*500 {
		t.Errorf("%d lines, want %d", lines, 8*500)
	}
}

func TestReopen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "events.log")
	l, err := NewEventLog(EventLogOptions{Path: path, Format: "json"})
	if err != nil {
		t.Fatal(err)
	}
	first, second := tunnelEvent(), tunnelEvent()
	first.RemoteURL, second.RemoteURL = "first.example", "second.example"

	l.Log(first)
	waitFor(t, "first line", func() bool {
		data, _ := os.ReadFile(path)
		return bytes.Contains(data, []byte("first.example"))
	})
	rotated := path + ".1"
	if err := os.Rename(path, rotated); err != nil {
		t.Fatal(err)
	}
	if err := l.Reopen(); err != nil {
		t.Fatal(err)
	}
	l.Log(second)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct{ path, want, notWant string }{
		{rotated, "first.example", "second.example"},
		{path, "second.example", "first.example"},
	} {
		data, err := os.ReadFile(tc.path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(data, []byte(tc.want)) || bytes.Contains(data, []byte(tc.notWant)) {
			t.Errorf("%s: %q, want only %s", filepath.Base(tc.path), data, tc.want)
		}
	}
}

func TestReopenFailureKeepsOldFile(t *testing.T) {
	dir := t.TempDir()
	sub := filepath.Join(dir, "logs")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(sub, "events.log")
	l, err := NewEventLog(EventLogOptions{Path: path, Format: "squid"})
	if err != nil {
		t.Fatal(err)
	}
	moved := filepath.Join(dir, "moved")
	if err := os.Rename(sub, moved); err != nil { // path's directory is gone
		t.Fatal(err)
	}
	if err := l.Reopen(); err == nil {
		t.Error("Reopen succeeded without a directory")
	}
	l.Log(tunnelEvent())
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(moved, "events.log"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Count(data, []byte("\n")) != 1 {
		t.Errorf("old file has %q, want the event", data)
	}
}

func TestReopenStdoutNoop(t *testing.T) {
	for _, p := range []string{"", "stdout", "stderr"} {
		t.Run(p, func(t *testing.T) {
			l, err := NewEventLog(EventLogOptions{Path: p})
			if err != nil {
				t.Fatal(err)
			}
			if err := l.Reopen(); err != nil {
				t.Error(err)
			}
			if err := l.Close(); err != nil {
				t.Error(err)
			}
		})
	}
}

// errWriter fails its first write only.
type errWriter struct {
	mu    sync.Mutex
	fails int
	buf   bytes.Buffer
}

func (w *errWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.fails > 0 {
		w.fails--
		return 0, io.ErrShortWrite
	}
	return w.buf.Write(p)
}

func TestEventLogRecoversFromWriteError(t *testing.T) {
	w := &errWriter{fails: 1}
	l, err := newEventLog(w, EventLogOptions{Format: "squid"})
	if err != nil {
		t.Fatal(err)
	}
	l.Log(tunnelEvent()) // lost to the error
	waitFor(t, "failed write", func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.fails == 0
	})
	l.Log(tunnelEvent())
	if err := l.Close(); err != io.ErrShortWrite {
		t.Errorf("Close = %v, want the write error", err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if n := bytes.Count(w.buf.Bytes(), []byte("\n")); n != 1 {
		t.Errorf("%d lines after the error, want 1", n)
	}
}

func BenchmarkLog(b *testing.B) {
	var dropped atomic.Int64
	l, err := newEventLog(io.Discard, EventLogOptions{OnDropped: func() { dropped.Add(1) }})
	if err != nil {
		b.Fatal(err)
	}
	ev := tunnelEvent()
	b.ReportAllocs()
	for b.Loop() {
		l.Log(ev)
	}
	b.StopTimer()
	if err := l.Close(); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(dropped.Load())/float64(b.N), "drops/op")
}
