package proxy

import (
	"bufio"
	"crypto/tls"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
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
			checkStatus(t, resp, body, http.StatusBadGateway, ReasonUpstreamUnreachable)
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
		{"TRACE refused", req("TRACE", ""), http.MethodGet, 405, ReasonMethodNotAllowed, false, "", true, false},
		{"TRACE refused whatever Max-Forwards says", req("TRACE", "Max-Forwards: 5\r\n"), http.MethodGet, 405, ReasonMethodNotAllowed, false, "", true, false},
		{"TRACE to an unlisted host refused the same way", "TRACE http://unlisted-http.example.com/ HTTP/1.1\r\nHost: unlisted-http.example.com\r\n\r\n",
			http.MethodGet, 405, ReasonMethodNotAllowed, false, "", true, false},
		{"OPTIONS Max-Forwards 0 answered by the gateway", req("OPTIONS", "Max-Forwards: 0\r\n"), http.MethodOptions, 200, ReasonMaxForwards, false, "", true, false},
		{"OPTIONS Max-Forwards decremented", req("OPTIONS", "Max-Forwards: 3\r\n"), http.MethodOptions, 200, "", true, "2", false, false},
		{"OPTIONS bad Max-Forwards", req("OPTIONS", "Max-Forwards: three\r\n"), http.MethodOptions, 400, "bad-request", false, "", false, false},
		{"GET keeps Max-Forwards", req("GET", "Max-Forwards: 0\r\n"), http.MethodGet, 200, "", true, "0", false, false},
		{"websocket refused", req("GET", "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"),
			http.MethodGet, 403, ReasonUpgradeRefused, false, "", false, false},
		{"websocket among upgrades refused", req("GET", "Connection: Upgrade\r\nUpgrade: h2c, WebSocket\r\n"), http.MethodGet, 403, ReasonUpgradeRefused, false, "", false, false},
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
		{"TRACE", "TRACE /allowed/x HTTP/1.1\r\nHost: inspected.lab.test\r\n\r\n", 405, ReasonMethodNotAllowed},
		{"websocket", "GET /allowed/x HTTP/1.1\r\nHost: inspected.lab.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", 403, ReasonUpgradeRefused},
		{"OPTIONS Max-Forwards 0", "OPTIONS /allowed/x HTTP/1.1\r\nHost: inspected.lab.test\r\nMax-Forwards: 0\r\n\r\n", 200, ReasonMaxForwards},
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
