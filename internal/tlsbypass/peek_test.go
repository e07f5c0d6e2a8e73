package tlsbypass

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	mrand "math/rand/v2"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/defendergw/gateway/internal/testutil"
)

// peekPair returns a connected loopback TCP pair: peer plays the tunnel's
// client, gw is the gateway's end handed to PeekClientHello.
func peekPair(tb testing.TB) (peer, gw *net.TCPConn) {
	tb.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		c   *net.TCPConn
		err error
	}
	ch := make(chan res, 1)
	go func() { c, err := ln.AcceptTCP(); ch <- res{c, err} }()
	peer, err = net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		tb.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		peer.Close()
		tb.Fatal(r.err)
	}
	tb.Cleanup(func() { peer.Close(); r.c.Close() })
	return peer, r.c
}

// peekCaptureHello returns the first TLS record a Go tls.Client sends with cfg:
// its complete ClientHello.
func peekCaptureHello(tb testing.TB, cfg *tls.Config) []byte {
	tb.Helper()
	c1, c2 := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = tls.Client(c1, cfg).Handshake()
		c1.Close()
	}()
	hdr := make([]byte, tlsHeaderLen)
	_, err := io.ReadFull(c2, hdr)
	var body []byte
	if err == nil {
		body = make([]byte, int(hdr[3])<<8|int(hdr[4]))
		_, err = io.ReadFull(c2, body)
	}
	c2.Close()
	<-done
	if err != nil {
		tb.Fatal(err)
	}
	if hdr[0] != tlsHandshake || body[0] != 1 {
		tb.Fatalf("captured record is not a ClientHello: % x", hdr)
	}
	return append(hdr, body...)
}

// peekReframe splits the handshake payload of records into records carrying at
// most size bytes each.
func peekReframe(records []byte, size int) []byte {
	var payload []byte
	vers := records[1:3]
	for len(records) >= tlsHeaderLen {
		n := int(records[3])<<8 | int(records[4])
		payload = append(payload, records[tlsHeaderLen:tlsHeaderLen+n]...)
		records = records[tlsHeaderLen+n:]
	}
	var out []byte
	for chunk := range slices.Chunk(payload, size) {
		out = append(out, tlsHandshake, vers[0], vers[1], byte(len(chunk)>>8), byte(len(chunk)))
		out = append(out, chunk...)
	}
	return out
}

type peekResult struct {
	hello Hello
	rec   []byte
	err   error
	took  time.Duration
}

func peekRun(gw net.Conn, pending []byte, timeout time.Duration, maxBytes int) peekResult {
	start := time.Now()
	h, rec, err := PeekClientHello(gw, pending, timeout, maxBytes)
	return peekResult{h, rec, err, time.Since(start)}
}

// peekSend writes p to c in the given way and returns the first write error.
func peekSend(c net.Conn, p []byte, how string) error {
	switch how {
	case "bytewise":
		for i := range p {
			if _, err := c.Write(p[i : i+1]); err != nil {
				return err
			}
			time.Sleep(100 * time.Microsecond)
		}
		return nil
	case "segments":
		for chunk := range slices.Chunk(p, 7) {
			if _, err := c.Write(chunk); err != nil {
				return err
			}
			time.Sleep(time.Millisecond)
		}
		return nil
	}
	_, err := c.Write(p)
	return err
}

