// Package tlsbypass owns the gateway's CONNECT tunnels: the raw, uninspected
// byte relay between a client and the destination it was allowed to reach.
//
// Defender's service connections pin certificates, so an allowed CONNECT is
// relayed untouched (Microsoft, "Configure device proxy and Internet
// connectivity settings": exclude the Defender URLs from HTTPS scanning).
//
// Most Defender tunnels are long-lived and idle, so the relay is built to cost
// little while nothing flows: each direction waits for readability without
// holding a buffer and borrows a pooled buffer only to move bytes; on Linux a
// bulk transfer moves kernel to kernel with splice(2) through a pipe held only
// while its bytes move (Options.Splice, docs/copy-method). There is no
// net.Conn wrapper anywhere in the copy path.
package tlsbypass

import (
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"time"

	"github.com/defendergw/gateway/internal/bufpool"
)

// Options tune a relay.
type Options struct {
	// IdleTimeout closes the tunnel when no byte has moved in either direction
	// for this long. Zero means no idle limit.
	IdleTimeout time.Duration
	// HalfCloseTimeout bounds how long one direction may keep flowing after
	// the other has finished cleanly (half-close). Zero means no bound
	// beyond IdleTimeout (the gateway's default is its setting's, stated in
	// internal/config).
	HalfCloseTimeout time.Duration
	// Splice, if non-nil, lets a bulk transfer between two TCP connections
	// move by splice(2), kernel to kernel (Linux): once a read fills the
	// pooled buffer, the bytes queued behind it are spliced through a pipe
	// held only while they move, with at most Splice's limit of pipes in
	// use across all tunnels (when none is free, the buffer carries on).
	// If nil, or where splice is unavailable, every byte goes through a
	// pooled user-space buffer held only while bytes move.
	Splice *Pipes
}

// Pipes bounds the splice pipes that tunnels hold at once. Each is two file
// descriptors and up to 1 MiB of kernel memory, and an unprivileged user's
// pipes are capped by fs.pipe-user-pages-soft (pipe(7)): with thousands of
// tunnels streaming to slow readers, an unbounded splice would hold a pipe
// per tunnel.
type Pipes struct {
	max   int32
	inUse atomic.Int32
	taken atomic.Int64 // pipes ever acquired, for tests
}

// NewPipes returns a bound of n pipes in use at once (at least 1).
func NewPipes(n int) *Pipes { return &Pipes{max: int32(max(1, n))} }

func (p *Pipes) acquire() bool {
	if p.inUse.Add(1) > p.max {
		p.inUse.Add(-1)
		return false
	}
	p.taken.Add(1)
	return true
}

func (p *Pipes) release() { p.inUse.Add(-1) }

// Stats describe a finished relay.
type Stats struct {
	// ClientToUpstream and UpstreamToClient count relayed bytes, including
	// bytes the client sent ahead of the tunnel (Pending).
	ClientToUpstream int64
	UpstreamToClient int64
	Duration         time.Duration
	// End says why the tunnel ended: "closed" (both sides finished),
	// "idle-timeout", "half-close-timeout", "refused" (StartVerified's
	// check refused a later ClientHello) or "error".
	End string
	// Err is the first error other than a clean close, if any.
	Err error
}

var (
	errIdle      = errors.New("tunnel idle timeout")
	errHalfClose = errors.New("half-close linger expired")
)

// Relay copies bytes both ways between client and upstream until both
// directions have finished, then closes both connections and returns what
// happened. It is Start, waiting for the end.
func Relay(client, upstream net.Conn, pending []byte, opts Options) Stats {
	ch := make(chan Stats, 1)
	Start(client, upstream, pending, opts, func(st Stats) { ch <- st })
	return <-ch
}

// Start relays bytes both ways between client and upstream on two new
// goroutines and returns at once; done is called, on one of them, with the
// tunnel's Stats after both directions have finished and both connections
// are closed. pending holds bytes the client already sent that must reach
// upstream first (a ClientHello that arrived with the CONNECT request).
//
// The caller's goroutine is not kept: a proxy handler can return, so that
// an idle tunnel holds only two shallow goroutines, the two sockets and no
// buffer (most Defender tunnels are long-lived and idle).
//
// When one side half-closes (EOF), the relay propagates it with CloseWrite
// (RFC 9293 §3.6: each direction closes independently) and lets the other
// direction finish within HalfCloseTimeout.
func Start(client, upstream net.Conn, pending []byte, opts Options, done func(Stats)) {
	start(client, upstream, pending, opts, nil, done)
}

