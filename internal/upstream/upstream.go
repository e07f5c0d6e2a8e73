// Package upstream is a lean HTTP/1.1 client for the requests the gateway
// forwards most: bodiless plain-HTTP requests in absolute form (endpoints
// fetching CRLs, certificate trust lists and update payloads over port 80).
//
// It replaces http.Transport on that path only. The Transport runs two
// goroutines per upstream connection and hands every request and response
// between them and the caller through channels: three goroutine wake-ups per
// request, which profiling showed to be most of the forwarder's own cost.
// This client writes the request and reads the response on the caller's
// goroutine, and a pooled connection holds no buffers while it is idle.
// Requests with a body, HTTPS origins and anything else Handles refuses go
// through http.Transport as before.
//
// What the Transport does for this path and this client keeps:
// keep-alive with a bounded idle pool (RFC 9112 §9.3), a response-header
// timeout and size limit, interim 1xx responses skipped (RFC 9110 §15.2), a
// stale pooled connection detected before reuse, and idempotent requests
// retried once on a fresh connection when a reused one turns out to be
// closed (RFC 9110 §9.2.2), cancellation when the client goes away, and
// httptrace's GotConn.
package upstream

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Options configure a Client.
type Options struct {
	// DialContext connects to addr ("host:port"); it is required. The
	// gateway passes its checked dialer, which refuses internal addresses.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// ResponseHeaderTimeout bounds writing the request and reading the
	// response headers; zero means no limit beyond the request's context.
	ResponseHeaderTimeout time.Duration
	// MaxResponseHeaderBytes bounds the response headers (interim responses
	// included); zero means 64 KiB.
	MaxResponseHeaderBytes int
	// IdleTimeout closes a pooled connection unused for this long; zero
	// means 90 s.
	IdleTimeout time.Duration
	// MaxIdlePerHost bounds pooled connections per host:port; zero means 256.
	MaxIdlePerHost int
	// MaxIdle bounds pooled connections in total; zero means 1024.
	MaxIdle int
}

// Client is a keep-alive HTTP/1.1 client for requests Handles accepts. It is
// safe for concurrent use.
type Client struct {
	opts Options
	pool pool
}

// New returns a Client.
func New(opts Options) *Client {
	if opts.MaxResponseHeaderBytes <= 0 {
		opts.MaxResponseHeaderBytes = 64 << 10
	}
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = 90 * time.Second
	}
	if opts.MaxIdlePerHost <= 0 {
		opts.MaxIdlePerHost = 256
	}
	if opts.MaxIdle <= 0 {
		opts.MaxIdle = 1024
	}
	c := &Client{opts: opts}
	c.pool.init(opts.IdleTimeout, opts.MaxIdle, opts.MaxIdlePerHost)
	return c
}

// CloseIdleConnections closes every pooled connection.
func (c *Client) CloseIdleConnections() { c.pool.closeAll() }

// Handles reports whether RoundTrip can carry r: an http:// request
// without a body (so nothing needs writing while the response is read, and
// a retry resends nothing), not asking to switch protocols.
func Handles(r *http.Request) bool {
	return r.URL != nil && r.URL.Scheme == "http" && r.URL.Host != "" &&
		(r.Body == nil || r.Body == http.NoBody) && r.ContentLength == 0 &&
		len(r.TransferEncoding) == 0 && r.Method != http.MethodConnect &&
		r.Header.Get("Upgrade") == ""
}

// ErrNotHandled is returned for a request Handles refuses.
var ErrNotHandled = errors.New("upstream: request needs http.Transport")

// errHeaderTooLarge reports response headers beyond MaxResponseHeaderBytes.
var errHeaderTooLarge = errors.New("response headers too large")

// ErrUnexpected101 reports a protocol switch nobody asked for: Upgrade is
// hop-by-hop and never forwarded.
var ErrUnexpected101 = errors.New("unexpected 101 Switching Protocols")

// maxInterim bounds the interim (1xx) responses skipped before the final
// one; the header size limit covers them too.
const maxInterim = 16