func TestPeekClientHello(t *testing.T) {
	defaultHello := peekCaptureHello(t, &tls.Config{ServerName: "api.example.test"})
	if len(defaultHello) <= 1024 {
		t.Fatalf("default Go client hello is %d bytes, want > 1 KiB (post-quantum key share)", len(defaultHello))
	}
	tls13 := []uint16{tls.VersionTLS13, tls.VersionTLS12}
	tests := []struct {
		name    string
		cfg     *tls.Config
		hello   []byte // overrides cfg
		reframe int    // split the handshake into records of this size
		pending int    // leading bytes handed over as pending
		how     string // "", "bytewise", "segments"
		want    Hello
	}{
		{name: "sni", hello: defaultHello, want: Hello{ServerName: "api.example.test", Versions: tls13}},
		{name: "sni upper case as sent", cfg: &tls.Config{ServerName: "WinATP-GW-EUS.Microsoft.COM"},
			want: Hello{ServerName: "WinATP-GW-EUS.Microsoft.COM", Versions: tls13}},
		{name: "no sni", cfg: &tls.Config{InsecureSkipVerify: true},
			want: Hello{Versions: tls13}},
		{name: "alpn", cfg: &tls.Config{ServerName: "a.test", NextProtos: []string{"h2", "http/1.1"}},
			want: Hello{ServerName: "a.test", Protocols: []string{"h2", "http/1.1"}, Versions: tls13}},
		{name: "tls12 only", cfg: &tls.Config{ServerName: "old.test", MaxVersion: tls.VersionTLS12},
			want: Hello{ServerName: "old.test", Versions: []uint16{tls.VersionTLS12}}},
		{name: "pending 3 bytes", hello: defaultHello, pending: 3,
			want: Hello{ServerName: "api.example.test", Versions: tls13}},
		{name: "pending whole hello", hello: defaultHello, pending: len(defaultHello),
			want: Hello{ServerName: "api.example.test", Versions: tls13}},
		{name: "byte at a time", hello: defaultHello, how: "bytewise",
			want: Hello{ServerName: "api.example.test", Versions: tls13}},
		{name: "small segments", hello: defaultHello, how: "segments",
			want: Hello{ServerName: "api.example.test", Versions: tls13}},
		{name: "multi record", hello: defaultHello, reframe: 100,
			want: Hello{ServerName: "api.example.test", Versions: tls13}},
		{name: "multi record pending split", hello: defaultHello, reframe: 100, pending: 150, how: "segments",
			want: Hello{ServerName: "api.example.test", Versions: tls13}},
		{name: "one byte records", hello: defaultHello, reframe: 1,
			want: Hello{ServerName: "api.example.test", Versions: tls13}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			hello := tc.hello
			if hello == nil {
				hello = peekCaptureHello(t, tc.cfg)
			}
			if tc.reframe > 0 {
				hello = peekReframe(hello, tc.reframe)
			}
			peer, gw := peekPair(t)
			pending, wire := hello[:tc.pending], hello[tc.pending:]
			sendErr := make(chan error, 1)
			go func() { sendErr <- peekSend(peer, wire, tc.how) }()

			r := peekRun(gw, pending, 10*time.Second, 0)
			if err := <-sendErr; err != nil {
				t.Fatal(err)
			}
			if r.err != nil {
				t.Fatalf("PeekClientHello: %v", r.err)
			}
			if r.hello.ServerName != tc.want.ServerName ||
				!slices.Equal(r.hello.Protocols, tc.want.Protocols) ||
				!slices.Equal(r.hello.Versions, tc.want.Versions) {
				t.Errorf("hello = %+v, want %+v", r.hello, tc.want)
			}
			if !bytes.Equal(r.rec, hello) {
				t.Errorf("recorded %d bytes, client sent %d: recorded bytes differ from what the client sent", len(r.rec), len(hello))
			}
		})
	}
}

// The client sends more than the hello at once: everything read must be
// recorded, and recorded bytes plus what is left on the wire are the stream.
func TestPeekClientHelloExtraBytesRecorded(t *testing.T) {
	hello := peekCaptureHello(t, &tls.Config{ServerName: "x.test"})
	extra := bytes.Repeat([]byte("early"), 200)
	for _, tc := range []struct {
		name    string
		pending int
	}{{"all on wire", 0}, {"hello and extra pending", len(hello) + 10}} {
		t.Run(tc.name, func(t *testing.T) {
			stream := append(slices.Clip(hello), extra...)
			peer, gw := peekPair(t)
			if _, err := peer.Write(stream[tc.pending:]); err != nil {
				t.Fatal(err)
			}
			time.Sleep(20 * time.Millisecond) // let everything arrive together
			peer.CloseWrite()
			r := peekRun(gw, stream[:tc.pending], 5*time.Second, 0)
			if r.err != nil || r.hello.ServerName != "x.test" {
				t.Fatalf("hello %+v, err %v", r.hello, r.err)
			}
			if len(r.rec) < len(hello) {
				t.Fatalf("recorded %d bytes, shorter than the hello (%d)", len(r.rec), len(hello))
			}
			rest, err := io.ReadAll(gw)
			if err != nil {
				t.Fatal(err)
			}
			if got := append(r.rec, rest...); !bytes.Equal(got, stream) {
				t.Errorf("recorded (%d) + rest (%d) != stream (%d)", len(r.rec), len(rest), len(stream))
			}
		})
	}
}

