package proxy

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/defendergw/gateway/internal/reason"
)

// TestUpstreamTrailers checks that an upstream's trailers are filtered as
// its headers are, announced in Trailer or not, on the gateway's own HTTP/1.1
// client (bodiless requests), on net/http's Transport (requests with a
// body) and inside an inspected tunnel.
func TestUpstreamTrailers(t *testing.T) {
	w := newWorld(t, worldOptions{geos: eu, inspect: true})
	inspected := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		Proxy: http.ProxyURL(w.proxyURL), TLSClientConfig: &tls.Config{RootCAs: w.inspectCA.Pool}, DisableKeepAlives: true}}
	tests := []struct {
		name string
		do   func(path string) (*http.Response, error)
	}{
		{"bodiless GET (own client)", func(path string) (*http.Response, error) {
			return w.client().Get("http://crl.microsoft.com/pki/crl/products" + path)
		}},
		{"POST with a body (Transport)", func(path string) (*http.Response, error) {
			return w.client().Post("http://crl.microsoft.com/pki/crl/products"+path, "text/plain", strings.NewReader("payload"))
		}},
		{"inside an inspected tunnel", func(path string) (*http.Response, error) {
			return inspected.Get("https://inspected.lab.test/allowed" + path)
		}},
	}
	for _, tt := range tests {
		for _, path := range []string{"/trailers-unannounced", "/trailers-announced"} {
			t.Run(tt.name+" "+path, func(t *testing.T) {
				resp, err := tt.do(path)
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body) // trailers arrive after the body
				resp.Body.Close()
				if resp.StatusCode != 200 || string(body) != "ok" {
					t.Fatalf("%d %q, want 200 ok", resp.StatusCode, body)
				}
				if got := resp.Trailer.Get("X-Legit"); got != "yes" {
					t.Errorf("X-Legit trailer = %q, want yes (trailers: %v)", got, resp.Trailer)
				}
				for _, bad := range []string{ReasonHeader, "Keep-Alive", "X-Hop-Trailer"} {
					if v := resp.Trailer.Values(bad); len(v) > 0 {
						t.Errorf("trailer %s = %q reached the client", bad, v)
					}
					for _, announced := range resp.Header.Values("Trailer") {
						if strings.Contains(strings.ToLower(announced), strings.ToLower(bad)) {
							t.Errorf("Trailer header announces %s: %q", bad, announced)
						}
					}
				}
				if resp.Header.Get(ReasonHeader) != "" {
					t.Errorf("header %s = %q", ReasonHeader, resp.Header.Get(ReasonHeader))
				}
			})
		}
	}
}

// TestUnaskedSwitch: a 101 to a request that asked for no upgrade is a
// broken upstream, answered 502 upstream-unreachable on both client paths.
func TestUnaskedSwitch(t *testing.T) {
	w := newAdvWorld(t, worldOptions{geos: eu})
	for _, tt := range []struct{ name, raw, method string }{
		{"bodiless GET (own client)", getReq("http://crl.microsoft.com/pki/crl/products/switch", "crl.microsoft.com"), http.MethodGet},
		{"POST with a body (Transport)", "POST http://crl.microsoft.com/pki/crl/products/switch HTTP/1.1\r\nHost: crl.microsoft.com\r\n" +
			"Content-Length: 4\r\n\r\nbody", http.MethodPost},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := one(t, w.proxyURL.Host, tt.raw, tt.method)
			checkStatus(t, resp, body, http.StatusBadGateway, reason.UpstreamUnreachable.String())
		})
	}
}

