// Package proxyheader reads the PROXY protocol header (versions 1 and 2,
// https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt) that a load
// balancer puts in front of a connection, so that the gateway sees the
// client's address instead of the load balancer's. Headers are parsed by
// github.com/pires/go-proxyproto; this package decides whose headers count
// (GATEWAY_PROXY_PROTOCOL_FROM), reads exactly the header's bytes and no
// more, and does it off the accept loop.
//
// A connection whose header was read is handed on as the *net.TCPConn it
// is, with only its RemoteAddr replaced (Conn): nothing of this package sits
// in the byte path, and the tunnel relay copies (and splices) on the
// TCPConn itself (Conn.BareTCP).
package proxyheader

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
	"golang.org/x/sys/unix"
)

// Mode is GATEWAY_PROXY_PROTOCOL.
type Mode uint8

const (
	// Off: no header is read; one sent is data (and fails as such).
	Off Mode = iota
	// Optional: a peer in From may send a header; without one, its own
	// address stands. Others are served as themselves, and a header they
	// send is data.
	Optional
	// Required: every connection must come from From and open with a
	// header; any other is closed unanswered.
	Required
)

func (m Mode) String() string {
	switch m {
	case Optional:
		return "optional"
	case Required:
		return "required"
	}
	return "off"
}

// ParseMode parses off, optional or required.
func ParseMode(s string) (Mode, error) {
	for _, m := range []Mode{Off, Optional, Required} {
		if s == m.String() {
			return m, nil
		}
	}
	return Off, fmt.Errorf("%q is not off, optional or required", s)
}

// Errors of a refused connection, for OnReject.
var (
	// ErrUntrusted: a connection from outside From where a header is
	// required.
	ErrUntrusted = errors.New("proxy protocol: peer is not a trusted load balancer")
	// ErrNoHeader: a trusted peer sent no header where one is required.
	ErrNoHeader = errors.New("proxy protocol: no header")
	// ErrBadHeader: the header is malformed, or did not arrive in time.
	ErrBadHeader = errors.New("proxy protocol: bad header")
)

// Options configure Listen.
type Options struct {
	Mode Mode
	// From lists the load balancers whose headers are believed.
	From []netip.Prefix
	// Timeout bounds the wait for a header; zero means 10s.
	Timeout time.Duration
	// MaxPending bounds connections waiting for their header; past it new
	// ones from trusted peers are closed. Zero means 1024.
	MaxPending int
	// OnReject, if non-nil, is called with every connection closed for its
	// header (ErrUntrusted, ErrNoHeader, ErrBadHeader) and the peer's
	// address; if nil, nothing is called.
	OnReject func(err error, peer netip.AddrPort)
}

// Listen returns ln reading PROXY headers as o says; with Mode Off it is
// ln itself.
func Listen(ln net.Listener, o Options) net.Listener {
	if o.Mode == Off {
		return ln
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
	if o.MaxPending <= 0 {
		o.MaxPending = 1024
	}
	l := &listener{Listener: ln, o: o, ready: make(chan net.Conn), done: make(chan struct{}),
		pending: make(chan struct{}, o.MaxPending)}
	go l.acceptLoop()
	return l
}

type listener struct {
	net.Listener
	o       Options
	ready   chan net.Conn
	done    chan struct{}
	pending chan struct{} // a token per connection waiting for its header
	err     error         // the accept error that ended acceptLoop, after done
}

func (l *listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ready:
		return c, nil
	case <-l.done:
		return nil, l.err
	}
}

// acceptLoop accepts and hands each connection to its own header read, so
// that a slow header never holds up the next accept.
func (l *listener) acceptLoop() {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			l.err = err
			close(l.done)
			return
		}
		select {
		case l.pending <- struct{}{}:
			go l.serve(c)
		default:
			c.Close() // too many waiting: a flood gets no goroutines
			l.reject(ErrBadHeader, c)
		}
	}
}

func (l *listener) serve(c net.Conn) {
	out, err := l.read(c)
	<-l.pending
	if err != nil {
		c.Close()
		l.reject(err, c)
		return
	}
	select {
	case l.ready <- out:
	case <-l.done:
		out.Close()
	}
}

func (l *listener) reject(err error, c net.Conn) {
	if l.o.OnReject != nil {
		peer, _ := netip.ParseAddrPort(c.RemoteAddr().String())
		l.o.OnReject(err, peer)
	}
}

func (l *listener) trusted(c net.Conn) bool {
	peer, err := netip.ParseAddrPort(c.RemoteAddr().String())
	if err != nil {
		return false
	}
	a := peer.Addr().Unmap()
	return slices.ContainsFunc(l.o.From, func(p netip.Prefix) bool { return p.Contains(a) })
}

// The signatures that open a header (proxy-protocol.txt §2.1, §2.2).
var (
	sigV1 = []byte("PROXY ")
	sigV2 = []byte("\r\n\r\n\x00\r\nQUIT\n")
)

const (
	maxV1 = 107            // §2.1: the longest v1 header, CRLF included
	peek  = 16 + 216 + 108 // a v2 header with room for common TLVs, or a v1 header
)

