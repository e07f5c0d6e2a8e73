package tlsbypass

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"
)

var (
	// ErrNotTLS reports a tunnel whose first bytes are not a TLS handshake
	// record, or whose ClientHello is malformed, truncated or too large.
	ErrNotTLS = errors.New("tunnel does not carry tls")
	// ErrPeekTimeout reports a client that sent no complete ClientHello
	// within the peek timeout.
	ErrPeekTimeout = errors.New("client sent no client hello in time")
)

// Hello is what the peek learned.
type Hello struct {
	ServerName string   // SNI as sent ("" if none)
	Protocols  []string // ALPN
	Versions   []uint16 // supported_versions
}

const (
	defaultPeekMax = 64 << 10
	tlsHeaderLen   = 5
	tlsHandshake   = 22 // record content type "handshake"
	tlsMajor       = 3  // SSL 3.0 / TLS 1.x record major version
)

var (
	errHelloSeen   = errors.New("tlsbypass: client hello captured")
	errHelloTooBig = errors.New("tlsbypass: client hello exceeds peek limit")
	errPeekForeign = errors.New("tlsbypass: peek config used on a foreign conn")
)

// peekConfig is shared by every peek: the callback finds its peek through
// ClientHelloInfo.Conn, so no per-call closure or Config is needed.
var peekConfig = &tls.Config{GetConfigForClient: func(chi *tls.ClientHelloInfo) (*tls.Config, error) {
	h, ok := chi.Conn.(*helloConn)
	if !ok {
		return nil, errPeekForeign
	}
	h.hello = Hello{ServerName: chi.ServerName, Protocols: chi.SupportedProtos, Versions: chi.SupportedVersions}
	h.seen = true
	return nil, errHelloSeen
}}

// PeekClientHello reads the client's ClientHello (pending first, then client)
// within timeout and returns it together with every byte read (pending
// included), which the caller must send upstream before relaying. The returned
// bytes are exactly the bytes consumed, in order; they are returned on error
// too. client's read deadline is reset to zero before returning. A timeout
// <= 0 sets no deadline.
//
// The first two bytes must announce a TLS handshake record (22, 3); anything
// else fails with ErrNotTLS as soon as the offending byte arrives. The
// ClientHello itself is parsed by crypto/tls. Errors wrap ErrNotTLS,
// ErrPeekTimeout, io.EOF (client closed before sending anything) or the
// client's read error. maxBytes bounds how much is read (64 KiB if <= 0);
// exceeding it is ErrNotTLS.
func PeekClientHello(client net.Conn, pending []byte, timeout time.Duration, maxBytes int) (Hello, []byte, error) {
	if maxBytes <= 0 {
		maxBytes = defaultPeekMax
	}
	if timeout > 0 {
		if err := client.SetReadDeadline(time.Now().Add(timeout)); err != nil {
			return Hello{}, nil, err
		}
	}
	defer client.SetReadDeadline(time.Time{})

	size := len(pending)
	if size < tlsHeaderLen {
		size = 2 << 10
	}
	h := &helloConn{client: client, max: maxBytes, buf: append(make([]byte, 0, size), pending...)}
	if err := h.readHeader(); err != nil {
		return Hello{}, h.buf, h.fail(err, timeout)
	}
	err := tls.Server(h, peekConfig).Handshake()
	if h.seen {
		return h.hello, h.buf, nil
	}
	return Hello{}, h.buf, h.fail(err, timeout)
}

// helloConn feeds tls.Server: recorded bytes first, then the client, recording
// every byte read. Writes are discarded so the aborted handshake's alert never
// reaches the client.
type helloConn struct {
	client net.Conn
	buf    []byte // every byte consumed, pending first
	off    int    // bytes of buf already handed to tls
	max    int
	err    error // client's read error
	tooBig bool
	seen   bool
	hello  Hello
}

// readHeader makes buf hold at least the 5-byte record header, rejecting a
// non-handshake record as soon as its first bytes show. Each read takes
// what the socket has, up to buf's capacity: a ClientHello usually arrives
// whole in one segment, and reading it with one read(2) instead of a 5-byte
// header read and then the rest saves a system call per tunnel.
func (h *helloConn) readHeader() error {
	for {
		if len(h.buf) > 0 && h.buf[0] != tlsHandshake {
			return fmt.Errorf("%w: first byte %#02x is not a handshake record", ErrNotTLS, h.buf[0])
		}
		if len(h.buf) > 1 && h.buf[1] != tlsMajor {
			return fmt.Errorf("%w: record version major %#02x", ErrNotTLS, h.buf[1])
		}
		if len(h.buf) >= tlsHeaderLen {
			return nil
		}
		have := len(h.buf)
		if have >= min(tlsHeaderLen, h.max) {
			h.tooBig = true
			return errHelloTooBig
		}
		want := min(max(cap(h.buf), tlsHeaderLen), h.max)
		h.buf = h.buf[:want]
		n, err := h.client.Read(h.buf[have:want])
		h.buf = h.buf[:have+n]
		if err != nil {
			h.err = err
			return err
		}
	}
}

// fail classifies why no ClientHello was captured.
func (h *helloConn) fail(err error, timeout time.Duration) error {
	if errors.Is(err, ErrNotTLS) {
		return err
	}
	if h.tooBig {
		return fmt.Errorf("%w: no client hello within %d bytes", ErrNotTLS, h.max)
	}
	if cerr := h.err; cerr != nil {
		var ne net.Error
		switch {
		case errors.Is(cerr, os.ErrDeadlineExceeded) || errors.As(cerr, &ne) && ne.Timeout():
			return fmt.Errorf("%w (%v, %d bytes read): %w", ErrPeekTimeout, timeout, len(h.buf), cerr)
		case errors.Is(cerr, io.EOF) && len(h.buf) == 0:
			return fmt.Errorf("tlsbypass: client closed before sending anything: %w", cerr)
		case errors.Is(cerr, io.EOF):
			return fmt.Errorf("%w: client closed after %d bytes: %w", ErrNotTLS, len(h.buf), io.ErrUnexpectedEOF)
		}
		return fmt.Errorf("tlsbypass: reading client hello: %w", cerr)
	}
	return fmt.Errorf("%w: %w", ErrNotTLS, err)
}

func (h *helloConn) Read(p []byte) (int, error) {
	if h.seen {
		// The hello is captured; tls.Server has no reason to read on.
		return 0, errHelloSeen
	}
	if h.off < len(h.buf) {
		n := copy(p, h.buf[h.off:])
		h.off += n
		return n, nil
	}
	if h.err != nil {
		return 0, h.err
	}
	room := h.max - len(h.buf)
	if room <= 0 {
		h.tooBig = true
		return 0, errHelloTooBig
	}
	if len(p) > room {
		p = p[:room]
	}
	n, err := h.client.Read(p)
	h.buf = append(h.buf, p[:n]...)
	h.off = len(h.buf)
	if err != nil {
		h.err = err
	}
	return n, err
}

func (h *helloConn) Write(p []byte) (int, error)        { return len(p), nil }
func (h *helloConn) Close() error                       { return nil }
func (h *helloConn) LocalAddr() net.Addr                { return h.client.LocalAddr() }
func (h *helloConn) RemoteAddr() net.Addr               { return h.client.RemoteAddr() }
func (h *helloConn) SetDeadline(t time.Time) error      { return h.client.SetReadDeadline(t) }
func (h *helloConn) SetReadDeadline(t time.Time) error  { return h.client.SetReadDeadline(t) }
func (h *helloConn) SetWriteDeadline(t time.Time) error { return nil }
