package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/defendergw/gateway/internal/allowlist"
	"github.com/defendergw/gateway/internal/auth"
	"github.com/defendergw/gateway/internal/resolver"
	"github.com/defendergw/gateway/internal/tlsbypass"
)

// openFDs counts this process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	return len(ents)
}

// fdsBack waits until the descriptor count is back to the baseline (the
// fault left nothing open behind it).
func fdsBack(t *testing.T, baseline int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := openFDs(t)
		if n <= baseline {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("open file descriptors: %d, baseline %d", n, baseline)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// within fails the test when f takes longer than limit.
func within(t *testing.T, limit time.Duration, what string, f func()) {
	t.Helper()
	start := time.Now()
	f()
	if d := time.Since(start); d > limit {
		t.Errorf("%s took %v, want at most %v", what, d, limit)
	}
}

func TestFaultsDNS(t *testing.T) {
	tests := []struct {
		name  string
		setup func(w *world)
	}{
		{"dns server down", func(w *world) { w.dns.Close() }},
		{"dns servfail", func(w *world) { w.dns.SetRcode("winatp-gw-weu.microsoft.com", dns.RcodeServerFailure) }},
		{"dns slower than the timeout", func(w *world) { w.dns.SetDelay(3 * time.Second) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorld(t, worldOptions{geos: eu})
			tt.setup(w)
			base := openFDs(t)
			within(t, 6*time.Second, "giving up on DNS", func() {
				c, resp := w.connect("winatp-gw-weu.microsoft.com:443", nil)
				if resp.StatusCode != 502 || resp.Header.Get(ReasonHeader) != "dns-failure" {
					t.Errorf("got %d %q, want 502 dns-failure", resp.StatusCode, resp.Header.Get(ReasonHeader))
				}
				c.Close()
			})
			fdsBack(t, base)
		})
	}
}

func TestFaultsUpstream(t *testing.T) {
	t.Run("upstream resets mid-stream", func(t *testing.T) {
		w := newWorld(t, worldOptions{geos: eu})
		w.upstreamOnce(t, 443, func(c net.Conn) {
			time.Sleep(100 * time.Millisecond) // the tunnel is relaying by now
			c.Write([]byte("partial"))
			time.Sleep(50 * time.Millisecond)
			c.(*net.TCPConn).SetLinger(0)
			c.Close() // RST
		})
		base := openFDs(t)
		within(t, 3*time.Second, "closing after an upstream reset", func() {
			c, resp := w.connect("raw.lab.test:443", nil)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			b, _ := io.ReadAll(c)
			if !strings.HasPrefix(string(b), "partial") {
				t.Errorf("client got %q before the reset", b)
			}
			c.Close()
		})
		w.waitLog(t, `"outcome":"error"`)
		fdsBack(t, base)
	})
	t.Run("upstream sends enormous response headers", func(t *testing.T) {
		w := newWorld(t, worldOptions{geos: eu})
		w.upstreamOnce(t, 80, func(c net.Conn) {
			defer c.Close()
			bufio.NewReader(c).ReadString('\n')
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nX-Huge: %s\r\n\r\n", strings.Repeat("a", 1<<20))
		})
		within(t, 5*time.Second, "refusing huge headers", func() {
			resp, err := w.client().Get("http://crl.microsoft.com/pki/crl/products/huge.crl")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != 502 || resp.Header.Get(ReasonHeader) != "upstream-unreachable" {
				t.Errorf("got %d %q, want 502 upstream-unreachable", resp.StatusCode, resp.Header.Get(ReasonHeader))
			}
		})
	})
	t.Run("upstream ignores Expect 100-continue", func(t *testing.T) {
		w := newWorld(t, worldOptions{geos: eu})
		w.upstreamOnce(t, 80, func(c net.Conn) {
			defer c.Close()
			req, err := http.ReadRequest(bufio.NewReader(c))
			if err != nil {
				return
			}
			// Never sends 100 Continue; answers once the body arrived.
			b, _ := io.ReadAll(req.Body)
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(b), b)
		})
		within(t, 5*time.Second, "a request whose upstream ignores Expect", func() {
			req, _ := http.NewRequest("POST", "http://crl.microsoft.com/pki/crl/products/post", strings.NewReader("payload"))
			req.Header.Set("Expect", "100-continue")
			resp, err := w.client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(b) != "payload" {
				t.Errorf("got %d %q", resp.StatusCode, b)
			}
		})
	})
}

func TestFaultsClients(t *testing.T) {
	t.Run("client disappears mid-tunnel", func(t *testing.T) {
		w := newWorld(t, worldOptions{geos: eu})
		upClosed := make(chan time.Time, 1)
		w.upstreamOnce(t, 443, func(c net.Conn) {
			io.Copy(io.Discard, c)
			upClosed <- time.Now()
			c.Close()
		})
		base := openFDs(t)
		c, resp := w.connect("raw.lab.test:443", nil)
		if resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		c.Write([]byte("some bytes"))
		c.(*net.TCPConn).SetLinger(0)
		c.Close() // RST: the client is gone
		select {
		case <-upClosed:
		case <-time.After(3 * time.Second):
			t.Fatal("the upstream side was not closed after the client vanished")
		}
		fdsBack(t, base)
	})
	t.Run("slowloris headers", func(t *testing.T) {
		w := newWorld(t, worldOptions{geos: eu, readHeaderTimeout: 500 * time.Millisecond})
		base := openFDs(t)
		c, err := net.Dial("tcp", w.proxyURL.Host)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		start := time.Now()
		closed := make(chan struct{})
		go func() {
			defer close(closed)
			for _, b := range []byte("CONNECT winatp-gw-weu.microsoft.com:443 HTTP/1.1\r\n") {
				if _, err := c.Write([]byte{b}); err != nil {
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
		}()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		io.ReadAll(c) // returns when the gateway gives up
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("slowloris connection held for %v", d)
		}
		c.Close()
		<-closed
		fdsBack(t, base)
	})
	for _, tc := range []struct {
		name string
		o    worldOptions
	}{
		{"client never reads the response", worldOptions{geos: eu, tunnel: tlsbypass.Options{IdleTimeout: 300 * time.Millisecond}}},
		// GATEWAY_WRITE_TIMEOUT bounds the slow reader while tunnels may
		// idle far longer.
		{"client never reads, write timeout of its own", worldOptions{geos: eu,
			tunnel: tlsbypass.Options{IdleTimeout: time.Hour}, writeTimeout: 300 * time.Millisecond}},
	} {
		t.Run(tc.name, func(t *testing.T) { neverReads(t, tc.o) })
	}
}

// neverReads requests a large body and never reads it: the gateway must
// give up writing and release the upstream.
func neverReads(t *testing.T, o worldOptions) {
	w := newWorld(t, o)
	bodyDone := make(chan error, 1)
	w.upstreamOnce(t, 80, func(c net.Conn) {
		defer c.Close()
		bufio.NewReader(c).ReadString('\n')
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", 64<<20)
		chunk := make([]byte, 64<<10)
		for {
			if _, err := c.Write(chunk); err != nil {
				bodyDone <- err
				return
			}
		}
	})
	c, err := net.Dial("tcp", w.proxyURL.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.(*net.TCPConn).SetReadBuffer(4096)
	fmt.Fprintf(c, "GET http://crl.microsoft.com/pki/crl/products/big.crl HTTP/1.1\r\nHost: crl.microsoft.com\r\n\r\n")
	// Never read: the gateway must give up and release the upstream.
	select {
	case <-bodyDone:
	case <-time.After(5 * time.Second):
		t.Fatal("the gateway kept the upstream busy for a client that never reads")
	}
}

// TestOneDeadlinePerRequest checks that the front door computes one
// deadline per request and that every resolve and dial of that request
// runs under it: a verified tunnel's lookup (before the 200) and its dial
// (after the ClientHello) share it, and a plain-HTTP request's dial gets
// it too, instead of each step restarting a timeout of its own.
func TestOneDeadlinePerRequest(t *testing.T) {
	w := newWorld(t, worldOptions{geos: eu, clientHelloTimeout: 4 * time.Second})
	const dialTimeout = 3 * time.Second // newWorld's
	tests := []struct {
		name    string
		do      func(t *testing.T)
		ops     []string
		atLeast time.Duration // the deadline is at least this far from the request's start
	}{
		{"verified tunnel", func(t *testing.T) {
			c, resp := w.connect("winatp-gw-weu.microsoft.com:443", clientHello(t, "winatp-gw-weu.microsoft.com"))
			if resp.StatusCode != 200 {
				t.Fatalf("CONNECT: %d", resp.StatusCode)
			}
			c.Close()
		}, []string{"lookup", "dial-checked"}, dialTimeout + 4*time.Second},
		{"plain HTTP", func(t *testing.T) {
			client := w.client()
			resp, err := client.Get("http://crl.microsoft.com/pki/crl/products/deadline.crl")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			client.CloseIdleConnections()
		}, []string{"dial"}, dialTimeout},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w.dialCalls()
			start := time.Now()
			tt.do(t)
			// A verified tunnel dials after the client's ClientHello,
			// behind the 200 the client has already read: wait for it.
			var calls []dialCall
			for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(5 * time.Millisecond) {
				calls = append(calls, w.dialCalls()...)
				if len(calls) >= len(tt.ops) || time.Now().After(deadline) {
					break
				}
			}
			var ops []string
			for _, c := range calls {
				ops = append(ops, c.op)
			}
			if !slices.Equal(ops, tt.ops) {
				t.Fatalf("dial calls %q, want %q", ops, tt.ops)
			}
			first := calls[0].deadline
			if first.IsZero() {
				t.Fatalf("%s ran without a deadline", calls[0].op)
			}
			for _, c := range calls[1:] {
				if !c.deadline.Equal(first) {
					t.Errorf("%s deadline %v, want the request's %v", c.op, c.deadline, first)
				}
			}
			if got := first.Sub(start); got < tt.atLeast {
				t.Errorf("deadline %v after the request started, want at least %v", got, tt.atLeast)
			}
		})
	}
}

// denyAll is an Authenticator that refuses everyone.
type denyAll struct{}

func (denyAll) Authenticate(string, netip.Addr) (string, error) { return "", auth.ErrBadCredentials }

// TestNewRefusesAuthWithoutChallenge: the proxy restates no default, so
// authentication without the challenge to send is a configuration error,
// not a 407 without Proxy-Authenticate.
func TestNewRefusesAuthWithoutChallenge(t *testing.T) {
	p := func() *allowlist.Policy { return nil }
	d := &resolver.Dialer{}
	if _, err := New(Options{Policy: p, Dialer: d, Auth: denyAll{}}); err == nil || !strings.Contains(err.Error(), "Challenge") {
		t.Errorf("New with Auth and no Challenge: err = %v, want one naming Challenge", err)
	}
	if _, err := New(Options{Policy: p, Dialer: d, Auth: denyAll{}, Challenge: `Basic realm="x"`}); err != nil {
		t.Errorf("New with Auth and a Challenge: %v", err)
	}
}
