package tlsbypass

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// FuzzPeekClientHello runs the ClientHello peek over arbitrary pending bytes
// (what the HTTP server had buffered behind the CONNECT) and arbitrary bytes
// from a client that then closes. The peek must not panic, must return within
// its timeout (plus slack), must record exactly a prefix of what it was given
// (never more, never reordered), must respect maxBytes, and must fail only
// with the documented errors.
func FuzzPeekClientHello(f *testing.F) {
	hello := peekCaptureHello(f, &tls.Config{ServerName: "winatp-gw-weu.microsoft.com"})
	for _, s := range []struct {
		pending, sent []byte
		maxBytes      uint16
	}{
		{nil, hello, 0},
		{hello, nil, 0},
		{hello[:3], hello[3:], 0},
		{hello[:7], hello[7:], 0},
		{nil, hello[:len(hello)-1], 0},
		{nil, hello, 100},
		{nil, peekReframe(hello, 100), 0},
		{peekReframe(hello, 1)[:40], peekReframe(hello, 1)[40:], 0},
		{[]byte("GET / HTTP/1.1\r\n"), nil, 0},
		{nil, []byte("SSH-2.0-OpenSSH_9.2\r\n"), 0},
		{nil, []byte{0x16, 0x03, 0x01, 0xff, 0xff}, 0},
		{nil, []byte{0x16, 0x03, 0x01, 0x00, 0x00}, 0},
	} {
		f.Add(s.pending, s.sent, s.maxBytes)
	}
	const timeout = time.Second
	f.Fuzz(func(t *testing.T, pending, sent []byte, maxBytes uint16) {
		gw, peer := net.Pipe()
		wrote := make(chan struct{})
		go func() {
			defer close(wrote)
			peer.Write(sent) // blocks until read or gw closes
			peer.Close()
		}()
		type result struct {
			hello Hello
			seen  []byte
			err   error
		}
		done := make(chan result, 1)
		pend := append([]byte(nil), pending...)
		go func() {
			h, seen, err := PeekClientHello(gw, pend, timeout, int(maxBytes))
			done <- result{h, seen, err}
		}()
		var r result
		select {
		case r = <-done:
		case <-time.After(timeout + 3*time.Second):
			gw.Close()
			<-done
			<-wrote
			t.Fatalf("PeekClientHello did not return within %v", timeout+3*time.Second)
		}
		gw.Close()
		<-wrote

		given := append(append([]byte(nil), pending...), sent...)
		if len(r.seen) > len(given) {
			t.Fatalf("recorded %d bytes, given %d", len(r.seen), len(given))
		}
		if !bytes.Equal(r.seen, given[:len(r.seen)]) {
			t.Fatalf("recorded bytes are not a prefix of the given bytes")
		}
		if !bytes.Equal(pend, pending) {
			t.Fatalf("pending modified in place")
		}
		limit := int(maxBytes)
		if limit <= 0 {
			limit = defaultPeekMax
		}
		if len(r.seen) > len(pending) && len(r.seen) > limit {
			t.Fatalf("read %d bytes with maxBytes %d and %d pending", len(r.seen), limit, len(pending))
		}
		if r.err == nil {
			if len(r.seen) < tlsHeaderLen || r.seen[0] != tlsHandshake || r.seen[1] != tlsMajor {
				t.Fatalf("success on bytes that are not a handshake record: % x", r.seen[:min(len(r.seen), 8)])
			}
			return
		}
		if r.hello.ServerName != "" {
			t.Fatalf("error %v with a server name %q", r.err, r.hello.ServerName)
		}
		switch {
		case errors.Is(r.err, ErrNotTLS), errors.Is(r.err, io.EOF), errors.Is(r.err, io.ErrClosedPipe):
		case errors.Is(r.err, ErrPeekTimeout), errors.Is(r.err, os.ErrDeadlineExceeded):
			// The client closed at once: running out of time means the
			// peek waited for bytes that could never come.
			t.Fatalf("timed out although the client had closed: %v", r.err)
		default:
			t.Fatalf("undocumented error: %v", r.err)
		}
	})
}
