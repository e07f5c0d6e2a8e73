package proxyheader

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
)

type rejection struct {
	err  error
	peer netip.AddrPort
}

// listen starts a header-reading listener on 127.0.0.1 trusting from.
func listen(t *testing.T, mode Mode, from ...string) (net.Listener, chan rejection) {
	t.Helper()
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var prefixes []netip.Prefix
	for _, f := range from {
		prefixes = append(prefixes, netip.MustParsePrefix(f))
	}
	rejected := make(chan rejection, 16)
	ln := Listen(raw, Options{Mode: mode, From: prefixes, Timeout: 2 * time.Second,
		OnReject: func(err error, peer netip.AddrPort) { rejected <- rejection{err, peer} }})
	t.Cleanup(func() { ln.Close() })
	return ln, rejected
}

// acceptOne accepts one connection from ln in the background; the channel
// gets it, or nothing if Accept fails.
func acceptOne(ln net.Listener) <-chan net.Conn {
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			accepted <- c
		}
	}()
	return accepted
}

// dialFrom connects to ln from the loopback address src and writes parts,
// pausing between them.
func dialFrom(t *testing.T, ln net.Listener, src string, parts ...[]byte) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	for i, p := range parts {
		if i > 0 {
			time.Sleep(20 * time.Millisecond) // a header split across segments
		}
		if _, err := c.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

func header(t *testing.T, version byte, cmd proxyproto.ProtocolVersionAndCommand, src, dst string) []byte {
	t.Helper()
	h := proxyproto.HeaderProxyFromAddrs(version, net.TCPAddrFromAddrPort(netip.MustParseAddrPort(src)),
		net.TCPAddrFromAddrPort(netip.MustParseAddrPort(dst)))
	if cmd != 0 {
		h.Command = cmd
	}
	b, err := h.Format()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestListen(t *testing.T) {
	const data = "GET / HTTP/1.1\r\n\r\n"
	v1 := header(t, 1, 0, "127.0.0.9:40000", "127.0.0.1:3128")
	v2 := header(t, 2, 0, "[::1]:40001", "[::1]:3128")
	local := header(t, 2, proxyproto.LOCAL, "127.0.0.9:40000", "127.0.0.1:3128")
	tests := []struct {
		name       string
		mode       Mode
		from       []string
		src        string   // the peer's (the load balancer's) address
		parts      [][]byte // what the peer sends
		wantRemote string   // the address the accepted connection reports ("" is the peer's own)
		wantData   string   // what the accepted connection reads
		wantErr    error    // a rejection instead
	}{
		{name: "v1 from a trusted balancer", mode: Required, from: []string{"127.0.0.1/32"}, src: "127.0.0.1",
			parts: [][]byte{append(v1, data...)}, wantRemote: "127.0.0.9:40000", wantData: data},
		{name: "v2 from a trusted balancer", mode: Required, from: []string{"127.0.0.1/32"}, src: "127.0.0.1",
			parts: [][]byte{append(v2, data...)}, wantRemote: "[::1]:40001", wantData: data},
		{name: "v1 split across segments", mode: Required, from: []string{"127.0.0.1/32"}, src: "127.0.0.1",
			parts: [][]byte{v1[:9], append(v1[9:], data...)}, wantRemote: "127.0.0.9:40000", wantData: data},
		{name: "v2 split across segments", mode: Required, from: []string{"127.0.0.1/32"}, src: "127.0.0.1",
			parts: [][]byte{v2[:7], append(v2[7:], data...)}, wantRemote: "[::1]:40001", wantData: data},
		{name: "LOCAL: the balancer's own health check", mode: Required, from: []string{"127.0.0.1/32"}, src: "127.0.0.1",
			parts: [][]byte{append(local, data...)}, wantData: data},
		{name: "required: no header", mode: Required, from: []string{"127.0.0.1/32"}, src: "127.0.0.1",
			parts: [][]byte{[]byte(data)}, wantErr: ErrNoHeader},
		{name: "required: a header from an untrusted peer", mode: Required, from: []string{"127.0.0.1/32"}, src: "127.0.0.2",
			parts: [][]byte{append(v1, data...)}, wantErr: ErrUntrusted},
		{name: "malformed v1", mode: Required, from: []string{"127.0.0.1/32"}, src: "127.0.0.1",
			parts: [][]byte{[]byte("PROXY TCP4 nonsense\r\n" + data)}, wantErr: ErrBadHeader},
		{name: "optional: a trusted peer without a header is itself", mode: Optional, from: []string{"127.0.0.1/32"}, src: "127.0.0.1",
			parts: [][]byte{[]byte(data)}, wantData: data},
		{name: "optional: an untrusted peer's header is data", mode: Optional, from: []string{"127.0.0.1/32"}, src: "127.0.0.2",
			parts: [][]byte{append(v1, data...)}, wantData: string(v1) + data},
		{name: "optional: a trusted peer's header is read", mode: Optional, from: []string{"127.0.0.1/32"}, src: "127.0.0.1",
			parts: [][]byte{append(v2, data...)}, wantRemote: "[::1]:40001", wantData: data},
		{name: "optional: an untrusted peer without a header is itself", mode: Optional, from: []string{"127.0.0.1/32"}, src: "127.0.0.2",
			parts: [][]byte{[]byte(data)}, wantData: data},
		{name: "required: an untrusted peer without a header", mode: Required, from: []string{"127.0.0.1/32"}, src: "127.0.0.2",
			parts: [][]byte{[]byte(data)}, wantErr: ErrUntrusted},
		{name: "required: a v1 header where the balancer's prefix is wider", mode: Required, from: []string{"127.0.0.0/8"}, src: "127.0.0.2",
			parts: [][]byte{append(v1, data...)}, wantRemote: "127.0.0.9:40000", wantData: data},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ln, rejected := listen(t, tc.mode, tc.from...)
			accepted := acceptOne(ln)
			client := dialFrom(t, ln, tc.src, tc.parts...)
			if tc.wantErr != nil {
				select {
				case r := <-rejected:
					if !errors.Is(r.err, tc.wantErr) {
						t.Fatalf("rejected with %v, want %v", r.err, tc.wantErr)
					}
				case c := <-accepted:
					t.Fatalf("accepted from %s, want a rejection %v", c.RemoteAddr(), tc.wantErr)
				case <-time.After(5 * time.Second):
					t.Fatal("neither accepted nor rejected")
				}
				client.SetReadDeadline(time.Now().Add(5 * time.Second))
				if n, err := client.Read(make([]byte, 1)); n != 0 || err == nil {
					t.Errorf("rejected connection: read %d, %v; want it closed", n, err)
				}
				return
			}
			var c net.Conn
			select {
			case c = <-accepted:
			case r := <-rejected:
				t.Fatalf("rejected: %v", r.err)
			case <-time.After(5 * time.Second):
				t.Fatal("not accepted")
			}
			defer c.Close()
			want := tc.wantRemote
			if want == "" {
				want = client.LocalAddr().String()
			}
			if got := c.RemoteAddr().String(); got != want {
				t.Errorf("RemoteAddr: got %s, want %s", got, want)
			}
			if tc.wantRemote != "" {
				if b, ok := c.(interface{ BareTCP() *net.TCPConn }); !ok || b.BareTCP() == nil {
					t.Errorf("accepted %T, want a bare TCP connection underneath", c)
				}
			} else if _, ok := c.(*net.TCPConn); !ok {
				t.Errorf("accepted %T, want the *net.TCPConn itself", c)
			}
			got := make([]byte, len(tc.wantData))
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadFull(c, got); err != nil || string(got) != tc.wantData {
				t.Errorf("data: got %q %v, want %q", got, err, tc.wantData)
			}
		})
	}
}