// RoundTrip sends r and returns the response. The body must be read to EOF
// or closed; a connection whose body was read to the end goes back to the
// pool, one closed early is closed, never drained. A dial is bounded by r's
// context (and DialContext's own bound).
func (c *Client) RoundTrip(r *http.Request) (*http.Response, error) {
	return c.RoundTripBy(r, time.Time{})
}

// RoundTripBy is RoundTrip with a deadline for dialing a new connection
// (the caller's one deadline for setting the request up; zero means none
// beyond r's context). It does not bound the response: that is
// ResponseHeaderTimeout's, and the body's reader's.
func (c *Client) RoundTripBy(r *http.Request, dialBy time.Time) (*http.Response, error) {
	if !Handles(r) {
		return nil, ErrNotHandled
	}
	addr := r.URL.Host
	if _, _, err := net.SplitHostPort(addr); err != nil {
		addr = net.JoinHostPort(strings.Trim(addr, "[]"), "80")
	}
	ctx := r.Context()
	trace := httptrace.ContextClientTrace(ctx)
	for {
		pc, err := c.conn(ctx, addr, dialBy)
		if err != nil {
			return nil, err
		}
		if trace != nil && trace.GotConn != nil {
			info := httptrace.GotConnInfo{Conn: pc.nc, Reused: pc.reused}
			if pc.reused {
				info.WasIdle, info.IdleTime = true, time.Since(pc.idleAt)
			}
			trace.GotConn(info)
		}
		resp, err := pc.roundTrip(ctx, r, c.opts)
		if err == nil {
			return resp, nil
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%s %s: %w", r.Method, addr, context.Cause(ctx))
		}
		// A pooled connection the origin closed while it sat idle fails
		// before any byte of the response: an idempotent request may be
		// sent again (RFC 9110 §9.2.2); a fresh connection's failure is
		// the origin's answer.
		if pc.reused && pc.nothingRead() && idempotent(r) && isClosedConn(err) {
			continue
		}
		return nil, fmt.Errorf("%s %s: %w", r.Method, addr, err)
	}
}

// idempotent reports whether r may be sent twice (RFC 9110 §9.2.2).
func idempotent(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return true
	}
	return r.Header.Get("Idempotency-Key") != "" || r.Header.Get("X-Idempotency-Key") != ""
}

// isClosedConn reports the errors of writing to or reading from a
// connection the peer has closed.
func isClosedConn(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// conn returns a live pooled connection to addr, or dials one.
func (c *Client) conn(ctx context.Context, addr string, dialBy time.Time) (*conn, error) {
	for {
		pc := c.pool.get(addr)
		if pc == nil {
			break
		}
		if pc.alive() {
			pc.reused = true
			return pc, nil
		}
		pc.nc.Close()
	}
	dctx, cancel := ctx, context.CancelFunc(func() {})
	if !dialBy.IsZero() {
		dctx, cancel = context.WithDeadline(ctx, dialBy)
	}
	nc, err := c.opts.DialContext(dctx, "tcp", addr)
	cancel()
	if err != nil {
		return nil, err
	}
	return &conn{client: c, addr: addr, nc: nc}, nil
}

// conn is one upstream connection. Between requests it holds only the
// socket: its read and write buffers come from pools for the duration of a
// request.
type conn struct {
	client *Client
	addr   string
	nc     net.Conn
	reused bool
	idleAt time.Time

	lr io.LimitedReader // reports EOF at MaxResponseHeaderBytes while headers are read
	br *bufio.Reader
}

var (
	readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4<<10) }}
	writers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4<<10) }}
)

