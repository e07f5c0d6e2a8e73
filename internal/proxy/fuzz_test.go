package proxy

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/defendergw/gateway/internal/allowlist"
)

// FuzzRequest writes arbitrary bytes as a client's request stream to a live
// in-process gateway (one world per fuzz process, not per input), half-closes,
// and checks that the gateway answers or closes within a deadline, that
// nothing reaches 127.0.0.2 (where the unlisted names point), and that every
// request the plain HTTP upstream receives is one the policy allows for the
// host and path the upstream saw.
func FuzzRequest(f *testing.F) {
	w := newAdvWorld(f, worldOptions{geos: eu})
	for _, n := range []string{"unlisted.example.com", "unlisted-http.example.com", "evil.test", "internal.wdcp.microsoft.com"} {
		w.dns.Set(n, "127.0.0.2")
	}
	cat, err := allowlist.Embedded()
	if err != nil {
		f.Fatal(err)
	}
	rs, err := allowlist.ParseRules([]byte(rawRule), "rules.yaml")
	if err != nil {
		f.Fatal(err)
	}
	policy, err := allowlist.NewPolicy(cat, allowlist.Options{Geographies: eu, Rules: rs.Rules})
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range fuzzRequestSeeds(f) {
		f.Add(s)
	}
	const deadline = 10 * time.Second
	f.Fuzz(func(t *testing.T, in []byte) {
		// The world's log buffer would grow for the whole fuzzing run.
		w.logs.Reset()
		w.drainHTTP(0)

		c, err := net.Dial("tcp", w.proxyURL.Host)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(deadline))
		go func() {
			c.Write(in)
			c.(*net.TCPConn).CloseWrite()
		}()
		start := time.Now()
		if _, err := io.Copy(io.Discard, c); err != nil && !isReset(err) {
			t.Fatalf("no answer or close within %v (%v): %v", time.Since(start).Round(time.Millisecond), deadline, err)
		}
		for _, r := range w.drainHTTP(0) {
			host, port := r.Host, uint16(80)
			if h, p, err := net.SplitHostPort(r.Host); err == nil {
				n, _ := strconv.Atoi(p)
				host, port = h, uint16(n)
			}
			path, err := allowlist.NormalizePath(r.URL.Path)
			d := policy.Decide(allowlist.Target{Host: host, Port: port, Path: path, HasPath: true})
			if err != nil || !d.Allowed {
				t.Fatalf("HTTP upstream received %s %s (Host %q) which the policy refuses (%v, %v)", r.Method, r.URL, r.Host, d.Err, err)
			}
		}
		if n := w.sink443.Accepted() + w.sink80.Accepted(); n != 0 {
			t.Fatalf("127.0.0.2 saw %d connections", n)
		}
	})
}

// fuzzRequestSeeds are real request streams: what curl, Go and Defender send,
// and the adversarial shapes of adversarial_test.go.
func fuzzRequestSeeds(tb testing.TB) [][]byte {
	hello := captureHello(tb, "winatp-gw-weu.microsoft.com")
	var seeds [][]byte
	for _, s := range []string{
		"CONNECT winatp-gw-weu.microsoft.com:443 HTTP/1.1\r\nHost: winatp-gw-weu.microsoft.com:443\r\nUser-Agent: curl/8.5.0\r\nProxy-Connection: Keep-Alive\r\n\r\n",
		"CONNECT unlisted.example.com:443 HTTP/1.1\r\nHost: unlisted.example.com:443\r\n\r\n",
		"CONNECT raw.lab.test:443 HTTP/1.1\r\nHost: raw.lab.test:443\r\n\r\nhello",
		"CONNECT 2130706434:443 HTTP/1.1\r\nHost: x\r\n\r\n",
		"CONNECT [::ffff:127.0.0.2]:443 HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET http://crl.microsoft.com/pki/crl/products/MicRooCerAut_2010-06-23.crl HTTP/1.1\r\nHost: crl.microsoft.com\r\nUser-Agent: Microsoft-CryptoAPI/10.0\r\nAccept: */*\r\nConnection: Keep-Alive\r\nCache-Control: no-cache\r\n\r\n",
		"GET http://www.microsoft.com/pkiops/crl/../../private HTTP/1.1\r\nHost: www.microsoft.com\r\n\r\n",
		"GET http://crl.microsoft.com/pki/crl/products/a HTTP/1.1\r\nHost: evil.test\r\n\r\nGET http://unlisted-http.example.com/ HTTP/1.1\r\nHost: crl.microsoft.com\r\n\r\n",
		"POST http://crl.microsoft.com/pki/crl/products/a HTTP/1.1\r\nHost: crl.microsoft.com\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled,
		"GET http://crl.microsoft.com/pki/crl/products/ws HTTP/1.1\r\nHost: crl.microsoft.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
		"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
		"GET /proxy.pac HTTP/1.1\r\nHost: gateway\r\n\r\n",
		"GET http://evil.test\\@crl.microsoft.com/pki/crl/products/a HTTP/1.1\r\nHost: crl.microsoft.com\r\n\r\n",
		"GET http://\u0441rl.microsoft.com/pki/crl/products/a HTTP/1.1\r\nHost: crl.microsoft.com\r\n\r\n",
	} {
		seeds = append(seeds, []byte(s))
	}
	connect := []byte("CONNECT winatp-gw-weu.microsoft.com:443 HTTP/1.1\r\nHost: winatp-gw-weu.microsoft.com:443\r\n\r\n")
	seeds = append(seeds, append(bytes.Clone(connect), hello...))
	seeds = append(seeds, append(bytes.Clone(connect), captureHello(tb, "unlisted.example.com")...))
	return seeds
}

// captureHello is the first flight of a Go TLS client for sni (clientHello
// for any testing.TB).
func captureHello(tb testing.TB, sni string) []byte {
	tb.Helper()
	a, b := net.Pipe()
	defer a.Close()
	go func() {
		tls.Client(b, &tls.Config{ServerName: sni}).Handshake()
		b.Close()
	}()
	buf := make([]byte, 16<<10)
	n, err := a.Read(buf)
	if err != nil {
		tb.Fatal(err)
	}
	return buf[:n]
}