// TestMethodsAndUpgrades: TRACE is refused, Max-Forwards is honoured for
// OPTIONS, and a WebSocket upgrade of plain HTTP is refused while an h2c
// upgrade is dropped (the request goes on as HTTP/1.1).
func TestMethodsAndUpgrades(t *testing.T) {
	w := newAdvWorld(t, worldOptions{geos: eu})
	const uri = "http://crl.microsoft.com/pki/crl/products/m"
	req := func(method, headers string) string {
		return method + " " + uri + " HTTP/1.1\r\nHost: crl.microsoft.com\r\n" + headers + "\r\n"
	}
	tests := []struct {
		name        string
		raw, method string
		status      int
		reason      string
		forwarded   bool
		maxForwards string // what the upstream must see ("" = not checked)
		allowHeader bool
		upgradeGone bool
	}{
		{"TRACE refused", req("TRACE", ""), http.MethodGet, 405, reason.MethodNotAllowed.String(), false, "", true, false},
		{"TRACE refused whatever Max-Forwards says", req("TRACE", "Max-Forwards: 5\r\n"), http.MethodGet, 405, reason.MethodNotAllowed.String(), false, "", true, false},
		{"TRACE to an unlisted host refused the same way", "TRACE http://unlisted-http.example.com/ HTTP/1.1\r\nHost: unlisted-http.example.com\r\n\r\n",
			http.MethodGet, 405, reason.MethodNotAllowed.String(), false, "", true, false},
		{"OPTIONS Max-Forwards 0 answered by the gateway", req("OPTIONS", "Max-Forwards: 0\r\n"), http.MethodOptions, 200, reason.MaxForwards.String(), false, "", true, false},
		{"OPTIONS Max-Forwards decremented", req("OPTIONS", "Max-Forwards: 3\r\n"), http.MethodOptions, 200, "", true, "2", false, false},
		{"OPTIONS bad Max-Forwards", req("OPTIONS", "Max-Forwards: three\r\n"), http.MethodOptions, 400, "bad-request", false, "", false, false},
		{"GET keeps Max-Forwards", req("GET", "Max-Forwards: 0\r\n"), http.MethodGet, 200, "", true, "0", false, false},
		{"websocket refused", req("GET", "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"),
			http.MethodGet, 403, reason.UpgradeRefused.String(), false, "", false, false},
		{"websocket among upgrades refused", req("GET", "Connection: Upgrade\r\nUpgrade: h2c, WebSocket\r\n"), http.MethodGet, 403, reason.UpgradeRefused.String(), false, "", false, false},
		{"h2c upgrade dropped", req("GET", "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"),
			http.MethodGet, 200, "", true, "", false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w.drainHTTP(0)
			before := w.snap()
			resp, body := one(t, w.proxyURL.Host, tt.raw, tt.method)
			checkStatus(t, resp, body, tt.status, tt.reason)
			if got := resp.Header.Get("Allow"); tt.allowHeader != (got != "") || (got != "" && strings.Contains(got, "TRACE")) {
				t.Errorf("Allow = %q", got)
			}
			if !tt.forwarded {
				w.quiet(t, before, tt.name)
				return
			}
			reqs := w.drainHTTP(100 * time.Millisecond)
			if len(reqs) != 1 {
				t.Fatalf("upstream saw %d requests, want 1", len(reqs))
			}
			if tt.maxForwards != "" && reqs[0].Header.Get("Max-Forwards") != tt.maxForwards {
				t.Errorf("upstream Max-Forwards = %q, want %q", reqs[0].Header.Get("Max-Forwards"), tt.maxForwards)
			}
			if tt.upgradeGone && (reqs[0].Header.Get("Upgrade") != "" || reqs[0].Header.Get("HTTP2-Settings") != "") {
				t.Errorf("upstream received the upgrade: %v", reqs[0].Header)
			}
		})
	}
}

// TestMethodsInsideInspectedTunnel: the same rules hold for the inner
// requests of an inspected tunnel.
func TestMethodsInsideInspectedTunnel(t *testing.T) {
	w := newWorld(t, worldOptions{geos: eu, inspect: true})
	for _, tt := range []struct {
		name, raw string
		status    int
		reason    string
	}{
		{"TRACE", "TRACE /allowed/x HTTP/1.1\r\nHost: inspected.lab.test\r\n\r\n", 405, reason.MethodNotAllowed.String()},
		{"websocket", "GET /allowed/x HTTP/1.1\r\nHost: inspected.lab.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", 403, reason.UpgradeRefused.String()},
		{"OPTIONS Max-Forwards 0", "OPTIONS /allowed/x HTTP/1.1\r\nHost: inspected.lab.test\r\nMax-Forwards: 0\r\n\r\n", 200, reason.MaxForwards.String()},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := w.tlsConns.Load()
			c, resp := w.connect("inspected.lab.test:443", nil)
			if resp.StatusCode != 200 {
				t.Fatalf("CONNECT: %d", resp.StatusCode)
			}
			defer c.Close()
			tc := tls.Client(c, &tls.Config{ServerName: "inspected.lab.test", RootCAs: w.inspectCA.Pool})
			tc.SetDeadline(time.Now().Add(5 * time.Second))
			io.WriteString(tc, tt.raw)
			r, err := http.ReadResponse(bufio.NewReader(tc), &http.Request{Method: strings.Fields(tt.raw)[0]})
			if err != nil {
				t.Fatal(err)
			}
			r.Body.Close()
			if r.StatusCode != tt.status || r.Header.Get(ReasonHeader) != tt.reason {
				t.Errorf("got %d %q, want %d %q", r.StatusCode, r.Header.Get(ReasonHeader), tt.status, tt.reason)
			}
			if n := w.tlsConns.Load() - before; n != 0 {
				t.Errorf("the upstream saw %d connections, want 0", n)
			}
		})
	}
}