func TestPeekClientHelloNotTLS(t *testing.T) {
	garbage := []byte{22, 3, 1, 0, 40}
	garbage = append(garbage, bytes.Repeat([]byte{0xee}, 40)...)
	notHello := []byte{22, 3, 3, 0, 8, 2, 0, 0, 4, 3, 3, 0, 0} // a ServerHello-typed message
	rnd := make([]byte, 300)
	for i := range rnd {
		rnd[i] = byte(mrand.N(256))
	}
	rnd[0] = 0x9c
	tests := []struct {
		name    string
		wire    []byte
		pending []byte
	}{
		{name: "http request", wire: []byte("GET / HTTP/1.1\r\nHost: example.test\r\n\r\n")},
		{name: "http first byte only", wire: []byte("G")},
		{name: "http pending", pending: []byte("CONNECT x:443 HTTP/1.1\r\n")},
		{name: "ssh banner", wire: []byte("SSH-2.0-OpenSSH_9.6\r\n")},
		{name: "random bytes", wire: rnd},
		{name: "application data record", wire: []byte{23, 3, 3, 0, 10}},
		{name: "handshake type bad major", wire: []byte{22, 2}},
		{name: "sslv2 hello", wire: []byte{0x80, 0x2e, 0x01, 0x00, 0x02}},
		{name: "handshake record garbage", wire: garbage},
		{name: "handshake record not a client hello", wire: notHello},
		{name: "oversized record", wire: []byte{22, 3, 1, 0xff, 0xff}},
	}
	const timeout = 5 * time.Second
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			peer, gw := peekPair(t)
			if len(tc.wire) > 0 {
				if _, err := peer.Write(tc.wire); err != nil {
					t.Fatal(err)
				}
			}
			// The peer stays open and silent: the answer must not wait for more.
			r := peekRun(gw, tc.pending, timeout, 0)
			if !errors.Is(r.err, ErrNotTLS) {
				t.Fatalf("err = %v, want ErrNotTLS", r.err)
			}
			if r.took > timeout/2 {
				t.Errorf("took %v: refused only after waiting for more bytes", r.took)
			}
			if want := append(slices.Clip(tc.pending), tc.wire...); !bytes.HasPrefix(want, r.rec) {
				t.Errorf("recorded % x, not a prefix of what was sent", r.rec)
			}
		})
	}
}

func TestPeekClientHelloTimeout(t *testing.T) {
	hello := peekCaptureHello(t, &tls.Config{ServerName: "slow.test"})
	const timeout = 200 * time.Millisecond
	for _, tc := range []struct {
		name string
		wire []byte
	}{
		{"silent", nil},
		{"partial header", hello[:3]},
		{"partial hello", hello[:len(hello)/2]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			peer, gw := peekPair(t)
			if len(tc.wire) > 0 {
				if _, err := peer.Write(tc.wire); err != nil {
					t.Fatal(err)
				}
			}
			r := peekRun(gw, nil, timeout, 0)
			if !errors.Is(r.err, ErrPeekTimeout) {
				t.Fatalf("err = %v, want ErrPeekTimeout", r.err)
			}
			if r.took < timeout || r.took > timeout+2*time.Second {
				t.Errorf("took %v, want about %v", r.took, timeout)
			}
			if !bytes.Equal(r.rec, tc.wire) {
				t.Errorf("recorded %d bytes, sent %d", len(r.rec), len(tc.wire))
			}
			// The read deadline must be cleared: a later read succeeds.
			if _, err := peer.Write([]byte("z")); err != nil {
				t.Fatal(err)
			}
			var b [1]byte
			if _, err := gw.Read(b[:]); err != nil || b[0] != 'z' {
				t.Errorf("read after peek: %q, %v (deadline not reset?)", b[:], err)
			}
		})
	}
}