// A trusted peer that sends nothing holds only its own header read: the
// next connection is accepted at once, and the silent one is closed at
// the timeout.
func TestSlowHeaderDoesNotBlockAccept(t *testing.T) {
	ln, rejected := listen(t, Required, "127.0.0.1/32")
	dialFrom(t, ln, "127.0.0.1") // sends nothing
	dialFrom(t, ln, "127.0.0.1", header(t, 1, 0, "127.0.0.9:40000", "127.0.0.1:3128"))
	accepted := acceptOne(ln)
	select {
	case c := <-accepted:
		defer c.Close()
		if got := c.RemoteAddr().String(); got != "127.0.0.9:40000" {
			t.Errorf("accepted %s, want the second connection's client 127.0.0.9:40000", got)
		}
	case <-time.After(time.Second):
		t.Fatal("a silent connection held up the accept of the next")
	}
	select {
	case r := <-rejected:
		if !errors.Is(r.err, ErrBadHeader) {
			t.Errorf("silent connection rejected with %v, want ErrBadHeader (timeout)", r.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the silent connection was not closed at the timeout")
	}
}

// Off reads nothing: the listener is the one given, and a header is data.
func TestListenOff(t *testing.T) {
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	if got := Listen(raw, Options{Mode: Off, From: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}}); got != raw {
		t.Errorf("Listen with Off: got %T, want the listener itself", got)
	}
}

// Connections waiting for their header are bounded (MaxPending): past the
// bound a new one is closed at once, and a slot that frees up is taken
// again.
func TestMaxPending(t *testing.T) {
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rejected := make(chan rejection, 16)
	ln := Listen(raw, Options{Mode: Required, From: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")},
		Timeout: 10 * time.Second, MaxPending: 2,
		OnReject: func(err error, peer netip.AddrPort) { rejected <- rejection{err, peer} }})
	defer ln.Close()
	silent1 := dialFrom(t, ln, "127.0.0.1")
	dialFrom(t, ln, "127.0.0.1")
	// Both slots are taken: the third is closed unread, long before the
	// header timeout.
	third := dialFrom(t, ln, "127.0.0.1")
	select {
	case r := <-rejected:
		if !errors.Is(r.err, ErrBadHeader) || r.peer.String() != third.LocalAddr().String() {
			t.Errorf("rejected %s with %v, want the third connection %s with ErrBadHeader", r.peer, r.err, third.LocalAddr())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the connection past MaxPending was not closed")
	}
	third.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := third.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Errorf("connection past MaxPending: read %d, %v; want it closed", n, err)
	}
	// A silent one gives up its slot by closing (its header read fails),
	// and a new connection is served.
	silent1.Close()
	select {
	case r := <-rejected:
		if !errors.Is(r.err, ErrBadHeader) {
			t.Errorf("closed silent connection rejected with %v, want ErrBadHeader", r.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the closed silent connection kept its slot")
	}
	dialFrom(t, ln, "127.0.0.1", header(t, 1, 0, "127.0.0.9:40000", "127.0.0.1:3128"))
	accepted := acceptOne(ln)
	select {
	case c := <-accepted:
		defer c.Close()
		if got := c.RemoteAddr().String(); got != "127.0.0.9:40000" {
			t.Errorf("accepted %s, want 127.0.0.9:40000", got)
		}
	case r := <-rejected:
		t.Fatalf("rejected %s: %v, want it accepted in the freed slot", r.peer, r.err)
	case <-time.After(5 * time.Second):
		t.Fatal("not accepted after a slot freed up")
	}
}

func TestParseMode(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    Mode
		wantErr bool
	}{{"off", Off, false}, {"Optional", Optional, false}, {" required ", Required, false}, {"v2", Off, true}, {"", Off, true}} {
		var m Mode
		err := m.UnmarshalText([]byte(tc.in))
		if (err != nil) != tc.wantErr || m != tc.want {
			t.Errorf("%q: got %v %v, want %v (error %v)", tc.in, m, err, tc.want, tc.wantErr)
		}
	}
}

// BenchmarkAccept measures a connection's way through accept: with the
// header read (v1, v2) and without the listener (off), each a loopback
// dial, a header (or none) and one byte of data read by the acceptor.
func BenchmarkAccept(b *testing.B) {
	v1 := proxyproto.HeaderProxyFromAddrs(1, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 9), Port: 40000}, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 3128})
	v2 := proxyproto.HeaderProxyFromAddrs(2, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 9), Port: 40000}, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 3128})
	for _, bc := range []struct {
		name string
		mode Mode
		h    *proxyproto.Header
	}{{"off", Off, nil}, {"v1", Required, v1}, {"v2", Required, v2}} {
		b.Run(bc.name, func(b *testing.B) {
			raw, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			ln := Listen(raw, Options{Mode: bc.mode, From: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}})
			defer ln.Close()
			var first []byte
			if bc.h != nil {
				if first, err = bc.h.Format(); err != nil {
					b.Fatal(err)
				}
			}
			first = append(first, 'x')
			done := make(chan struct{})
			go func() {
				defer close(done)
				buf := make([]byte, 1)
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					io.ReadFull(c, buf)
					c.Close()
				}
			}()
			b.ReportAllocs()
			for b.Loop() {
				c, err := net.Dial("tcp", raw.Addr().String())
				if err != nil {
					b.Fatal(err)
				}
				c.Write(first)
				c.Read(make([]byte, 1)) // wait for the acceptor's close
				c.Close()
			}
			ln.Close()
			<-done
		})
	}
}