// read reads c's header, if it has one and it counts, and returns the
// connection to serve.
func (l *listener) read(c net.Conn) (net.Conn, error) {
	if !l.trusted(c) {
		if l.o.Mode == Required {
			return nil, ErrUntrusted
		}
		return c, nil // served as itself; a header it sends is data
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil, fmt.Errorf("%w: %T is not TCP", ErrBadHeader, c)
	}
	deadline := time.Now().Add(l.o.Timeout)
	tc.SetReadDeadline(deadline)
	defer tc.SetReadDeadline(time.Time{})
	// Look before consuming: a load balancer sends the header in the
	// connection's first segment, so one peek (MSG_PEEK) usually holds it
	// whole and exactly its bytes are then read; a client's own bytes are
	// never taken.
	buf := make([]byte, peek)
	n, err := peekConn(tc, buf)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadHeader, err)
	}
	buf = buf[:n]
	size, err := headerSize(tc, buf, deadline)
	switch {
	case errors.Is(err, errNoHeader):
		if l.o.Mode == Required {
			return nil, ErrNoHeader
		}
		return c, nil
	case err != nil:
		return nil, fmt.Errorf("%w: %w", ErrBadHeader, err)
	}
	hdr := make([]byte, size)
	if _, err := io.ReadFull(tc, hdr); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadHeader, err)
	}
	h, err := proxyproto.Read(bufio.NewReaderSize(bytes.NewReader(hdr), max(size, 16)))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadHeader, err)
	}
	src, ok := h.SourceAddr.(*net.TCPAddr)
	if h.Command.IsLocal() || !ok || !h.TransportProtocol.IsStream() {
		// LOCAL (a health check of the balancer's own) or UNKNOWN: the
		// connection's own endpoints stand (§2.1, §2.2).
		return c, nil
	}
	return &Conn{TCPConn: tc, remote: src}, nil
}

// errNoHeader: the first bytes are not a header's.
var errNoHeader = errors.New("no proxy protocol header")

// headerSize returns the length of the header that starts buf (the bytes
// peeked), reading more with MSG_PEEK's help where it must.
func headerSize(tc *net.TCPConn, buf []byte, deadline time.Time) (int, error) {
	switch {
	case bytes.HasPrefix(buf, sigV2) && len(buf) >= 16:
		return 16 + int(buf[14])<<8 | int(buf[15]), nil
	case bytes.HasPrefix(buf, sigV1):
		if i := bytes.Index(buf, []byte("\r\n")); i >= 0 && i+2 <= maxV1 {
			return i + 2, nil
		}
		if len(buf) >= maxV1 {
			return 0, errors.New("v1 header without CRLF in 107 bytes")
		}
	case bytes.HasPrefix(sigV2, buf[:min(len(buf), len(sigV2))]) && len(buf) < 16,
		bytes.HasPrefix(sigV1, buf[:min(len(buf), len(sigV1))]):
		// A header's first bytes, split across segments.
	default:
		return 0, errNoHeader
	}
	// The rest is still on its way (rare: balancers send the header in one
	// segment). The socket stays readable, so readiness cannot say when
	// more arrives: look again a little later, until the read deadline.
	for wait := time.Millisecond; ; wait = min(2*wait, 50*time.Millisecond) {
		time.Sleep(wait)
		more := make([]byte, peek)
		n, err := peekConn(tc, more)
		if err != nil {
			return 0, err
		}
		if n > len(buf) {
			return headerSize(tc, more[:n], deadline)
		}
		if time.Now().After(deadline) {
			return 0, errors.New("header incomplete at the deadline")
		}
	}
}

// peekConn waits for tc to be readable and copies what it holds into buf
// without consuming it (recv(2) MSG_PEEK), within tc's read deadline.
func peekConn(tc *net.TCPConn, buf []byte) (int, error) {
	rc, err := tc.SyscallConn()
	if err != nil {
		return 0, err
	}
	var n int
	var perr error
	err = rc.Read(func(fd uintptr) bool {
		n, _, perr = unix.Recvfrom(int(fd), buf, unix.MSG_PEEK)
		return perr != unix.EAGAIN
	})
	if err != nil {
		return 0, err
	}
	if perr != nil {
		return 0, perr
	}
	if n == 0 {
		return 0, io.EOF
	}
	return n, nil
}

// Conn is a client connection whose address came from a PROXY header: the
// TCPConn itself, with RemoteAddr the client's.
type Conn struct {
	*net.TCPConn
	remote net.Addr
}

// RemoteAddr is the client's address, as the header gave it.
func (c *Conn) RemoteAddr() net.Addr { return c.remote }

// BareTCP returns the TCPConn, for copies that work on it directly (the
// tunnel relay's splice): nothing of Conn's is in the byte path.
func (c *Conn) BareTCP() *net.TCPConn { return c.TCPConn }

// UnmarshalText parses the setting's word (case-insensitive).
func (m *Mode) UnmarshalText(b []byte) error {
	p, err := ParseMode(strings.ToLower(strings.TrimSpace(string(b))))
	if err != nil {
		return err
	}
	*m = p
	return nil
}
