package tlsbypass

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/defendergw/gateway/internal/bufpool"
)

// The handshake guard checks what a verified tunnel's client sends after its
// first ClientHello and before its handshake is encrypted. TLS 1.3 lets the
// client send a second ClientHello in the clear after a HelloRetryRequest
// (RFC 8446 §4.1.4), often after a ChangeCipherSpec for middlebox
// compatibility (§D.4). A client could name another host in it: domain
// fronting against any destination that does not enforce §4.1.2 ("the
// client MUST send the same ClientHello without modification, except ...").
// So every plaintext ClientHello must pass the same check as the first. Only
// the first records of a tunnel are plaintext; the guard then steps aside
// and the relay copies as usual, so the bulk path costs nothing.

// Record content types (RFC 8446 §5.1).
const (
	recordChangeCipherSpec = 20
	recordAlert            = 21
	recordHandshake        = 22
	recordApplicationData  = 23
)

const (
	// maxRecord is the largest TLSCiphertext fragment: 2^14 + 2048
	// (RFC 5246 §6.2.3; TLS 1.3 allows less, §5.2).
	maxRecord = 1<<14 + 2048
	// guardMax bounds the plaintext handshake a client may send before
	// encrypting; a certificate chain for client authentication (TLS 1.2)
	// fits comfortably.
	guardMax = 256 << 10
	// handshakeServerHello is the ServerHello's handshake type; a
	// HelloRetryRequest is a ServerHello with a fixed random.
	handshakeClientHello = 1
	handshakeServerHello = 2
)

// helloRetryRandom is the ServerHello.random of a HelloRetryRequest: the
// SHA-256 of "HelloRetryRequest" (RFC 8446 §4.1.3).
var helloRetryRandom = []byte{
	0xCF, 0x21, 0xAD, 0x74, 0xE5, 0x9A, 0x61, 0x11, 0xBE, 0x1D, 0x8C, 0x02, 0x1E, 0x65, 0xB8, 0x91,
	0xC2, 0xA2, 0x11, 0x16, 0x7A, 0xBB, 0x8C, 0x5E, 0x07, 0x9E, 0x09, 0xE2, 0xC8, 0xA8, 0x33, 0x9C,
}

// errRetryRefused marks a tunnel the guard ended: a later ClientHello failed
// the check, or the client's handshake records were not TLS.
var errRetryRefused = errors.New("tlsbypass: handshake guard refused the tunnel")

// readAvailableConn is readAvailable for connections without a file
// descriptor: one Read into a pooled buffer, held while it waits.
func (r *relay) readAvailableConn(src net.Conn) (*[]byte, int, error) {
	bp := bufpool.Get()
	for {
		src.SetReadDeadline(r.readDeadline())
		n, err := src.Read(*bp)
		switch {
		case n > 0:
			return bp, n, nil
		case err == io.EOF:
			bufpool.Put(bp)
			return nil, 0, nil
		case err != nil && errors.Is(err, os.ErrDeadlineExceeded):
			if e := r.expired(); e != nil {
				bufpool.Put(bp)
				return nil, 0, e
			}
		case err != nil:
			bufpool.Put(bp)
			return nil, 0, err
		}
	}
}

// recordReader yields whole TLS records from one direction of a guarded
// tunnel. Each read takes what the socket has (a handshake flight is
// usually several records in one segment), so a flight costs one read(2),
// not two per record; records come out of that buffer in place. Only a
// record split across reads is copied, into carry.
type recordReader struct {
	r     *relay
	src   net.Conn
	buf   []byte  // bytes read and not yet consumed
	bp    *[]byte // the pooled buffer buf lies in; nil if buf is carry or ahead
	carry []byte  // a partial record, kept across a read
}

// release returns the pooled buffer; buf must not be used after it.
func (rr *recordReader) release() {
	if rr.bp != nil {
		bufpool.Put(rr.bp)
		rr.bp = nil
	}
	rr.buf = nil
}

// record returns the next whole record of buf, valid until the next fill;
// ok is false when buf holds no whole record.
func (rr *recordReader) record() (rec []byte, ok bool, err error) {
	if len(rr.buf) < tlsHeaderLen {
		return nil, false, nil
	}
	hdr := rr.buf[:tlsHeaderLen]
	typ, n := hdr[0], int(hdr[3])<<8|int(hdr[4])
	if typ < recordChangeCipherSpec || typ > recordApplicationData || hdr[1] != tlsMajor || n > maxRecord {
		return nil, false, fmt.Errorf("%w: %w: record header % x", errRetryRefused, ErrNotTLS, hdr)
	}
	if len(rr.buf) < tlsHeaderLen+n {
		return nil, false, nil
	}
	rec, rr.buf = rr.buf[:tlsHeaderLen+n], rr.buf[tlsHeaderLen+n:]
	return rec, true, nil
}