// roundTrip writes r and reads the final response's headers.
func (pc *conn) roundTrip(ctx context.Context, r *http.Request, opts Options) (*http.Response, error) {
	// Closing the connection is the one cancellation that cannot be undone
	// by a later SetDeadline; the error is reported as ctx's.
	stop := context.AfterFunc(ctx, func() { pc.nc.Close() })
	pc.lr = io.LimitedReader{R: pc.nc, N: int64(opts.MaxResponseHeaderBytes)}
	if opts.ResponseHeaderTimeout > 0 {
		pc.nc.SetDeadline(time.Now().Add(opts.ResponseHeaderTimeout))
	}
	bw := writers.Get().(*bufio.Writer)
	bw.Reset(pc.nc)
	err := r.Write(bw)
	if err == nil {
		err = bw.Flush()
	}
	bw.Reset(nil)
	writers.Put(bw)
	if err != nil {
		stop()
		pc.nc.Close()
		return nil, fmt.Errorf("write request: %w", err)
	}

	pc.br = readers.Get().(*bufio.Reader)
	pc.br.Reset(&pc.lr)
	var resp *http.Response
	for interim := 0; ; interim++ {
		resp, err = http.ReadResponse(pc.br, r)
		if err != nil {
			if pc.lr.N <= 0 {
				err = fmt.Errorf("%w (over %d bytes)", errHeaderTooLarge, opts.MaxResponseHeaderBytes)
			}
			break
		}
		if resp.StatusCode == http.StatusSwitchingProtocols {
			err = ErrUnexpected101
			break
		}
		// Interim responses precede the final one (RFC 9110 §15.2); a
		// client that did not ask for them has nothing to do with them.
		if resp.StatusCode >= 200 || interim == maxInterim {
			break
		}
	}
	if err == nil && resp.StatusCode < 200 {
		err = fmt.Errorf("more than %d interim responses", maxInterim)
	}
	if err != nil {
		stop()
		pc.close()
		return nil, fmt.Errorf("read response: %w", err)
	}
	pc.lr.N = 1<<63 - 1 // the body is framed by the response, not by us
	if opts.ResponseHeaderTimeout > 0 {
		pc.nc.SetDeadline(time.Time{})
	}
	reusable := !resp.Close && !r.Close
	if resp.Body == http.NoBody {
		pc.release(stop, reusable)
		return resp, nil
	}
	resp.Body = &body{rc: resp.Body, pc: pc, stop: stop, reusable: reusable}
	return resp, nil
}

// nothingRead reports whether the failed request got no byte of response.
func (pc *conn) nothingRead() bool {
	return pc.lr.N == int64(pc.client.opts.MaxResponseHeaderBytes)
}

// release ends a request: the connection goes back to the pool when the
// response was read to its end, nothing follows it, and the request's
// context did not close it; otherwise it is closed.
func (pc *conn) release(stop func() bool, reusable bool) {
	live := stop() // false: ctx fired and closed the socket
	if reusable && live && pc.br.Buffered() == 0 {
		pc.br.Reset(nil)
		readers.Put(pc.br)
		pc.br = nil
		pc.reused = false
		if pc.client.pool.put(pc) {
			return
		}
		pc.nc.Close()
		return
	}
	pc.close()
}

// close closes the socket and returns the read buffer.
func (pc *conn) close() {
	pc.nc.Close()
	if pc.br != nil {
		pc.br.Reset(nil)
		readers.Put(pc.br)
		pc.br = nil
	}
}

// body is a response body that returns its connection to the pool at EOF.
// Read and Close may be called concurrently (Close unblocks a Read).
type body struct {
	mu       sync.Mutex // serialises Read and the read buffer's return
	state    atomic.Int32
	rc       io.ReadCloser
	pc       *conn
	stop     func() bool
	reusable bool
	err      error // what Read returns once finished
}

const (
	bodyOpen   int32 = iota
	bodyDone         // read to EOF or failed; the connection is released
	bodyClosed       // closed by the caller before EOF
)

func (b *body) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state.Load() {
	case bodyDone:
		return 0, b.err
	case bodyClosed:
		return 0, errBodyClosed
	}
	n, err := b.rc.Read(p)
	if err == nil {
		return n, nil
	}
	if !b.state.CompareAndSwap(bodyOpen, bodyDone) {
		return n, errBodyClosed // Close won the race; it releases the buffer once this returns
	}
	b.err = err
	if err == io.EOF {
		b.pc.release(b.stop, b.reusable)
	} else {
		b.stop()
		b.pc.close()
	}
	return n, err
}

// Close closes the connection unless the body was read to its end: an
// abandoned body is never drained (it may be large, or endless).
func (b *body) Close() error {
	if b.state.CompareAndSwap(bodyOpen, bodyClosed) {
		b.stop()
		b.pc.nc.Close() // unblocks a Read in progress
		b.mu.Lock()
		b.pc.close()
		b.mu.Unlock()
	}
	return nil
}

var errBodyClosed = errors.New("read on closed response body")