func TestPeekClientHelloEOF(t *testing.T) {
	hello := peekCaptureHello(t, &tls.Config{ServerName: "eof.test"})
	for _, tc := range []struct {
		name    string
		pending []byte
		wire    []byte
		notTLS  bool
	}{
		{name: "nothing", notTLS: false},
		{name: "partial header", wire: hello[:4], notTLS: true},
		{name: "partial hello", wire: hello[:100], notTLS: true},
		{name: "partial pending only", pending: hello[:100], notTLS: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			peer, gw := peekPair(t)
			if len(tc.wire) > 0 {
				if _, err := peer.Write(tc.wire); err != nil {
					t.Fatal(err)
				}
			}
			peer.CloseWrite()
			r := peekRun(gw, tc.pending, 5*time.Second, 0)
			if got := errors.Is(r.err, ErrNotTLS); got != tc.notTLS {
				t.Fatalf("err = %v; ErrNotTLS = %v, want %v", r.err, got, tc.notTLS)
			}
			if !tc.notTLS && !errors.Is(r.err, io.EOF) {
				t.Errorf("err = %v, want io.EOF", r.err)
			}
			if errors.Is(r.err, ErrPeekTimeout) {
				t.Errorf("err = %v, must not be a timeout", r.err)
			}
		})
	}
}

func TestPeekClientHelloMaxBytes(t *testing.T) {
	hello := peekCaptureHello(t, &tls.Config{ServerName: "big.test"})
	for _, tc := range []struct {
		name     string
		maxBytes int
		ok       bool
	}{
		{"exact size", len(hello), true},
		{"one short", len(hello) - 1, false},
		{"512", 512, false},
		{"3", 3, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			peer, gw := peekPair(t)
			if _, err := peer.Write(hello); err != nil {
				t.Fatal(err)
			}
			r := peekRun(gw, nil, 5*time.Second, tc.maxBytes)
			if tc.ok {
				if r.err != nil || r.hello.ServerName != "big.test" {
					t.Fatalf("hello %+v, err %v", r.hello, r.err)
				}
			} else if !errors.Is(r.err, ErrNotTLS) {
				t.Fatalf("err = %v, want ErrNotTLS", r.err)
			}
			if len(r.rec) > tc.maxBytes {
				t.Errorf("read %d bytes, limit %d", len(r.rec), tc.maxBytes)
			}
		})
	}
}

// peekNoReadConn is a net.Conn that must never be read.
type peekNoReadConn struct {
	net.Conn
	reads int
}

func (c *peekNoReadConn) Read([]byte) (int, error)        { c.reads++; return 0, io.ErrClosedPipe }
func (c *peekNoReadConn) SetReadDeadline(time.Time) error { return nil }

// A complete hello in pending must be parsed without touching the client.
func TestPeekClientHelloPendingCompleteNoRead(t *testing.T) {
	hello := peekCaptureHello(t, &tls.Config{ServerName: "pend.test"})
	for _, tc := range []struct {
		name  string
		bytes []byte
	}{{"single record", hello}, {"multi record", peekReframe(hello, 100)}} {
		t.Run(tc.name, func(t *testing.T) {
			c := &peekNoReadConn{}
			h, rec, err := PeekClientHello(c, tc.bytes, time.Second, 0)
			if err != nil || h.ServerName != "pend.test" {
				t.Fatalf("hello %+v, err %v", h, err)
			}
			if c.reads != 0 {
				t.Errorf("client read %d times", c.reads)
			}
			if !bytes.Equal(rec, tc.bytes) {
				t.Errorf("recorded bytes differ from pending")
			}
		})
	}
}