// fill reads more: what is left of buf (part of a record) is kept in carry
// and the new bytes join it. It returns io.EOF at a clean end between
// records, io.ErrUnexpectedEOF inside one.
func (rr *recordReader) fill() error {
	partial := len(rr.buf) > 0
	if partial {
		rr.carry = append(rr.carry[:0], rr.buf...)
	}
	rr.release()
	bp, n, err := rr.r.readAvailable(rr.src)
	switch {
	case err != nil:
		return err
	case n == 0 && partial:
		return io.ErrUnexpectedEOF
	case n == 0:
		return io.EOF
	case partial:
		rr.carry = append(rr.carry, (*bp)[:n]...)
		bufpool.Put(bp)
		rr.buf = rr.carry
	default:
		rr.bp, rr.buf = bp, (*bp)[:n]
	}
	return nil
}

// guardClient relays the client's records to upstream until its handshake is
// encrypted, checking every ClientHello on the way with check. It returns
// the bytes relayed, and an error that ends the tunnel (wrapping
// errRetryRefused when the guard refused it), or io.EOF when the client
// finished cleanly. What one read brought is forwarded with one write.
func (r *relay) guardClient(dst, src net.Conn, check func(Hello) error) (int64, error) {
	g := clientGuard{r: r, dst: dst, check: check}
	rr := recordReader{r: r, src: src, buf: r.ahead}
	r.ahead = nil // bytes behind the first ClientHello come first
	defer rr.release()
	for {
		rec, ok, err := rr.record()
		if err != nil {
			return g.relayed, err
		}
		if !ok {
			if err := g.flush(); err != nil {
				return g.relayed, err
			}
			if err := rr.fill(); err != nil {
				return g.relayed, err
			}
			continue
		}
		done, err := g.record(rec)
		if err != nil {
			return g.relayed, err
		}
		if done {
			// The rest of this read is past the handshake: encrypted
			// records, relayed as they are.
			g.out = append(g.out, rr.buf...)
			return g.relayed, g.flush()
		}
	}
}

// clientGuard is guardClient's state across records.
type clientGuard struct {
	r        *relay
	dst      net.Conn
	check    func(Hello) error
	relayed  int64
	messages []byte   // handshake bytes not yet a whole message
	held     [][]byte // records of a ClientHello not yet whole: forwarded once it is checked
	afterCCS bool     // a ChangeCipherSpec without a HelloRetryRequest: encryption follows
	out      []byte   // checked records not yet written upstream
}

// forward queues the held records, then rec, for upstream.
func (g *clientGuard) forward(rec []byte) error {
	for _, h := range g.held {
		g.out = append(g.out, h...)
	}
	g.held = nil
	g.out = append(g.out, rec...)
	return nil
}

// flush writes the queued records upstream, in one write.
func (g *clientGuard) flush() error {
	if len(g.out) == 0 {
		return nil
	}
	n, err := g.r.write(g.dst, g.out)
	g.relayed += int64(n)
	g.out = g.out[:0]
	return err
}

// record handles one client record; done reports that the handshake is
// encrypted from here on.
func (g *clientGuard) record(rec []byte) (done bool, err error) {
	if g.relayed+int64(len(g.out)+len(rec)) > guardMax {
		return false, fmt.Errorf("%w: %w: over %d bytes of handshake before encryption", errRetryRefused, ErrNotTLS, guardMax)
	}
	fragment := rec[tlsHeaderLen:]
	switch rec[0] {
	case recordApplicationData:
		return true, g.forward(rec) // encrypted from here on
	case recordChangeCipherSpec:
		// After a HelloRetryRequest the retried ClientHello comes next, in
		// the clear; otherwise what follows is encrypted.
		g.afterCCS = g.afterCCS || !g.r.hrr.Load()
		return false, g.forward(rec)
	case recordAlert:
		return false, g.forward(rec)
	}
	if g.afterCCS {
		// TLS 1.2's Finished: encrypted, so it cannot be parsed, unless it
		// is one whole plaintext ClientHello, which is checked.
		if wholeClientHello(fragment) {
			if err := checkHelloMessage(fragment, g.check); err != nil {
				return false, err
			}
		}
		return true, g.forward(rec)
	}
	g.messages = append(g.messages, fragment...)
	for len(g.messages) >= 4 {
		n := int(g.messages[1])<<16 | int(g.messages[2])<<8 | int(g.messages[3])
		if n > defaultPeekMax {
			return false, fmt.Errorf("%w: %w: handshake message of %d bytes", errRetryRefused, ErrNotTLS, n)
		}
		if len(g.messages) < 4+n {
			break // the rest comes in the next records
		}
		if g.messages[0] == handshakeClientHello {
			if err := checkHelloMessage(g.messages[:4+n], g.check); err != nil {
				return false, err
			}
		}
		g.messages = g.messages[4+n:]
	}
	if len(g.messages) > 0 && g.messages[0] == handshakeClientHello {
		// Part of a ClientHello: nothing of it reaches upstream before all
		// of it has been checked. The buffer is reused, so keep a copy.
		g.held = append(g.held, append([]byte(nil), rec...))
		return false, nil
	}
	return false, g.forward(rec)
}

