package telemetry

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultEventBuffer is the default EventLogOptions.Buffer.
const DefaultEventBuffer = 8192

// closeTimeout bounds how long Close waits for the queue to drain.
const closeTimeout = 5 * time.Second

// ErrEventLogClosed is returned by Reopen after Close.
var ErrEventLogClosed = errors.New("telemetry: event log closed")

// EventLogOptions configures NewEventLog.
type EventLogOptions struct {
	Path   string // "stdout" (or ""), "stderr", or a file path (opened O_APPEND|O_CREATE, 0640)
	Format string // "json" (or "") or "squid"
	Buffer int    // queued events before dropping; default DefaultEventBuffer
	// OnLogged and OnDropped, if non-nil, are called per written and per
	// dropped event (metrics hooks). OnLogged runs on the writer goroutine,
	// OnDropped on the caller of Log.
	OnLogged, OnDropped func()
}

// EventLog writes connection events from a bounded queue on one goroutine.
type EventLog struct {
	queue     chan Event
	quit      chan struct{} // closed by Close
	done      chan struct{} // closed when the writer goroutine returns
	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
	timeout   time.Duration

	encode    func([]byte, *Event) []byte
	onLogged  func()
	onDropped func()

	path string // file path; "" for stdout/stderr and test writers

	mu  sync.Mutex // guards the fields below, held by the writer per event
	w   io.Writer
	f   *os.File // file sink, nil for stdout/stderr and test writers
	bw  *bufio.Writer
	err error // first write error since the last Reopen
	buf []byte
}

// NewEventLog opens the sink and starts the writer goroutine.
func NewEventLog(opts EventLogOptions) (*EventLog, error) {
	if _, err := encoder(opts.Format); err != nil {
		return nil, err
	}
	switch opts.Path {
	case "", "stdout":
		return newEventLog(os.Stdout, opts)
	case "stderr":
		return newEventLog(os.Stderr, opts)
	}
	f, err := openLogFile(opts.Path)
	if err != nil {
		return nil, err
	}
	l, err := newEventLog(f, opts)
	if err != nil {
		f.Close()
		return nil, err
	}
	l.path, l.f = opts.Path, f
	return l, nil
}

func openLogFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("telemetry: event log: %w", err)
	}
	return f, nil
}

func encoder(format string) (func([]byte, *Event) []byte, error) {
	switch format {
	case "", "json":
		return AppendJSON, nil
	case "squid":
		return AppendSquid, nil
	}
	return nil, fmt.Errorf("telemetry: unknown event log format %q (want json or squid)", format)
}

// newEventLog writes to w, which it never closes (tests pass their own writers).
func newEventLog(w io.Writer, opts EventLogOptions) (*EventLog, error) {
	enc, err := encoder(opts.Format)
	if err != nil {
		return nil, err
	}
	n := opts.Buffer
	if n <= 0 {
		n = DefaultEventBuffer
	}
	l := &EventLog{
		queue:     make(chan Event, n),
		quit:      make(chan struct{}),
		done:      make(chan struct{}),
		timeout:   closeTimeout,
		encode:    enc,
		onLogged:  opts.OnLogged,
		onDropped: opts.OnDropped,
		w:         w,
		bw:        bufio.NewWriterSize(w, 64<<10),
		buf:       make([]byte, 0, 1024),
	}
	go l.run()
	return l, nil
}

// Log queues e and never blocks: if the queue is full, or the log is closed,
// the event is dropped (OnDropped). A zero Timestamp is set to now. Log is
// safe for concurrent use.
func (l *EventLog) Log(e Event) {
	if e.Timestamp.IsZero() {
		e.Timestamp = time.Now()
	}
	if !l.closed.Load() {
		select {
		case l.queue <- e:
			return
		default:
		}
	}
	if l.onDropped != nil {
		l.onDropped()
	}
}

func (l *EventLog) run() {
	defer close(l.done)
	e := new(Event) // reused: the encoder's argument escapes
	for {
		select {
		case *e = <-l.queue:
			l.write(e)
		case <-l.quit:
			for {
				select {
				case *e = <-l.queue:
					l.write(e)
				default:
					l.mu.Lock()
					l.flush()
					l.mu.Unlock()
					return
				}
			}
		}
	}
}

// write encodes and buffers one event, flushing when no other is queued so
// that lines appear promptly.
func (l *EventLog) write(e *Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = l.encode(l.buf[:0], e)
	if _, err := l.bw.Write(l.buf); err != nil {
		l.failed(err)
	} else if l.onLogged != nil {
		l.onLogged()
	}
	if len(l.queue) == 0 {
		l.flush()
	}
}

// flush flushes the buffer; l.mu must be held.
func (l *EventLog) flush() {
	if err := l.bw.Flush(); err != nil {
		l.failed(err)
	}
}

// failed records a write error and discards the buffered data so that a
// transient error (disk full) does not stick to the bufio.Writer; l.mu must
// be held.
func (l *EventLog) failed(err error) {
	if l.err == nil {
		l.err = err
	}
	l.bw.Reset(l.w)
}

// Reopen reopens a file sink at its path, after logrotate moved it (call it
// on SIGHUP). Buffered lines go to the old file first. If the path cannot be
// opened the old file is kept. It is a no-op for stdout and stderr.
func (l *EventLog) Reopen() error {
	if l.path == "" {
		return nil
	}
	if l.closed.Load() {
		return ErrEventLogClosed
	}
	f, err := openLogFile(l.path)
	if err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed.Load() { // Close ran while we opened
		f.Close()
		return ErrEventLogClosed
	}
	l.flush()
	old := l.f
	l.f, l.w, l.err = f, f, nil
	l.bw.Reset(f)
	return old.Close()
}

// Close stops accepting events, writes those queued (waiting at most a few
// seconds for a slow sink), flushes, and closes a file sink. It returns the
// first write error, if any. Later calls return the same result.
func (l *EventLog) Close() error {
	l.closeOnce.Do(func() {
		l.closed.Store(true)
		close(l.quit)
		select {
		case <-l.done:
		case <-time.After(l.timeout):
			// The writer is stuck in a write; leave the sink to it.
			l.closeErr = fmt.Errorf("telemetry: event log: draining timed out after %v", l.timeout)
			return
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		l.closeErr = l.err
		if l.f != nil {
			if err := l.f.Close(); err != nil && l.closeErr == nil {
				l.closeErr = err
			}
		}
	})
	return l.closeErr
}