// recordingConn keeps what the test upstream received, to count the
// ClientHellos that reached it.
type recordingConn struct {
	net.Conn
	mu  sync.Mutex
	got []byte
}

func (c *recordingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	c.got = append(c.got, p[:n]...)
	c.mu.Unlock()
	return n, err
}

// clientHellos counts the ClientHello messages in a client's record stream.
func clientHellos(b []byte) int {
	n := 0
	for len(b) >= 5 {
		l := int(b[3])<<8 | int(b[4])
		if len(b) < 5+l {
			break
		}
		if b[0] == 22 && l > 0 && b[5] == 1 {
			n++
		}
		b = b[5+l:]
	}
	return n
}

// hrrUpstream is a TLS 1.3 server that accepts only P-384, for which Go's
// client sends no key share: it answers the first ClientHello with a
// HelloRetryRequest. It reports what it received when the connection ends.
func hrrUpstream(t *testing.T, w *world, host string) chan []byte {
	got := make(chan []byte, 1)
	w.upstreamOnce(t, 443, func(c net.Conn) {
		rc := &recordingConn{Conn: c}
		srv := tls.Server(rc, &tls.Config{Certificates: []tls.Certificate{w.ca.Leaf(t, host)},
			CurvePreferences: []tls.CurveID{tls.CurveP384}, MinVersion: tls.VersionTLS13})
		srv.SetDeadline(time.Now().Add(5 * time.Second))
		if srv.Handshake() == nil {
			io.WriteString(srv, "hello through a retry")
		}
		srv.Close()
		rc.mu.Lock()
		got <- rc.got
		rc.mu.Unlock()
	})
	return got
}