// wholeClientHello reports a fragment that is exactly one ClientHello
// message: an encrypted fragment matches by chance with probability 2^-32.
func wholeClientHello(f []byte) bool {
	return len(f) >= 4 && f[0] == handshakeClientHello && int(f[1])<<16|int(f[2])<<8|int(f[3]) == len(f)-4
}

// checkHelloMessage parses a whole ClientHello handshake message with
// crypto/tls (as PeekClientHello does) and checks it.
func checkHelloMessage(msg []byte, check func(Hello) error) error {
	var recs []byte
	for rest := msg; len(rest) > 0; {
		n := min(len(rest), 1<<14)
		recs = append(recs, recordHandshake, tlsMajor, 1, byte(n>>8), byte(n))
		recs = append(recs, rest[:n]...)
		rest = rest[n:]
	}
	hello, _, err := PeekClientHello(noConn{}, recs, 0, len(recs))
	if err != nil {
		return fmt.Errorf("%w: retried client hello: %w", errRetryRefused, err)
	}
	if err := check(hello); err != nil {
		return fmt.Errorf("%w: retried client hello: %w", errRetryRefused, err)
	}
	return nil
}

// guardServer relays the upstream's first record to the client, noting
// whether it is a HelloRetryRequest, after which the client may send a
// second ClientHello in the clear. Bytes that are no TLS record go through
// as they are: the client's own TLS stack refuses them. Whatever came with
// the first record (the rest of the server's flight) goes in the same
// write.
func (r *relay) guardServer(dst, src net.Conn) (int64, error) {
	rr := recordReader{r: r, src: src}
	defer rr.release()
	for {
		if len(rr.buf) >= tlsHeaderLen {
			hdr := rr.buf[:tlsHeaderLen]
			n := int(hdr[3])<<8 | int(hdr[4])
			if hdr[0] != recordHandshake || hdr[1] != tlsMajor || n > maxRecord {
				break // not a TLS handshake record: the client decides
			}
			if len(rr.buf) >= tlsHeaderLen+n {
				if f := rr.buf[tlsHeaderLen : tlsHeaderLen+n]; len(f) >= 4+2+32 && f[0] == handshakeServerHello && bytes.Equal(f[6:38], helloRetryRandom) {
					r.hrr.Store(true) // before the client can see it
				}
				break
			}
		}
		if err := rr.fill(); err != nil {
			return 0, err // io.EOF before anything, or a cut record
		}
	}
	w, err := r.write(dst, rr.buf)
	return int64(w), err
}

// noConn is the empty connection PeekClientHello reads a captured message
// from: every byte is pending, so a read past them is the end.
type noConn struct{}

func (noConn) Read([]byte) (int, error)         { return 0, io.EOF }
func (noConn) Write(p []byte) (int, error)      { return len(p), nil }
func (noConn) Close() error                     { return nil }
func (noConn) LocalAddr() net.Addr              { return nil }
func (noConn) RemoteAddr() net.Addr             { return nil }
func (noConn) SetDeadline(time.Time) error      { return nil }
func (noConn) SetReadDeadline(time.Time) error  { return nil }
func (noConn) SetWriteDeadline(time.Time) error { return nil }

// splitFirstHello returns how many bytes of pending (the peeked bytes,
// which start with the verified ClientHello) end the records that carry it.
// Bytes after that went through no check yet. A record that carries more
// than that first ClientHello is no TLS client's: refused.
func splitFirstHello(pending []byte) (int, error) {
	var messages []byte
	for off := 0; off+tlsHeaderLen <= len(pending); {
		n := int(pending[off+3])<<8 | int(pending[off+4])
		end := off + tlsHeaderLen + n
		if pending[off] != recordHandshake || end > len(pending) {
			break
		}
		messages = append(messages, pending[off+tlsHeaderLen:end]...)
		if len(messages) >= 4 {
			if l := 4 + (int(messages[1])<<16 | int(messages[2])<<8 | int(messages[3])); len(messages) >= l {
				if len(messages) > l {
					return 0, fmt.Errorf("%w: %w: %d bytes after the client hello in its record", errRetryRefused, ErrNotTLS, len(messages)-l)
				}
				return end, nil
			}
		}
		off = end
	}
	return len(pending), nil // PeekClientHello parsed it, so this is not reached
}