// StartVerified is Start for a tunnel whose first ClientHello (in pending)
// passed check: until the client's handshake is encrypted, every further
// ClientHello it sends in the clear (the retry after a HelloRetryRequest,
// RFC 8446 §4.1.4) must pass check too, before its bytes reach upstream.
// A tunnel the check refuses ends with Stats.End "refused" and Stats.Err
// wrapping check's error (or ErrNotTLS for records that are not TLS).
func StartVerified(client, upstream net.Conn, pending []byte, opts Options, check func(Hello) error, done func(Stats)) {
	start(client, upstream, pending, opts, check, done)
}

func start(client, upstream net.Conn, pending []byte, opts Options, check func(Hello) error, done func(Stats)) {
	client = bare(client)
	r := &relay{opts: opts, start: time.Now(), client: client, upstream: upstream, done: done}
	r.touch()
	if check != nil && len(pending) > 0 {
		// Only the verified first ClientHello goes out unchecked; what the
		// client sent behind it is the guard's.
		n, err := splitFirstHello(pending)
		if err != nil {
			r.cause.Store(&failure{err})
			r.left.Store(1)
			r.end()
			return
		}
		if n < len(pending) {
			// A copy: the peek buffer must not live as long as the tunnel.
			r.ahead = append([]byte(nil), pending[n:]...)
		}
		pending = pending[:n]
	}
	if len(pending) > 0 {
		upstream.SetWriteDeadline(r.writeDeadline())
		n, err := upstream.Write(pending)
		r.pendingN = int64(n)
		if err != nil {
			r.cause.Store(&failure{err})
			r.left.Store(1)
			r.end()
			return
		}
	}
	r.left.Store(2)
	if check == nil {
		go r.run(upstream, client, &r.up)
		go r.run(client, upstream, &r.down)
		return
	}
	go r.guarded(upstream, client, &r.up, func() (int64, error) { return r.guardClient(upstream, client, check) })
	go r.guarded(client, upstream, &r.down, func() (int64, error) { return r.guardServer(client, upstream) })
}

// guarded runs a handshake guard for the direction reading src, then the
// ordinary copy on a new goroutine, and returns: the guards' frames (record
// reassembly, crypto/tls for a retried hello) grow their stacks, and an idle
// tunnel must keep only the copy's minimal stacks, and nothing the guard
// referenced. Measured with the load harness, a server guard that ran its
// copy on its own goroutine left idle TLS tunnels with 6.1 KiB of stack
// instead of 4.1.
func (r *relay) guarded(dst, src net.Conn, n *int64, guard func() (int64, error)) {
	g, err := guard()
	*n += g
	switch {
	case err == io.EOF:
		r.closeWrite(dst)
		r.finished(src, dst, nil)
		r.end()
	case err != nil:
		r.finished(src, dst, err)
		r.end()
	default:
		go r.run(dst, src, n)
	}
}

// run relays one direction, and the last direction to finish ends the
// tunnel.
func (r *relay) run(dst, src net.Conn, n *int64) {
	c, err := r.copy(dst, src)
	*n += c
	r.finished(src, dst, err)
	r.end()
}

// end closes the tunnel and reports it once both directions are done.
func (r *relay) end() {
	if r.left.Add(-1) != 0 {
		return
	}
	r.client.Close()
	r.upstream.Close()
	st := Stats{ClientToUpstream: r.pendingN + r.up, UpstreamToClient: r.down, Duration: time.Since(r.start), End: "closed"}
	// The first failure decides how the tunnel ended: once one direction
	// fails, the relay closes both connections, and the other direction's
	// "use of closed network connection" is a consequence, not a cause.
	if cause := r.cause.Load(); cause != nil {
		st.Err = cause.err
		switch {
		case errors.Is(cause.err, errIdle):
			st.End = "idle-timeout"
		case errors.Is(cause.err, errHalfClose):
			st.End = "half-close-timeout"
		case errors.Is(cause.err, errRetryRefused):
			st.End = "refused"
		default:
			st.End = "error"
		}
	}
	r.done(st)
}

type failure struct{ err error }

type relay struct {
	opts             Options
	start            time.Time
	client, upstream net.Conn
	done             func(Stats)
	left             atomic.Int32 // directions still running
	pendingN         int64        // pending bytes written before the relay
	up, down         int64        // bytes relayed each way, written by their direction

	cause       atomic.Pointer[failure] // first error that ended a direction
	last        atomic.Int64            // unix nanoseconds of the last byte moved, either way
	lingerUntil atomic.Int64            // unix nanoseconds; 0 while both directions flow
	hrr         atomic.Bool             // the server's first message was a HelloRetryRequest
	ahead       []byte                  // client bytes behind its first ClientHello, for the guard
}

func (r *relay) touch() { r.last.Store(time.Now().UnixNano()) }