// After the peek, replaying the recorded bytes to a real TLS server and
// relaying the rest completes the client's handshake with that server's cert.
func TestPeekClientHelloReplayLossless(t *testing.T) {
	defer goleak.VerifyNone(t)
	ca := testutil.NewCA(t)
	cert, pool := ca.Leaf(t, "peek.test"), ca.Pool
	for _, tc := range []struct {
		name    string
		pending int // bytes the gateway read itself before peeking
	}{{"no pending", 0}, {"pending 3", 3}, {"pending 200", 200}} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
				Certificates: []tls.Certificate{cert},
				NextProtos:   []string{"h2"},
			})
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			var wg sync.WaitGroup
			defer wg.Wait()

			wg.Add(1)
			go func() { // real server: echo one line
				defer wg.Done()
				c, err := ln.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				buf := make([]byte, 64)
				n, err := c.Read(buf)
				if err != nil {
					return
				}
				c.Write(append([]byte("echo:"), buf[:n]...))
			}()

			peer, gw := peekPair(t)
			type clientRes struct {
				state tls.ConnectionState
				reply string
				err   error
			}
			clientCh := make(chan clientRes, 1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				cc := tls.Client(peer, &tls.Config{ServerName: "peek.test", RootCAs: pool, NextProtos: []string{"h2", "http/1.1"}})
				var r clientRes
				if r.err = cc.Handshake(); r.err == nil {
					r.state = cc.ConnectionState()
					if _, r.err = cc.Write([]byte("ping")); r.err == nil {
						buf := make([]byte, 64)
						var n int
						n, r.err = cc.Read(buf)
						r.reply = string(buf[:n])
					}
				}
				clientCh <- r
			}()

			pending := make([]byte, tc.pending)
			if _, err := io.ReadFull(gw, pending); err != nil {
				t.Fatal(err)
			}
			h, rec, err := PeekClientHello(gw, pending, 5*time.Second, 0)
			if err != nil {
				t.Fatalf("PeekClientHello: %v", err)
			}
			if h.ServerName != "peek.test" || !slices.Equal(h.Protocols, []string{"h2", "http/1.1"}) {
				t.Errorf("hello = %+v", h)
			}
			up, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			if _, err := up.Write(rec); err != nil {
				t.Fatal(err)
			}
			wg.Add(2)
			go func() { defer wg.Done(); io.Copy(up, gw); up.(*net.TCPConn).CloseWrite() }()
			go func() { defer wg.Done(); io.Copy(gw, up); gw.CloseWrite() }()

			var r clientRes
			select {
			case r = <-clientCh:
			case <-time.After(10 * time.Second):
				t.Fatal("client handshake through replayed tunnel hung")
			}
			peer.Close()
			gw.Close()
			up.Close()
			if r.err != nil {
				t.Fatalf("client through replayed tunnel: %v", r.err)
			}
			if got := r.state.PeerCertificates; len(got) == 0 || !bytes.Equal(got[0].Raw, cert.Certificate[0]) {
				t.Errorf("client did not see the real server's certificate")
			}
			if r.state.NegotiatedProtocol != "h2" || r.reply != "echo:ping" {
				t.Errorf("alpn %q reply %q", r.state.NegotiatedProtocol, r.reply)
			}
		})
	}
}

// No goroutine outlives a peek, whatever its outcome.
func TestPeekClientHelloNoLeak(t *testing.T) {
	defer goleak.VerifyNone(t)
	hello := peekCaptureHello(t, &tls.Config{ServerName: "leak.test"})
	for _, wire := range [][]byte{hello, []byte("GET /"), {22, 3, 1, 0, 4, 0xff, 0xff, 0xff, 0xff}, nil} {
		peer, gw := peekPair(t)
		peer.Write(wire)
		PeekClientHello(gw, nil, 100*time.Millisecond, 0)
		peer.Close()
		gw.Close()
	}
}

func BenchmarkPeekClientHello(b *testing.B) {
	hello := peekCaptureHello(b, &tls.Config{ServerName: "winatp-gw-eus.microsoft.com", NextProtos: []string{"http/1.1"}})
	_, gw := peekPair(b) // the peer sends nothing more
	b.ReportAllocs()
	b.SetBytes(int64(len(hello)))
	for b.Loop() {
		h, _, err := PeekClientHello(gw, hello, 5*time.Second, 0)
		if err != nil || h.ServerName == "" {
			b.Fatalf("hello %+v, err %v", h, err)
		}
	}
}