// TestRetriedClientHello: after a real HelloRetryRequest, the client's second
// ClientHello must name the CONNECT host too; one naming another host is
// refused before it reaches the destination, however it is framed.
func TestRetriedClientHello(t *testing.T) {
	const host = "winatp-gw-weu.microsoft.com"
	for _, trickle := range []bool{false, true} {
		name := "a genuine retry goes through"
		if trickle {
			name += ", three bytes per segment"
		}
		t.Run(name, func(t *testing.T) {
			w := newWorld(t, worldOptions{geos: eu})
			got := hrrUpstream(t, w, host)
			c, resp := w.connect(host+":443", nil)
			if resp.StatusCode != 200 {
				t.Fatalf("CONNECT: %d", resp.StatusCode)
			}
			if trickle {
				// Every record reaches the guard split across reads.
				c = trickleConn{c}
			}
			tc := tls.Client(c, &tls.Config{ServerName: host, RootCAs: w.ca.Pool})
			if err := tc.Handshake(); err != nil {
				t.Fatalf("handshake through a retry: %v\n%s", err, w.logs.String())
			}
			if b, _ := io.ReadAll(tc); string(b) != "hello through a retry" {
				t.Errorf("read %q", b)
			}
			if n := clientHellos(<-got); n != 2 {
				t.Errorf("upstream received %d ClientHellos, want 2 (no HelloRetryRequest happened?)", n)
			}
		})
	}
	ccs := []byte{20, 3, 3, 0, 1, 1}
	split := func(rec []byte) []byte { // one handshake record as two
		f := rec[5:]
		h := len(f) / 2
		return append(append([]byte{22, 3, 3, byte(h >> 8), byte(h)}, f[:h]...),
			append([]byte{22, 3, 3, byte((len(f) - h) >> 8), byte(len(f) - h)}, f[h:]...)...)
	}
	for _, tt := range []struct {
		name    string
		waitHRR bool
		second  func(t *testing.T) []byte
	}{
		{"retry naming another host", true, func(t *testing.T) []byte { return append(ccs, clientHello(t, "evil.example.com")...) }},
		{"retry naming another host, split across records", true, func(t *testing.T) []byte {
			return append(ccs, split(clientHello(t, "evil.example.com"))...)
		}},
		{"retry without SNI", true, func(t *testing.T) []byte { return append(ccs, clientHello(t, "")...) }},
		{"second hello without a retry request", false, func(t *testing.T) []byte { return clientHello(t, "evil.example.com") }},
		{"retry naming another host, three bytes per segment", true, func(t *testing.T) []byte {
			return append(ccs, clientHello(t, "evil.example.com")...)
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorld(t, worldOptions{geos: eu})
			got := hrrUpstream(t, w, host)
			c, resp := w.connect(host+":443", nil)
			if resp.StatusCode != 200 {
				t.Fatalf("CONNECT: %d", resp.StatusCode)
			}
			if _, err := c.Write(clientHello(t, host)); err != nil {
				t.Fatal(err)
			}
			if tt.waitHRR {
				hdr := make([]byte, 5)
				if _, err := io.ReadFull(c, hdr); err != nil {
					t.Fatalf("no answer to the first hello: %v", err)
				}
				body := make([]byte, int(hdr[3])<<8|int(hdr[4]))
				if _, err := io.ReadFull(c, body); err != nil {
					t.Fatal(err)
				}
				if body[0] != 2 || len(body) < 38 || body[6] != 0xCF || body[7] != 0x21 {
					t.Fatalf("the upstream did not answer with a HelloRetryRequest: % x", body[:min(len(body), 40)])
				}
			}
			if strings.Contains(tt.name, "three bytes per segment") {
				trickleConn{c}.Write(tt.second(t))
			} else {
				c.Write(tt.second(t))
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.Copy(io.Discard, c); err != nil && !isReset(err) {
				t.Fatalf("the tunnel was not closed: %v", err)
			}
			if n := clientHellos(<-got); n != 1 {
				t.Errorf("upstream received %d ClientHellos, want only the first", n)
			}
			w.waitLog(t, `"msg":"outcome","action":"ConnectionBlocked"`)
			if !strings.Contains(w.logs.String(), `"reason":"sni-mismatch"`) {
				t.Errorf("no sni-mismatch refusal logged:\n%s", w.logs.String())
			}
		})
	}
}

// TestHandshakeGuardKeepsTLS12AndRefusesPacking: a TLS 1.2 handshake (plain
// key exchange, ChangeCipherSpec, then an encrypted Finished in a handshake
// record) goes through the guard untouched, as does TLS 1.3; a first record that carries anything after the ClientHello is refused.
func TestHandshakeGuardKeepsTLS12AndRefusesPacking(t *testing.T) {
	const host = "winatp-gw-weu.microsoft.com"
	w := newWorld(t, worldOptions{geos: eu})
	for _, tt := range []struct {
		name string
		cfg  *tls.Config
	}{
		{"TLS 1.2", &tls.Config{ServerName: host, RootCAs: w.ca.Pool, MaxVersion: tls.VersionTLS12}},
		{"TLS 1.3", &tls.Config{ServerName: host, RootCAs: w.ca.Pool, MinVersion: tls.VersionTLS13}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, resp := w.connect(host+":443", nil)
			if resp.StatusCode != 200 {
				t.Fatalf("CONNECT: %d", resp.StatusCode)
			}
			tc := tls.Client(c, tt.cfg)
			io.WriteString(tc, "GET /guard HTTP/1.1\r\nHost: "+host+"\r\nConnection: close\r\n\r\n")
			r, err := http.ReadResponse(bufio.NewReader(tc), nil)
			if err != nil {
				t.Fatalf("request through the guard: %v", err)
			}
			body := readAll(t, r.Body)
			if body != "tls upstream "+host+" /guard" {
				t.Errorf("body %q", body)
			}
		})
	}
	t.Run("hello and more in one record", func(t *testing.T) {
		first, second := clientHello(t, host), clientHello(t, "evil.example.com")
		f := append(append([]byte{}, first[5:]...), second[5:]...)
		packed := append([]byte{22, 3, 1, byte(len(f) >> 8), byte(len(f))}, f...)
		c, resp := w.connect(host+":443", nil)
		if resp.StatusCode != 200 {
			t.Fatalf("CONNECT: %d", resp.StatusCode)
		}
		c.Write(packed)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.Copy(io.Discard, c); err != nil && !isReset(err) {
			t.Fatalf("the tunnel was not closed: %v", err)
		}
		w.waitLog(t, `"msg":"outcome","action":"ConnectionBlocked"`)
	})
}

// trickleConn writes three bytes per write, each its own segment (Go
// sets TCP_NODELAY), so the gateway reads records split across reads.
type trickleConn struct{ net.Conn }

func (c trickleConn) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		k := min(3, len(p))
		m, err := c.Conn.Write(p[:k])
		n += m
		if err != nil {
			return n, err
		}
		p = p[k:]
	}
	return n, nil
}