// writeDeadline bounds a write by the idle limit and the half-close linger:
// a peer that stops reading must not hold the tunnel open forever.
func (r *relay) writeDeadline() time.Time {
	var d time.Time
	if r.opts.IdleTimeout > 0 {
		d = time.Now().Add(r.opts.IdleTimeout)
	}
	return r.earlierLinger(d)
}

func (r *relay) earlierLinger(d time.Time) time.Time {
	if l := r.lingerUntil.Load(); l != 0 {
		if lt := time.Unix(0, l); d.IsZero() || lt.Before(d) {
			return lt
		}
	}
	return d
}

// readDeadline is the earlier of the idle limit and the half-close linger.
func (r *relay) readDeadline() time.Time {
	var d time.Time
	if r.opts.IdleTimeout > 0 {
		d = time.Unix(0, r.last.Load()).Add(r.opts.IdleTimeout)
	}
	return r.earlierLinger(d)
}

// expired tells whether a read deadline that fired is final.
func (r *relay) expired() error {
	now := time.Now()
	if l := r.lingerUntil.Load(); l != 0 && now.UnixNano() >= l {
		return errHalfClose
	}
	if r.opts.IdleTimeout > 0 && now.Sub(time.Unix(0, r.last.Load())) >= r.opts.IdleTimeout {
		return errIdle
	}
	return nil
}

// readTimedOut handles a read deadline that fired on src: the idle limit or
// the half-close linger ends the direction, otherwise (bytes moved the other
// way meanwhile) the deadline is renewed and the direction reads on.
func (r *relay) readTimedOut(src net.Conn) error {
	if err := r.expired(); err != nil {
		return err
	}
	src.SetReadDeadline(r.readDeadline())
	return nil
}

// writeTimedOut is the error that ends a direction whose write deadline
// fired: the half-close linger, or else the peer stopped reading for a whole
// idle period.
func (r *relay) writeTimedOut() error {
	if err := r.expired(); err != nil {
		return err
	}
	return errIdle
}

// finished is called when the direction reading src (and writing to other)
// has ended. A clean end (EOF) starts the half-close linger on the other
// direction, which reads other and writes src: both its reads and its writes
// are bounded by the linger. An error ends the other direction at once.
func (r *relay) finished(src, other net.Conn, err error) {
	if err == nil {
		if r.opts.HalfCloseTimeout > 0 {
			r.lingerUntil.CompareAndSwap(0, time.Now().Add(r.opts.HalfCloseTimeout).UnixNano())
		}
		other.SetReadDeadline(r.readDeadline())
		src.SetWriteDeadline(r.writeDeadline())
		return
	}
	r.cause.CompareAndSwap(nil, &failure{err})
	src.Close()
	other.Close()
}

// closeWrite propagates a clean end of one direction to dst (a FIN), unless
// the other direction has already finished: then the relay closes both
// connections at once, which sends the FIN anyway.
func (r *relay) closeWrite(dst net.Conn) {
	if r.left.Load() == 1 {
		return
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}

// copyConn is copy for connections without a file descriptor: a pooled
// buffer, held while a read waits.
func (r *relay) copyConn(dst, src net.Conn) (n int64, err error) {
	bp := bufpool.Get()
	defer bufpool.Put(bp)
	src.SetReadDeadline(r.readDeadline())
	for {
		nr, rerr := src.Read(*bp)
		if nr > 0 {
			nw, werr := r.write(dst, (*bp)[:nr])
			n += int64(nw)
			if werr != nil {
				return n, werr
			}
		}
		switch {
		case rerr == nil:
		case rerr == io.EOF:
			r.closeWrite(dst)
			return n, nil
		case errors.Is(rerr, os.ErrDeadlineExceeded):
			if err := r.readTimedOut(src); err != nil {
				return n, err
			}
		default:
			return n, rerr
		}
	}
}

// write writes p to dst within the write deadline. A write that times out
// ends the direction: the peer stopped reading for a whole idle period, or
// the half-close linger expired.
func (r *relay) write(dst net.Conn, p []byte) (int, error) {
	r.touch()
	dst.SetWriteDeadline(r.writeDeadline())
	n, err := dst.Write(p)
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		return n, r.writeTimedOut()
	}
	return n, err
}

// bare returns the *net.TCPConn behind a connection that adds nothing to
// its byte path (proxyheader.Conn: only its RemoteAddr differs), so that
// the relay copies, and splices, on the socket itself.
func bare(c net.Conn) net.Conn {
	if b, ok := c.(interface{ BareTCP() *net.TCPConn }); ok {
		return b.BareTCP()
	}
	return c
}
