package proxy

// Adversarial requests against a live in-process gateway: host confusion, IP
// literal notations, malformed CONNECT targets, hostile DNS answers, DNS
// rebinding, request smuggling, oversized and foreign-protocol requests,
// pipelining and credential reuse. Every refusal is checked for its status and
// X-Gateway-Reason and for silence at the refused destination: the upstream
// counters of the world, counting sinks on 127.0.0.2 bound to the upstreams'
// own ports (so a wrongly dialed 127.0.0.2 would land there whatever the port
// mapping), and DNS query counts where a name must not even be resolved.
//
// Go's HTTP server rejects some request lines itself, before the gateway
// sees them; those answers are a bare 400 (or 431/505/501) without
// X-Gateway-Reason, and the tables mark them with wantReason "" and bare.

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/idna"

	"github.com/defendergw/gateway/internal/allowlist"
	"github.com/defendergw/gateway/internal/lab"
	"github.com/defendergw/gateway/internal/reason"
	"github.com/defendergw/gateway/internal/resolver"
	"github.com/defendergw/gateway/internal/testutil"
)

// advWorld is a world plus counting sinks on 127.0.0.2 at the TLS and HTTP
// upstreams' ports.
type advWorld struct {
	*world
	sink443, sink80 *testutil.Listener
}

func newAdvWorld(t testing.TB, o worldOptions) *advWorld {
	t.Helper()
	// The upstreams' ports are chosen by the OS on 127.0.0.1; the same port
	// on 127.0.0.2 may be taken (by another test's sink): then try a new
	// world.
	for attempt := 0; attempt < 20; attempt++ {
		w := newWorld(t, o)
		s443, err443 := sinkOn(t, fmt.Sprintf("127.0.0.2:%d", w.portMap[443]))
		s80, err80 := sinkOn(t, fmt.Sprintf("127.0.0.2:%d", w.portMap[80]))
		if err443 == nil && err80 == nil {
			return &advWorld{world: w, sink443: s443, sink80: s80}
		}
	}
	t.Fatal("no world whose upstream ports are free on 127.0.0.2")
	return nil
}

// sinkOn is testutil.Sink that reports a busy address instead of failing.
func sinkOn(t testing.TB, addr string) (*testutil.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	l := &testutil.Listener{Listener: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return l, nil
}

// snapshot is what the destinations have seen so far.
type snapshot struct {
	tls, s443, s80 int64
}

func (a *advWorld) snap() snapshot {
	return snapshot{a.tlsConns.Load(), a.sink443.Accepted(), a.sink80.Accepted()}
}

// drainHTTP returns the requests the plain upstream received since the last
// call (waiting briefly for stragglers).
func (a *advWorld) drainHTTP(wait time.Duration) []*http.Request {
	var got []*http.Request
	deadline := time.After(wait)
	for {
		select {
		case r := <-a.httpReqs:
			got = append(got, r)
		case <-deadline:
			return got
		}
	}
}

// quiet fails the test if any destination saw a connection or request since
// before.
func (a *advWorld) quiet(t *testing.T, before snapshot, what string) {
	t.Helper()
	reqs := a.drainHTTP(50 * time.Millisecond)
	now := a.snap()
	if n := now.tls - before.tls; n != 0 {
		t.Errorf("%s: TLS upstream saw %d connections, want 0", what, n)
	}
	if n := now.s443 - before.s443; n != 0 {
		t.Errorf("%s: sink 127.0.0.2:%d saw %d connections, want 0", what, a.sink443.Port(), n)
	}
	if n := now.s80 - before.s80; n != 0 {
		t.Errorf("%s: sink 127.0.0.2:%d saw %d connections, want 0", what, a.sink80.Port(), n)
	}
	for _, r := range reqs {
		t.Errorf("%s: HTTP upstream received %s %s (Host %s), want nothing", what, r.Method, r.URL, r.Host)
	}
}

// exchange writes raw to a fresh connection to the gateway and reads up to n
// responses (methods[i] tells the parser which request each one answers). It
// returns the responses read (bodies consumed) and the error that stopped
// reading, if any.
func exchange(t *testing.T, addr, raw string, methods ...string) ([]*http.Response, []string, error) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil && !isReset(err) {
		t.Fatalf("write: %v", err)
	}
	br := bufio.NewReader(c)
	var resps []*http.Response
	var bodies []string
	for _, m := range methods {
		resp, err := http.ReadResponse(br, &http.Request{Method: m})
		if err != nil {
			return resps, bodies, err
		}
		if m == http.MethodConnect && resp.StatusCode == 200 {
			// The body is the tunnel.
			resps, bodies = append(resps, resp), append(bodies, "")
			break
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		resps = append(resps, resp)
		bodies = append(bodies, string(b))
	}
	return resps, bodies, nil
}

// one sends raw and returns the single response.
func one(t *testing.T, addr, raw, method string) (*http.Response, string) {
	t.Helper()
	resps, bodies, err := exchange(t, addr, raw, method)
	if err != nil || len(resps) != 1 {
		t.Fatalf("no response to %q: %v", trunc(raw), err)
	}
	return resps[0], bodies[0]
}

func trunc(s string) string {
	if len(s) > 120 {
		return s[:120] + "..."
	}
	return s
}

// connectReq is a CONNECT whose Host header is a plain valid name, so that
// only the request target is under test (Go's server validates Host itself).
func connectReq(target string) string {
	return "CONNECT " + target + " HTTP/1.1\r\nHost: gateway.test\r\n\r\n"
}

func getReq(uri, host string) string {
	return "GET " + uri + " HTTP/1.1\r\nHost: " + host + "\r\n\r\n"
}

func checkStatus(t *testing.T, resp *http.Response, body string, wantStatus int, wantReason string) {
	t.Helper()
	if resp.StatusCode != wantStatus {
		t.Errorf("status %d (%s %q), want %d", resp.StatusCode, resp.Header.Get(ReasonHeader), body, wantStatus)
	}
	if got := resp.Header.Get(ReasonHeader); got != wantReason {
		t.Errorf("%s = %q, want %q (body %q)", ReasonHeader, got, wantReason, body)
	}
}

// punycodeOf returns the ASCII form of an internationalised name.
func punycodeOf(t *testing.T, s string) string {
	t.Helper()
	a, err := idna.Lookup.ToASCII(s)
	if err != nil {
		t.Fatalf("idna %q: %v", s, err)
	}
	return a
}

// tlsThrough completes a TLS handshake for sni over an established tunnel.
func (a *advWorld) tlsThrough(t *testing.T, c net.Conn, sni string) {
	t.Helper()
	tc := tls.Client(c, &tls.Config{ServerName: sni, RootCAs: a.ca.Pool})
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS through the tunnel: %v", err)
	}
	io.WriteString(tc, "GET /x HTTP/1.1\r\nHost: "+sni+"\r\nConnection: close\r\n\r\n")
	body, _ := io.ReadAll(tc)
	if !strings.Contains(string(body), "tls upstream "+sni+" /x") {
		t.Errorf("tunnel answer %q", body)
	}
}

// lookalikes resolve to 127.0.0.1, the address the test dialer lets through:
// wrongly allowing one of them would reach an upstream and be counted.
var lookalikes = []string{
	"evilwdcp.microsoft.com", "wdcp.microsoft.com", "wdcp.microsoft.com.evil.test", "eu.wdcp.microsoft.com.evil.test",
	"evil.test", "evilcrl.microsoft.com", "crl.microsoft.com.evil.test", "microsoft.com",
}

func TestAdversarialHostConfusion(t *testing.T) {
	w := newAdvWorld(t, worldOptions{geos: eu})
	cyrA := "win\u0430tp-gw-weu.microsoft.com"  // Cyrillic а
	cyrO := "eu.wdcp.micr\u043esoft.com"        // Cyrillic о in microsoft
	cyrC := "\u0441rl.microsoft.com"            // Cyrillic с
	greek := "winatp-gw-weu.micr\u03bfsoft.com" // Greek ο
	for _, n := range append(lookalikes, punycodeOf(t, cyrA), punycodeOf(t, cyrO), punycodeOf(t, cyrC), punycodeOf(t, greek)) {
		w.dns.Set(n, "127.0.0.1")
	}
	long63 := strings.Repeat("a", 63)
	long64 := strings.Repeat("a", 64)
	// 4*63 + 3 dots = 255 octets; minus the first label's 2 = 253.
	name253 := strings.Repeat("a", 61) + "." + long63 + "." + long63 + "." + long63
	name254 := "a" + name253

	const weu = "winatp-gw-weu.microsoft.com"
	const crlPath = "/pki/crl/products/a.crl"
	tests := []struct {
		name       string
		connect    string // CONNECT target, or
		uri, host  string // absolute-form request
		wantStatus int
		wantReason string
		bare       bool     // answered by Go's HTTP server itself
		sni        string   // allowed CONNECT: the SNI that must work through the tunnel
		upHost     string   // allowed absolute-form: the Host the upstream must see
		noDNS      []string // names that must not be resolved
	}{
		// Trailing dots.
		{name: "connect one trailing dot", connect: weu + ".:443", wantStatus: 200, sni: weu},
		{name: "connect two trailing dots", connect: weu + "..:443", wantStatus: 400, wantReason: "bad-request"},
		{name: "connect leading dot", connect: "." + weu + ":443", wantStatus: 400, wantReason: "bad-request"},
		{name: "http one trailing dot", uri: "http://crl.microsoft.com." + crlPath, host: "crl.microsoft.com.", wantStatus: 200, upHost: "crl.microsoft.com"},
		{name: "http two trailing dots", uri: "http://crl.microsoft.com.." + crlPath, host: "crl.microsoft.com", wantStatus: 400, wantReason: "bad-request"},
		// Case.
		{name: "connect mixed case", connect: "WinATP-GW-WEU.Microsoft.COM:443", wantStatus: 200, sni: weu},
		{name: "http mixed case", uri: "http://CRL.Microsoft.COM" + crlPath, host: "CRL.Microsoft.COM", wantStatus: 200, upHost: "crl.microsoft.com"},
		{name: "http upper-case scheme", uri: "HTTP://crl.microsoft.com" + crlPath, host: "crl.microsoft.com", wantStatus: 200, upHost: "crl.microsoft.com"},
		// Suffix look-alikes.
		{name: "connect suffix without dot", connect: "evilwdcp.microsoft.com:443", wantStatus: 403, wantReason: "not-listed", noDNS: []string{"evilwdcp.microsoft.com"}},
		{name: "connect wildcard apex", connect: "wdcp.microsoft.com:443", wantStatus: 403, wantReason: "not-listed", noDNS: []string{"wdcp.microsoft.com"}},
		{name: "connect listed name as prefix", connect: "wdcp.microsoft.com.evil.test:443", wantStatus: 403, wantReason: "not-listed", noDNS: []string{"wdcp.microsoft.com.evil.test"}},
		{name: "connect listed subdomain as prefix", connect: "eu.wdcp.microsoft.com.evil.test:443", wantStatus: 403, wantReason: "not-listed", noDNS: []string{"eu.wdcp.microsoft.com.evil.test"}},
		{name: "connect registrable parent", connect: "microsoft.com:443", wantStatus: 403, wantReason: "not-listed", noDNS: []string{"microsoft.com"}},
		{name: "http suffix without dot", uri: "http://evilcrl.microsoft.com" + crlPath, host: "evilcrl.microsoft.com", wantStatus: 403, wantReason: "not-listed", noDNS: []string{"evilcrl.microsoft.com"}},
		{name: "http listed name as prefix", uri: "http://crl.microsoft.com.evil.test" + crlPath, host: "crl.microsoft.com", wantStatus: 403, wantReason: "not-listed", noDNS: []string{"crl.microsoft.com.evil.test"}},
		// IDNA and mixed scripts.
		{name: "connect cyrillic a", connect: cyrA + ":443", wantStatus: 403, wantReason: "not-listed", noDNS: []string{punycodeOf(t, cyrA)}},
		{name: "connect cyrillic o in microsoft", connect: cyrO + ":443", wantStatus: 403, wantReason: "not-listed", noDNS: []string{punycodeOf(t, cyrO)}},
		{name: "connect greek omicron", connect: greek + ":443", wantStatus: 403, wantReason: "not-listed", noDNS: []string{punycodeOf(t, greek)}},
		{name: "connect punycode look-alike", connect: punycodeOf(t, cyrA) + ":443", wantStatus: 403, wantReason: "not-listed", noDNS: []string{punycodeOf(t, cyrA)}},
		{name: "connect upper-case punycode look-alike", connect: strings.ToUpper(punycodeOf(t, cyrA)) + ":443", wantStatus: 403, wantReason: "not-listed", noDNS: []string{punycodeOf(t, cyrA)}},
		{name: "connect invalid punycode", connect: "xn--zz.microsoft.com:443", wantStatus: 400, wantReason: "bad-request"},
		// UTS #46 maps full-width forms to ASCII: the listed name itself is
		// decided, dialed and must be named by the SNI.
		{name: "connect fullwidth letters", connect: "\uff57\uff49\uff4e\uff41\uff54\uff50-gw-weu.microsoft.com:443", wantStatus: 200, sni: weu},
		{name: "connect fullwidth dots", connect: "winatp-gw-weu\uff0emicrosoft\uff0ecom:443", wantStatus: 200, sni: weu},
		{name: "connect ideographic full stop", connect: "winatp-gw-weu\u3002microsoft\u3002com:443", wantStatus: 200, sni: weu},
		{name: "http cyrillic c", uri: "http://" + cyrC + crlPath, host: "crl.microsoft.com", wantStatus: 403, wantReason: "not-listed", noDNS: []string{punycodeOf(t, cyrC)}},
		{name: "http punycode look-alike", uri: "http://" + punycodeOf(t, cyrC) + crlPath, host: "crl.microsoft.com", wantStatus: 403, wantReason: "not-listed", noDNS: []string{punycodeOf(t, cyrC)}},
		{name: "http fullwidth host", uri: "http://\uff43\uff52\uff4c.microsoft.com" + crlPath, host: "crl.microsoft.com", wantStatus: 200, upHost: "crl.microsoft.com"},
		{name: "connect zero-width joiner", connect: "winatp\u200d-gw-weu.microsoft.com:443", wantStatus: 400, wantReason: "bad-request"},
		{name: "connect underscore", connect: "winatp_gw_weu.microsoft.com:443", wantStatus: 400, wantReason: "bad-request"},
		{name: "connect invalid utf-8", connect: "winatp-gw-weu\xff.microsoft.com:443", wantStatus: 400, wantReason: "bad-request"},
		// Percent-encoding in the host.
		{name: "connect encoded dot", connect: "winatp-gw-weu%2emicrosoft.com:443", wantStatus: 400, bare: true},
		{name: "connect encoded letter", connect: "%77inatp-gw-weu.microsoft.com:443", wantStatus: 400, bare: true},
		{name: "connect encoded NUL", connect: weu + "%00:443", wantStatus: 400, bare: true},
		{name: "connect encoded utf-8", connect: "winatp-gw-w%C3%A9u.microsoft.com:443", wantStatus: 400, wantReason: "bad-request"},
		{name: "http encoded dot", uri: "http://crl%2emicrosoft.com" + crlPath, host: "crl.microsoft.com", wantStatus: 400, bare: true},
		{name: "http encoded letter", uri: "http://%63rl.microsoft.com" + crlPath, host: "crl.microsoft.com", wantStatus: 400, bare: true},
		{name: "http encoded cyrillic", uri: "http://%D1%81rl.microsoft.com" + crlPath, host: "crl.microsoft.com", wantStatus: 403, wantReason: "not-listed", noDNS: []string{punycodeOf(t, cyrC)}},
		// Userinfo tricks.
		{name: "http listed name as userinfo", uri: "http://" + weu + "@evil.test/", host: "evil.test", wantStatus: 400, wantReason: "bad-request", noDNS: []string{"evil.test"}},
		{name: "http user and password", uri: "http://u:p@evil.test/", host: "evil.test", wantStatus: 400, wantReason: "bad-request", noDNS: []string{"evil.test"}},
		{name: "http empty userinfo", uri: "http://@crl.microsoft.com" + crlPath, host: "crl.microsoft.com", wantStatus: 400, wantReason: "bad-request"},
		{name: "http backslash before at", uri: `http://evil.test\@crl.microsoft.com` + crlPath, host: "crl.microsoft.com", wantStatus: 400, bare: true, noDNS: []string{"evil.test"}},
		{name: "http encoded at", uri: "http://evil.test%40crl.microsoft.com" + crlPath, host: "crl.microsoft.com", wantStatus: 400, bare: true, noDNS: []string{"evil.test"}},
		{name: "connect userinfo", connect: "evil.test@" + weu + ":443", wantStatus: 400, wantReason: "bad-request", noDNS: []string{"evil.test"}},
		{name: "connect listed name as userinfo", connect: weu + ":443@evil.test:443", wantStatus: 400, wantReason: "bad-request", noDNS: []string{"evil.test"}},
		// The absolute URI decides; the Host header is ignored.
		{name: "uri listed, host header unlisted", uri: "http://crl.microsoft.com" + crlPath, host: "evil.test", wantStatus: 200, upHost: "crl.microsoft.com", noDNS: []string{"evil.test"}},
		{name: "uri unlisted, host header listed", uri: "http://evil.test" + crlPath, host: "crl.microsoft.com", wantStatus: 403, wantReason: "not-listed", noDNS: []string{"evil.test"}},
		{name: "uri listed, host header with port", uri: "http://crl.microsoft.com" + crlPath, host: "crl.microsoft.com:8080", wantStatus: 200, upHost: "crl.microsoft.com"},
		{name: "connect target listed, host header unlisted", connect: weu + ":443", host: "evil.test:443", wantStatus: 200, sni: weu, noDNS: []string{"evil.test"}},
		{name: "connect target unlisted, host header listed", connect: "evil.test:443", host: weu + ":443", wantStatus: 403, wantReason: "not-listed", noDNS: []string{"evil.test"}},
		// Backslashes.
		{name: "connect backslash in host", connect: `evil.test\` + weu + ":443", wantStatus: 400, bare: true, noDNS: []string{"evil.test"}},
		{name: "http backslash in host", uri: `http://evil.test\crl.microsoft.com` + crlPath, host: "crl.microsoft.com", wantStatus: 400, bare: true},
		{name: "http backslash after host", uri: `http://crl.microsoft.com\.evil.test` + crlPath, host: "crl.microsoft.com", wantStatus: 400, bare: true},
		{name: "http backslashes in path", uri: `http://crl.microsoft.com\pki\crl\products\a.crl`, host: "crl.microsoft.com", wantStatus: 400, bare: true},
		{name: "http backslash traversal in path", uri: `http://www.microsoft.com/pkiops/crl/..\..\private`, host: "www.microsoft.com", wantStatus: 403, wantReason: "not-listed"},
		{name: "http encoded traversal in path", uri: "http://www.microsoft.com/pkiops/crl/%2e%2e/%2e%2e/private", host: "www.microsoft.com", wantStatus: 403, wantReason: "not-listed"},
		{name: "http semicolon traversal in path", uri: "http://www.microsoft.com/pkiops/crl/..;/..;/private", host: "www.microsoft.com", wantStatus: 400, wantReason: "bad-request"},
		// Schemes and odd absolute forms.
		{name: "http ftp scheme", uri: "ftp://crl.microsoft.com" + crlPath, host: "crl.microsoft.com", wantStatus: 400, wantReason: "bad-request"},
		{name: "http ws scheme", uri: "ws://crl.microsoft.com" + crlPath, host: "crl.microsoft.com", wantStatus: 400, wantReason: "bad-request"},
		{name: "http file scheme", uri: "file://crl.microsoft.com/etc/passwd", host: "crl.microsoft.com", wantStatus: 400, wantReason: "bad-request"},
		{name: "http one slash", uri: "http:/crl.microsoft.com" + crlPath, host: "crl.microsoft.com", wantStatus: 400, wantReason: "bad-request"},
		{name: "http opaque", uri: "http:crl.microsoft.com" + crlPath, host: "crl.microsoft.com", wantStatus: 400, wantReason: "bad-request"},
		{name: "http empty host", uri: "http://" + crlPath, host: "crl.microsoft.com", wantStatus: 400, wantReason: "bad-request"},
		{name: "http leading-zero port", uri: "http://crl.microsoft.com:080" + crlPath, host: "crl.microsoft.com", wantStatus: 400, wantReason: "bad-request"},
		{name: "http port 65616 (80 mod 2^16)", uri: "http://crl.microsoft.com:65616" + crlPath, host: "crl.microsoft.com", wantStatus: 400, wantReason: "bad-request"},
		{name: "http port 0", uri: "http://crl.microsoft.com:0" + crlPath, host: "crl.microsoft.com", wantStatus: 400, wantReason: "bad-request"},
		{name: "http explicit port 80", uri: "http://crl.microsoft.com:80" + crlPath, host: "crl.microsoft.com", wantStatus: 200, upHost: "crl.microsoft.com"},
		// Overlong names.
		{name: "connect 253-octet name", connect: name253 + ":443", wantStatus: 403, wantReason: "not-listed"},
		{name: "connect 254-octet name", connect: name254 + ":443", wantStatus: 400, wantReason: "bad-request"},
		{name: "connect 254-octet name with trailing dot", connect: name254 + ".:443", wantStatus: 400, wantReason: "bad-request"},
		{name: "connect 63-octet label", connect: long63 + ".wdcp.microsoft.com:443", wantStatus: 502, wantReason: "dns-failure"},
		{name: "connect 64-octet label", connect: long64 + ".wdcp.microsoft.com:443", wantStatus: 400, wantReason: "bad-request"},
		{name: "connect 64-octet label via idna", connect: strings.Repeat("\uff41", 64) + ".wdcp.microsoft.com:443", wantStatus: 400, wantReason: "bad-request"},
		{name: "connect 10k-octet name", connect: strings.Repeat("a.", 5000) + "com:443", wantStatus: 400, wantReason: "bad-request"},
		{name: "http 254-octet name", uri: "http://" + name254 + "/", host: "x", wantStatus: 400, wantReason: "bad-request"},
		{name: "http 64-octet label", uri: "http://" + long64 + ".download.windowsupdate.com/", host: "x", wantStatus: 400, wantReason: "bad-request"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := w.snap()
			w.drainHTTP(0)
			queries := map[string]int{}
			for _, n := range tt.noDNS {
				queries[n] = w.dns.Queries(n)
			}
			if tt.connect != "" {
				host := tt.host
				if host == "" {
					host = "gateway.test"
				}
				c, err := net.Dial("tcp", w.proxyURL.Host)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				io.WriteString(c, "CONNECT "+tt.connect+" HTTP/1.1\r\nHost: "+host+"\r\n\r\n")
				resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodConnect})
				if err != nil {
					t.Fatalf("CONNECT %q: %v", tt.connect, err)
				}
				var body []byte
				if resp.StatusCode != 200 {
					body, _ = io.ReadAll(resp.Body)
				}
				checkStatus(t, resp, string(body), tt.wantStatus, tt.wantReason)
				if resp.StatusCode == 200 && tt.sni != "" {
					// The gateway sends nothing after the 200 before the
					// ClientHello, so the reader buffered nothing of the tunnel.
					w.tlsThrough(t, c, tt.sni)
					if n := w.tlsConns.Load() - before.tls; n != 1 {
						t.Errorf("upstream saw %d connections, want 1", n)
					}
				}
			} else {
				resp, body := one(t, w.proxyURL.Host, getReq(tt.uri, tt.host), http.MethodGet)
				checkStatus(t, resp, body, tt.wantStatus, tt.wantReason)
				if resp.StatusCode == 200 && tt.upHost != "" {
					reqs := w.drainHTTP(100 * time.Millisecond)
					if len(reqs) != 1 {
						t.Fatalf("upstream received %d requests, want 1", len(reqs))
					}
					if reqs[0].Host != tt.upHost {
						t.Errorf("upstream Host = %q, want %q", reqs[0].Host, tt.upHost)
					}
				}
			}
			if tt.wantStatus != 200 {
				w.quiet(t, before, "refused "+tt.name)
			}
			if tt.wantReason == "" && tt.wantStatus != 200 && !tt.bare {
				t.Errorf("test table: a refusal needs a reason or bare")
			}
			for _, n := range tt.noDNS {
				if q := w.dns.Queries(n) - queries[n]; q != 0 {
					t.Errorf("%s was resolved (%d queries), want no lookup", n, q)
				}
			}
		})
	}
}

// ipLiteralForms all denote 127.0.0.2 (or another internal address) in some
// notation a resolver or browser accepts.
var ipLiteralForms = []struct {
	name, host, wantReason string
}{
	{"dotted", "127.0.0.2", "ip-literal"},
	{"dotted with trailing dot", "127.0.0.2.", "ip-literal"},
	{"decimal", "2130706434", "ip-literal"},
	{"octal", "0177.0.0.2", "ip-literal"},
	{"octal dword", "017700000002", "ip-literal"},
	{"hex", "0x7f.0.0.2", "ip-literal"},
	{"hex upper case", "0X7F.0.0.2", "ip-literal"},
	{"hex dword", "0x7f000002", "ip-literal"},
	{"hex bare prefix", "0x7f.0.0.0x", "ip-literal"},
	{"short two parts", "127.2", "ip-literal"},
	{"short three parts", "127.0.2", "ip-literal"},
	{"leading zeros", "127.000.000.002", "ip-literal"},
	{"mixed notation", "0x7f.0.0.02", "ip-literal"},
	{"ipv6 loopback", "[::1]", "ip-literal"},
	{"ipv4-mapped", "[::ffff:127.0.0.2]", "ip-literal"},
	{"ipv4-mapped hex", "[::ffff:7f00:2]", "ip-literal"},
	{"ipv4-compatible", "[::127.0.0.2]", "ip-literal"},
	{"nat64", "[64:ff9b::7f00:2]", "ip-literal"},
	{"ipv6 upper case", "[::FFFF:7F00:2]", "ip-literal"},
	{"ipv6 expanded", "[0:0:0:0:0:ffff:7f00:2]", "ip-literal"},
	{"zoned", "[fe80::1%25lo]", "ip-literal"},
	{"zoned loopback", "[::1%25lo]", "ip-literal"},
}

func TestAdversarialIPLiterals(t *testing.T) {
	w := newAdvWorld(t, worldOptions{geos: eu})
	for _, f := range ipLiteralForms {
		t.Run("connect "+f.name, func(t *testing.T) {
			before := w.snap()
			q := w.dns.Queries(strings.TrimSuffix(f.host, "."))
			resp, body := one(t, w.proxyURL.Host, connectReq(f.host+":443"), http.MethodConnect)
			checkStatus(t, resp, body, statusOf(f.wantReason), f.wantReason)
			w.quiet(t, before, f.host)
			if n := w.dns.Queries(strings.TrimSuffix(f.host, ".")) - q; n != 0 {
				t.Errorf("%s was looked up in DNS (%d queries)", f.host, n)
			}
		})
		t.Run("http "+f.name, func(t *testing.T) {
			before := w.snap()
			w.drainHTTP(0)
			resp, body := one(t, w.proxyURL.Host, getReq("http://"+f.host+"/pki/crl/products/a.crl", "crl.microsoft.com"), http.MethodGet)
			checkStatus(t, resp, body, statusOf(f.wantReason), f.wantReason)
			w.quiet(t, before, f.host)
		})
	}
	// Forms Go's HTTP server refuses before the gateway sees them.
	for _, target := range []string{"::1:443", "[::1:443", "[fe80::1%eth0]:443", "[::ffff:127.0.0.2]]:443", "[127.0.0.2]:443", "[]:443"} {
		t.Run("bare "+target, func(t *testing.T) {
			before := w.snap()
			resp, body := one(t, w.proxyURL.Host, connectReq(target), http.MethodConnect)
			if resp.StatusCode != 400 {
				t.Errorf("CONNECT %s: %d %q, want 400", target, resp.StatusCode, body)
			}
			w.quiet(t, before, target)
		})
	}
}

func TestAdversarialConnectTargets(t *testing.T) {
	w := newAdvWorld(t, worldOptions{geos: eu})
	const weu = "winatp-gw-weu.microsoft.com"
	tests := []struct {
		name       string
		line       string // whole request line + headers, or
		target     string // CONNECT target
		wantStatus int
		wantReason string // "" = Go's server answered (bare 400)
	}{
		{name: "missing port", target: weu, wantStatus: 400, wantReason: "bad-request"},
		{name: "empty port", target: weu + ":", wantStatus: 400, wantReason: "bad-request"},
		{name: "port 0", target: weu + ":0", wantStatus: 400, wantReason: "bad-request"},
		{name: "port 65536", target: weu + ":65536", wantStatus: 400, wantReason: "bad-request"},
		{name: "port 4294967739 (443 mod 2^32)", target: weu + ":4294967739", wantStatus: 400, wantReason: "bad-request"},
		{name: "port 66979 (443 mod 2^16)", target: weu + ":66979", wantStatus: 400, wantReason: "bad-request"},
		{name: "leading zero port", target: weu + ":0443", wantStatus: 400, wantReason: "bad-request"},
		{name: "plus sign", target: weu + ":+443", wantStatus: 400},
		{name: "minus sign", target: weu + ":-443", wantStatus: 400},
		{name: "hex port", target: weu + ":0x1bb", wantStatus: 400},
		{name: "named port", target: weu + ":https", wantStatus: 400},
		{name: "two ports", target: weu + ":443:443", wantStatus: 400},
		{name: "empty host", target: ":443", wantStatus: 400, wantReason: "bad-request"},
		{name: "path", target: weu + ":443/path", wantStatus: 400, wantReason: "bad-request"},
		{name: "query", target: weu + ":443?x", wantStatus: 400, wantReason: "bad-request"},
		{name: "fragment", target: weu + ":443#x", wantStatus: 400},
		{name: "scheme", target: "https://" + weu + ":443", wantStatus: 400, wantReason: "bad-request"},
		{name: "origin form", target: "/" + weu + ":443", wantStatus: 400, wantReason: "bad-request"},
		{name: "asterisk", target: "*", wantStatus: 400, wantReason: "bad-request"},
		{name: "space before port", line: "CONNECT " + weu + " :443 HTTP/1.1\r\nHost: x\r\n\r\n", wantStatus: 400},
		{name: "space inside host", line: "CONNECT winatp-gw-weu .microsoft.com:443 HTTP/1.1\r\nHost: x\r\n\r\n", wantStatus: 400},
		{name: "tab inside target", line: "CONNECT " + weu + "\t:443 HTTP/1.1\r\nHost: x\r\n\r\n", wantStatus: 400},
		{name: "two spaces", line: "CONNECT  " + weu + ":443 HTTP/1.1\r\nHost: x\r\n\r\n", wantStatus: 400},
		{name: "no version", line: "CONNECT " + weu + ":443\r\nHost: x\r\n\r\n", wantStatus: 400},
		{name: "lower-case method", line: "connect " + weu + ":443 HTTP/1.1\r\nHost: x\r\n\r\n", wantStatus: 400, wantReason: "bad-request"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := w.snap()
			raw := tt.line
			if raw == "" {
				raw = connectReq(tt.target)
			}
			resp, body := one(t, w.proxyURL.Host, raw, http.MethodConnect)
			checkStatus(t, resp, body, tt.wantStatus, tt.wantReason)
			w.quiet(t, before, tt.name)
		})
	}
}

func TestAdversarialDNSAnswers(t *testing.T) {
	w := newAdvWorld(t, worldOptions{geos: eu})
	tests := []struct {
		name    string
		answers []string
	}{
		{"internal A", []string{"127.0.0.2"}},
		{"ipv4-mapped AAAA", []string{"::ffff:127.0.0.2"}},
		{"allowed A and ipv4-mapped AAAA of it", []string{"127.0.0.1", "::ffff:127.0.0.1"}},
		{"allowed and internal A", []string{"127.0.0.1", "127.0.0.2"}},
		{"internal and allowed A", []string{"127.0.0.2", "127.0.0.1"}},
		{"allowed A and loopback AAAA", []string{"127.0.0.1", "::1"}},
		{"ipv4-compatible AAAA", []string{"::127.0.0.2"}},
		{"unspecified A", []string{"0.0.0.0"}},
		{"unspecified AAAA", []string{"::"}},
	}
	for i, tt := range tests {
		t.Run("connect "+tt.name, func(t *testing.T) {
			name := fmt.Sprintf("poisoned%d.wdcp.microsoft.com", i)
			w.dns.Set(name, tt.answers...)
			before := w.snap()
			resp, body := one(t, w.proxyURL.Host, connectReq(name+":443")+string(clientHello(t, name)), http.MethodConnect)
			checkStatus(t, resp, body, 403, "private-destination")
			w.quiet(t, before, name)
		})
		t.Run("http "+tt.name, func(t *testing.T) {
			name := fmt.Sprintf("poisoned%d.download.windowsupdate.com", i)
			w.dns.Set(name, tt.answers...)
			before := w.snap()
			w.drainHTTP(0)
			resp, body := one(t, w.proxyURL.Host, getReq("http://"+name+"/a.cab", name), http.MethodGet)
			checkStatus(t, resp, body, 403, "private-destination")
			w.quiet(t, before, name)
		})
	}
	t.Run("verify_sni false rule", func(t *testing.T) {
		// raw.lab.test dials before the 200: the check must still come first.
		w.dns.Set("raw.lab.test", "127.0.0.1", "127.0.0.2")
		before := w.snap()
		resp, body := one(t, w.proxyURL.Host, connectReq("raw.lab.test:443"), http.MethodConnect)
		checkStatus(t, resp, body, 403, "private-destination")
		w.quiet(t, before, "raw.lab.test")
	})
}

// newUncachedGateway starts a second gateway in front of w's DNS and upstreams
// whose resolver effectively caches nothing (1 ms TTL), so every lookup asks
// the DNS server again: answers can change between the check and the dial.
func newUncachedGateway(t *testing.T, w *advWorld) (addr string, srv *Server) {
	t.Helper()
	res, err := resolver.New(resolver.Options{Servers: []string{w.dns.Addr}, Timeout: time.Second,
		MinTTL: time.Millisecond, MaxTTL: time.Millisecond, NegativeTTL: time.Millisecond, CacheSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cat, err := allowlist.Embedded()
	if err != nil {
		t.Fatal(err)
	}
	rs, err := allowlist.ParseRules([]byte(rawRule), "rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	policy, err := allowlist.NewPolicy(cat, allowlist.Options{Geographies: eu, Rules: rs.Rules})
	if err != nil {
		t.Fatal(err)
	}
	d := &resolver.Dialer{Resolver: res, Timeout: 2 * time.Second, Policy: &resolver.Policy{
		AllowPrivate: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")},
		Self:         []netip.AddrPort{netip.MustParseAddrPort(ln.Addr().String())},
	}}
	srv, err = New(Options{
		Policy:                func() *allowlist.Policy { return policy },
		Dialer:                worldDialer{PortMap: lab.PortMap{Dialer: d, Map: w.world.mapPort}, w: w.world},
		Logger:                slog.New(slog.NewJSONHandler(w.logs, nil)),
		DialTimeout:           3 * time.Second,
		ResponseHeaderTimeout: 5 * time.Second,
		UpstreamTLS:           &tls.Config{RootCAs: w.ca.Pool},
	})
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: srv, ReadHeaderTimeout: 5 * time.Second}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close(); srv.Close() })
	return ln.Addr().String(), srv
}

func TestAdversarialDNSRebinding(t *testing.T) {
	w := newAdvWorld(t, worldOptions{geos: eu})
	gw, srv := newUncachedGateway(t, w)

	t.Run("verified tunnel dials the checked address", func(t *testing.T) {
		// A name the TLS upstream's certificate covers.
		const name = "eu.wdcp.microsoft.com"
		w.dns.Set(name, "127.0.0.1")
		c, err := net.Dial("tcp", gw)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, connectReq(name+":443"))
		resp, err := http.ReadResponse(bufio.NewReaderSize(c, 16), &http.Request{Method: http.MethodConnect})
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("CONNECT: %v %v", resp, err)
		}
		q := w.dns.Queries(name)
		// The name now points inside; the cache has expired.
		w.dns.Set(name, "127.0.0.2")
		time.Sleep(10 * time.Millisecond)
		before := w.snap()
		w.tlsThrough(t, c, name)
		if n := w.tlsConns.Load() - before.tls; n != 1 {
			t.Errorf("checked upstream 127.0.0.1 saw %d connections, want 1", n)
		}
		if n := w.sink443.Accepted() - before.s443; n != 0 {
			t.Errorf("rebound address 127.0.0.2 saw %d connections, want 0", n)
		}
		if n := w.dns.Queries(name) - q; n != 0 {
			t.Errorf("the gateway resolved %s again after the check (%d queries)", name, n)
		}
		// A new CONNECT sees the new answer and is refused.
		before = w.snap()
		resp, body := one(t, gw, connectReq(name+":443")+string(clientHello(t, name)), http.MethodConnect)
		checkStatus(t, resp, body, 403, "private-destination")
		w.quiet(t, before, name)
	})
	t.Run("plain http checks every dial", func(t *testing.T) {
		const name = "rebind.download.windowsupdate.com"
		w.dns.Set(name, "127.0.0.1")
		w.drainHTTP(0)
		resp, body := one(t, gw, getReq("http://"+name+"/a.cab", name), http.MethodGet)
		checkStatus(t, resp, body, 200, "")
		if n := len(w.drainHTTP(100 * time.Millisecond)); n != 1 {
			t.Errorf("upstream saw %d requests, want 1", n)
		}
		w.dns.Set(name, "127.0.0.2")
		srv.Close() // drop pooled upstream connections so the next request dials
		time.Sleep(10 * time.Millisecond)
		before := w.snap()
		resp, body = one(t, gw, getReq("http://"+name+"/a.cab", name), http.MethodGet)
		checkStatus(t, resp, body, 403, "private-destination")
		w.quiet(t, before, name)
	})
	t.Run("flip-flopping answers", func(t *testing.T) {
		// Whatever the DNS says at which moment, only 127.0.0.1 may ever be
		// connected to.
		const name = "flip.wdcp.microsoft.com"
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if i%2 == 0 {
					w.dns.Set(name, "127.0.0.1")
				} else {
					w.dns.Set(name, "127.0.0.2")
				}
				time.Sleep(time.Millisecond)
			}
		}()
		before := w.snap()
		for range 30 {
			resp, _, err := exchange(t, gw, connectReq(name+":443")+string(clientHello(t, name)), http.MethodConnect)
			if err != nil || len(resp) != 1 {
				continue
			}
			if s, r := resp[0].StatusCode, resp[0].Header.Get(ReasonHeader); s != 200 && r != "private-destination" {
				t.Errorf("got %d %q, want 200 or 403 private-destination", s, r)
			}
		}
		close(stop)
		<-done
		time.Sleep(50 * time.Millisecond)
		if n := w.sink443.Accepted() - before.s443; n != 0 {
			t.Errorf("127.0.0.2 saw %d connections while the answer flip-flopped", n)
		}
	})
}

// smuggled is an origin-form request hidden in a body: it must never reach
// the upstream (the gateway answers origin-form requests itself).
const smuggled = "GET /pki/crl/products/smuggled HTTP/1.1\r\nHost: crl.microsoft.com\r\n\r\n"

// Outcomes a smuggling attempt may have.
const (
	// rejected: Go's server answers 400 (or 501 for an unknown
	// Transfer-Encoding) and nothing reaches the upstream.
	rejected = iota
	// oneThenClose: the request is forwarded as exactly one well-formed
	// request and the connection is closed after the response, so no byte
	// behind it is read as a request (RFC 9112 §6.1: a server that
	// processes a request with both Content-Length and Transfer-Encoding
	// "MUST close the connection after responding").
	oneThenClose
	// oneFolded: obs-fold replaced by a space (RFC 9112 §5.2 allows this
	// instead of 400); exactly one request reaches the upstream.
	oneFolded
	// badBody: the chunked body is malformed, which is seen only while it
	// is forwarded; the client's error is a 400 bad-request, not an
	// upstream failure.
	badBody
)

func TestAdversarialSmuggling(t *testing.T) {
	w := newAdvWorld(t, worldOptions{geos: eu})
	const uri = "http://crl.microsoft.com/pki/crl/products/a.crl"
	const head = "POST " + uri + " HTTP/1.1\r\nHost: crl.microsoft.com\r\n"
	tests := []struct {
		name       string
		raw        string
		outcome    int
		wantStatus int // rejected: Go's bare status
	}{
		{"content-length and transfer-encoding", head + "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled, oneThenClose, 0},
		{"transfer-encoding and content-length", head + "Transfer-Encoding: chunked\r\nContent-Length: 74\r\n\r\n0\r\n\r\n" + smuggled, oneThenClose, 0},
		{"two different content-lengths", head + "Content-Length: 0\r\nContent-Length: 74\r\n\r\n" + smuggled, rejected, 400},
		{"content-length list", head + "Content-Length: 0, 74\r\n\r\n" + smuggled, rejected, 400},
		{"signed content-length", head + "Content-Length: +74\r\n\r\n" + smuggled, rejected, 400},
		{"hex content-length", head + "Content-Length: 0x4a\r\n\r\n" + smuggled, rejected, 400},
		{"transfer-encoding identity,chunked", head + "Transfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n" + smuggled, rejected, 501},
		{"transfer-encoding xchunked", head + "Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" + smuggled, rejected, 501},
		{"two transfer-encodings", head + "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n" + smuggled, rejected, 501},
		{"transfer-encoding with space before colon", head + "Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n" + smuggled, rejected, 400},
		{"header line starting with space", head + " Content-Length: 74\r\n\r\n" + smuggled, rejected, 400},
		{"bare CR", "POST " + uri + " HTTP/1.1\rHost: crl.microsoft.com\r\nContent-Length: 0\r\n\r\n" + smuggled, rejected, 400},
		{"obs-fold transfer-encoding", head + "Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n" + smuggled, oneFolded, 0},
		{"obs-fold header", head + "X-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n" + smuggled, oneFolded, 0},
		{"chunk size overflow", head + "Transfer-Encoding: chunked\r\n\r\nffffffffffffffff1\r\nx\r\n0\r\n\r\n" + smuggled, badBody, 0},
		{"negative chunk size", head + "Transfer-Encoding: chunked\r\n\r\n-1\r\nx\r\n0\r\n\r\n" + smuggled, badBody, 0},
		{"chunk size with 0x", head + "Transfer-Encoding: chunked\r\n\r\n0x4\r\nabcd\r\n0\r\n\r\n" + smuggled, badBody, 0},
		{"chunk data longer than size", head + "Transfer-Encoding: chunked\r\n\r\n2\r\nabcd\r\n0\r\n\r\n" + smuggled, badBody, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w.drainHTTP(0)
			before := w.snap()
			resps, bodies, err := exchange(t, w.proxyURL.Host, tt.raw, "POST", "GET")
			if len(resps) == 0 {
				t.Fatalf("no response: %v", err)
			}
			reqs := w.drainHTTP(100 * time.Millisecond)
			for _, r := range reqs {
				if strings.Contains(r.URL.Path, "smuggled") {
					t.Errorf("smuggled request reached the upstream: %s %s", r.Method, r.URL)
				}
			}
			if len(reqs) > 1 {
				t.Errorf("upstream saw %d requests, want at most 1", len(reqs))
			}
			if n := w.snap(); n != before {
				t.Errorf("destinations saw connections: %+v -> %+v", before, n)
			}
			switch tt.outcome {
			case rejected:
				checkStatus(t, resps[0], bodies[0], tt.wantStatus, "")
				if len(reqs) != 0 {
					t.Errorf("rejected request reached the upstream")
				}
			case oneThenClose, oneFolded:
				checkStatus(t, resps[0], bodies[0], 200, "")
				if len(reqs) != 1 || reqs[0].URL.Path != "/pki/crl/products/a.crl" {
					t.Errorf("upstream saw %d requests, want exactly the POST", len(reqs))
				}
				if tt.outcome == oneThenClose && len(resps) > 1 {
					t.Errorf("connection kept open after a request with both Content-Length and Transfer-Encoding: "+
						"the bytes behind its body were read as a second request and answered %d %q (RFC 9112 §6.1: MUST close)",
						resps[1].StatusCode, bodies[1])
				}
			case badBody:
				checkStatus(t, resps[0], bodies[0], 400, "bad-request")
				if len(resps) > 1 {
					t.Errorf("bytes behind a malformed body were read as a request: %d", resps[1].StatusCode)
				}
			}
		})
	}
	t.Run("bare LF line endings", func(t *testing.T) {
		// Go's server accepts bare LF; the request is re-serialised with CRLF
		// and exactly one well-formed request reaches the upstream.
		w.drainHTTP(0)
		raw := "GET " + uri + " HTTP/1.1\nHost: crl.microsoft.com\nX-Probe: lf\n\n"
		resp, body := one(t, w.proxyURL.Host, raw, http.MethodGet)
		checkStatus(t, resp, body, 200, "")
		if reqs := w.drainHTTP(100 * time.Millisecond); len(reqs) != 1 || reqs[0].Header.Get("X-Probe") != "lf" {
			t.Errorf("upstream saw %d requests, want 1 with X-Probe", len(reqs))
		}
	})
	t.Run("identical duplicate content-length", func(t *testing.T) {
		// RFC 9110 §8.6 lets a recipient accept identical repeated values.
		w.drainHTTP(0)
		raw := head + "Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc"
		resp, body := one(t, w.proxyURL.Host, raw, http.MethodPost)
		checkStatus(t, resp, body, 200, "")
		if reqs := w.drainHTTP(100 * time.Millisecond); len(reqs) != 1 || reqs[0].ContentLength != 3 {
			t.Errorf("upstream saw %d requests, want 1 with Content-Length 3", len(reqs))
		}
	})
}

func TestAdversarialOversized(t *testing.T) {
	w := newAdvWorld(t, worldOptions{geos: eu})
	// The world's http.Server keeps the default MaxHeaderBytes (1 MiB, plus
	// 4 KiB of slack in net/http); the gateway binary sets
	// GATEWAY_MAX_HEADER_BYTES on the same field.
	big := strings.Repeat("a", http.DefaultMaxHeaderBytes+8192)
	tests := []struct {
		name string
		raw  string
	}{
		{"request line", "GET http://crl.microsoft.com/pki/crl/products/" + big + " HTTP/1.1\r\nHost: crl.microsoft.com\r\n\r\n"},
		{"connect target", "CONNECT " + big + ".wdcp.microsoft.com:443 HTTP/1.1\r\nHost: x\r\n\r\n"},
		{"one header", "GET http://crl.microsoft.com/pki/crl/products/a HTTP/1.1\r\nHost: crl.microsoft.com\r\nX-Big: " + big + "\r\n\r\n"},
		{"many headers", "GET http://crl.microsoft.com/pki/crl/products/a HTTP/1.1\r\nHost: crl.microsoft.com\r\n" +
			strings.Repeat("X-Many: "+strings.Repeat("b", 1000)+"\r\n", 1100) + "\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := w.snap()
			w.drainHTTP(0)
			c, err := net.Dial("tcp", w.proxyURL.Host)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			go io.WriteString(c, tt.raw) // the server may stop reading
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatalf("no response: %v", err)
			}
			resp.Body.Close()
			t.Logf("answered %s", resp.Status)
			if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge && resp.StatusCode != 400 {
				t.Errorf("status %d, want 431 or 400", resp.StatusCode)
			}
			w.quiet(t, before, tt.name)
		})
	}
}

func TestAdversarialForeignProtocols(t *testing.T) {
	w := newAdvWorld(t, worldOptions{geos: eu})
	t.Run("http2 prior knowledge preface", func(t *testing.T) {
		before := w.snap()
		w.drainHTTP(0)
		resps, bodies, _ := exchange(t, w.proxyURL.Host, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "PRI")
		if len(resps) == 0 {
			// Closing without an answer is acceptable; reaching an
			// upstream is not (checked below).
			t.Logf("PRI: connection closed without a response")
		} else {
			// The gateway's own page handler answers it (404, no reason).
			t.Logf("PRI * HTTP/2.0 answered %s %q", resps[0].Status, resps[0].Header.Get(ReasonHeader))
			if resps[0].StatusCode < 400 {
				t.Errorf("PRI * HTTP/2.0: %d %q, want a 4xx/5xx answer", resps[0].StatusCode, bodies[0])
			}
		}
		w.quiet(t, before, "PRI")
	})
	t.Run("http2 preface as absolute form", func(t *testing.T) {
		before := w.snap()
		w.drainHTTP(0)
		resps, bodies, _ := exchange(t, w.proxyURL.Host, "PRI http://crl.microsoft.com/pki/crl/products/a HTTP/2.0\r\n\r\nSM\r\n\r\n", "PRI")
		if len(resps) > 0 {
			t.Logf("PRI absolute answered %s", resps[0].Status)
			if resps[0].StatusCode < 400 {
				t.Errorf("PRI absolute: %d %q, want an error", resps[0].StatusCode, bodies[0])
			}
		}
		w.quiet(t, before, "PRI absolute")
	})
	for _, tt := range []struct {
		name, headers string
		gone          []string // nil: refused (upgrade-refused), nothing forwarded
	}{
		{"websocket", "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n", nil},
		{"websocket with keep-alive", "Connection: keep-alive, Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n", nil},
		{"h2c", "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n",
			[]string{"Upgrade", "HTTP2-Settings"}},
		{"upgrade without connection", "Upgrade: websocket\r\n", nil},
		{"other protocol without connection", "Upgrade: TLS/1.2\r\n", []string{"Upgrade"}},
	} {
		t.Run(tt.name+" upgrade on absolute form", func(t *testing.T) {
			w.drainHTTP(0)
			before := w.snap()
			raw := "GET http://crl.microsoft.com/pki/crl/products/ws HTTP/1.1\r\nHost: crl.microsoft.com\r\n" + tt.headers + "\r\n"
			resp, body := one(t, w.proxyURL.Host, raw, http.MethodGet)
			if resp.StatusCode == http.StatusSwitchingProtocols {
				t.Fatalf("gateway switched protocols: %q", body)
			}
			if tt.gone == nil {
				checkStatus(t, resp, body, http.StatusForbidden, reason.UpgradeRefused.String())
				w.quiet(t, before, tt.name)
				return
			}
			if resp.StatusCode != 200 {
				t.Errorf("status %d %q, want 200 (forwarded as a plain request)", resp.StatusCode, body)
			}
			reqs := w.drainHTTP(100 * time.Millisecond)
			if len(reqs) != 1 {
				t.Fatalf("upstream saw %d requests, want 1", len(reqs))
			}
			for _, h := range append(tt.gone, "Connection") {
				if v := reqs[0].Header.Get(h); v != "" {
					t.Errorf("upstream received %s: %q", h, v)
				}
			}
		})
	}
}

func TestAdversarialPipelining(t *testing.T) {
	w := newAdvWorld(t, worldOptions{geos: eu})
	const allowed = "GET http://crl.microsoft.com/pki/crl/products/first HTTP/1.1\r\nHost: crl.microsoft.com\r\n\r\n"
	tests := []struct {
		name       string
		second     string
		wantStatus int
		wantReason string
		noDNS      string
	}{
		{"unlisted host", "GET http://unlisted-http.example.com/pki/crl/products/second HTTP/1.1\r\nHost: crl.microsoft.com\r\n\r\n", 403, "not-listed", "unlisted-http.example.com"},
		{"unlisted path on a listed host", "GET http://www.microsoft.com/second HTTP/1.1\r\nHost: www.microsoft.com\r\n\r\n", 403, "not-listed", ""},
		{"ip literal", "GET http://127.0.0.2/pki/crl/products/second HTTP/1.1\r\nHost: crl.microsoft.com\r\n\r\n", 403, "ip-literal", ""},
		{"origin form after absolute form", "GET /pki/crl/products/second HTTP/1.1\r\nHost: crl.microsoft.com\r\n\r\n", 404, "", ""},
		{"connect to an unlisted host", "CONNECT unlisted.example.com:443 HTTP/1.1\r\nHost: unlisted.example.com:443\r\n\r\n", 403, "not-listed", "unlisted.example.com"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w.drainHTTP(0)
			q := 0
			if tt.noDNS != "" {
				q = w.dns.Queries(tt.noDNS)
			}
			before := w.snap()
			method2 := strings.Fields(tt.second)[0]
			resps, bodies, err := exchange(t, w.proxyURL.Host, allowed+tt.second, http.MethodGet, method2)
			if len(resps) != 2 {
				t.Fatalf("got %d responses (%v), want 2", len(resps), err)
			}
			checkStatus(t, resps[0], bodies[0], 200, "")
			checkStatus(t, resps[1], bodies[1], tt.wantStatus, tt.wantReason)
			reqs := w.drainHTTP(100 * time.Millisecond)
			if len(reqs) != 1 || reqs[0].URL.Path != "/pki/crl/products/first" {
				var paths []string
				for _, r := range reqs {
					paths = append(paths, r.Host+r.URL.Path)
				}
				t.Errorf("upstream saw %v, want only crl.microsoft.com/pki/crl/products/first", paths)
			}
			if n := w.snap(); n.tls != before.tls || n.s443 != before.s443 || n.s80 != before.s80 {
				t.Errorf("refused second request reached a destination: %+v -> %+v", before, n)
			}
			if tt.noDNS != "" && w.dns.Queries(tt.noDNS) != q {
				t.Errorf("%s was resolved", tt.noDNS)
			}
		})
	}
	t.Run("refused first, allowed second", func(t *testing.T) {
		w.drainHTTP(0)
		first := "GET http://unlisted-http.example.com/ HTTP/1.1\r\nHost: unlisted-http.example.com\r\n\r\n"
		resps, bodies, err := exchange(t, w.proxyURL.Host, first+allowed, http.MethodGet, http.MethodGet)
		if len(resps) != 2 {
			t.Fatalf("got %d responses (%v), want 2", len(resps), err)
		}
		checkStatus(t, resps[0], bodies[0], 403, "not-listed")
		checkStatus(t, resps[1], bodies[1], 200, "")
		if reqs := w.drainHTTP(100 * time.Millisecond); len(reqs) != 1 || reqs[0].Host != "crl.microsoft.com" {
			t.Errorf("upstream saw %d requests, want 1 for crl.microsoft.com", len(reqs))
		}
	})
	t.Run("tunnel bytes after a refused connect", func(t *testing.T) {
		// A refused CONNECT closes the connection: what the client sent
		// behind it is never read as a request.
		w.drainHTTP(0)
		raw := "CONNECT unlisted.example.com:443 HTTP/1.1\r\nHost: x\r\n\r\n" + allowed
		resps, _, err := exchange(t, w.proxyURL.Host, raw, http.MethodConnect, http.MethodGet)
		if len(resps) != 1 || resps[0].StatusCode != 403 {
			t.Fatalf("got %d responses (%v), want exactly one 403", len(resps), err)
		}
		if reqs := w.drainHTTP(100 * time.Millisecond); len(reqs) != 0 {
			t.Errorf("bytes behind a refused CONNECT reached the upstream: %d requests", len(reqs))
		}
	})
}

func TestAdversarialCredentialReuse(t *testing.T) {
	w := newAdvWorld(t, worldOptions{geos: eu, htpasswd: htpasswdLine(t, "alice", "s3cret"), unlisted: true})
	creds := "Proxy-Authorization: " + basic("alice", "s3cret") + "\r\n"
	authed := "GET http://unlisted-http.example.com/first HTTP/1.1\r\nHost: unlisted-http.example.com\r\n" + creds + "\r\n"
	tests := []struct {
		name       string
		second     string
		wantStatus int
		wantReason string
	}{
		{"absolute form without credentials", "GET http://unlisted-http.example.com/second HTTP/1.1\r\nHost: unlisted-http.example.com\r\n\r\n", 407, "auth-required"},
		{"absolute form with wrong credentials", "GET http://unlisted-http.example.com/second HTTP/1.1\r\nHost: unlisted-http.example.com\r\nProxy-Authorization: " + basic("alice", "nope") + "\r\n\r\n", 407, "auth-required"},
		{"connect without credentials", "CONNECT unlisted.example.com:443 HTTP/1.1\r\nHost: unlisted.example.com:443\r\n\r\n", 407, "auth-required"},
		{"credentials in Authorization instead", "GET http://unlisted-http.example.com/second HTTP/1.1\r\nHost: unlisted-http.example.com\r\nAuthorization: " + basic("alice", "s3cret") + "\r\n\r\n", 407, "auth-required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w.drainHTTP(0)
			before := w.snap()
			method2 := strings.Fields(tt.second)[0]
			resps, bodies, err := exchange(t, w.proxyURL.Host, authed+tt.second, http.MethodGet, method2)
			if len(resps) != 2 {
				t.Fatalf("got %d responses (%v), want 2", len(resps), err)
			}
			checkStatus(t, resps[0], bodies[0], 200, "")
			checkStatus(t, resps[1], bodies[1], tt.wantStatus, tt.wantReason)
			reqs := w.drainHTTP(100 * time.Millisecond)
			if len(reqs) != 1 || reqs[0].URL.Path != "/first" {
				t.Errorf("upstream saw %d requests, want only /first", len(reqs))
			}
			for _, r := range reqs {
				if r.Header.Get("Proxy-Authorization") != "" {
					t.Errorf("upstream received Proxy-Authorization")
				}
			}
			if n := w.tlsConns.Load() - before.tls; n != 0 {
				t.Errorf("unauthenticated CONNECT reached the upstream (%d connections)", n)
			}
		})
	}
	t.Run("separate connections", func(t *testing.T) {
		// Success is cached per credentials, never per client address.
		one(t, w.proxyURL.Host, authed, http.MethodGet)
		resp, body := one(t, w.proxyURL.Host, "GET http://unlisted-http.example.com/x HTTP/1.1\r\nHost: unlisted-http.example.com\r\n\r\n", http.MethodGet)
		checkStatus(t, resp, body, 407, "auth-required")
	})
	t.Run("credentials in the url", func(t *testing.T) {
		u := url.URL{Scheme: "http", User: url.UserPassword("alice", "s3cret"), Host: "unlisted-http.example.com", Path: "/"}
		resp, body := one(t, w.proxyURL.Host, getReq(u.String(), "unlisted-http.example.com"), http.MethodGet)
		checkStatus(t, resp, body, 400, "bad-request")
	})
}

func statusOf(reason string) int {
	if reason == "bad-request" {
		return 400
	}
	return 403
}

// Address safety holds whatever lets a destination through: audit mode and
// authenticated access to unlisted destinations.
func TestAdversarialAddressSafetyInEveryMode(t *testing.T) {
	creds := "Proxy-Authorization: " + basic("alice", "s3cret") + "\r\n"
	for _, mode := range []struct {
		name    string
		o       worldOptions
		headers string
	}{
		{"audit", worldOptions{geos: eu, audit: true}, ""},
		{"authenticated unlisted", worldOptions{geos: eu, htpasswd: htpasswdLine(t, "alice", "s3cret"), unlisted: true}, creds},
	} {
		t.Run(mode.name, func(t *testing.T) {
			w := newAdvWorld(t, mode.o)
			w.dns.Set("internal.example.com", "127.0.0.2")
			w.dns.Set("mixed.example.com", "127.0.0.1", "127.0.0.2")
			w.dns.Set("mapped.example.com", "::ffff:127.0.0.2")
			for _, f := range ipLiteralForms {
				t.Run("connect "+f.name, func(t *testing.T) {
					before := w.snap()
					raw := "CONNECT " + f.host + ":443 HTTP/1.1\r\nHost: gateway.test\r\n" + mode.headers + "\r\n"
					resp, body := one(t, w.proxyURL.Host, raw, http.MethodConnect)
					checkStatus(t, resp, body, statusOf(f.wantReason), f.wantReason)
					w.quiet(t, before, f.host)
				})
				t.Run("http "+f.name, func(t *testing.T) {
					before := w.snap()
					w.drainHTTP(0)
					raw := "GET http://" + f.host + "/ HTTP/1.1\r\nHost: x\r\n" + mode.headers + "\r\n"
					resp, body := one(t, w.proxyURL.Host, raw, http.MethodGet)
					checkStatus(t, resp, body, statusOf(f.wantReason), f.wantReason)
					w.quiet(t, before, f.host)
				})
			}
			for _, name := range []string{"internal.example.com", "mixed.example.com", "mapped.example.com"} {
				t.Run("connect "+name, func(t *testing.T) {
					before := w.snap()
					raw := "CONNECT " + name + ":443 HTTP/1.1\r\nHost: gateway.test\r\n" + mode.headers + "\r\n" + string(clientHello(t, name))
					resp, body := one(t, w.proxyURL.Host, raw, http.MethodConnect)
					checkStatus(t, resp, body, 403, "private-destination")
					w.quiet(t, before, name)
				})
				t.Run("http "+name, func(t *testing.T) {
					before := w.snap()
					w.drainHTTP(0)
					raw := "GET http://" + name + "/ HTTP/1.1\r\nHost: x\r\n" + mode.headers + "\r\n"
					resp, body := one(t, w.proxyURL.Host, raw, http.MethodGet)
					checkStatus(t, resp, body, 403, "private-destination")
					w.quiet(t, before, name)
				})
			}
		})
	}
}

// Inside an inspected tunnel only the CONNECT's own origin may be addressed,
// whatever the inner Host header or request target says.
func TestAdversarialInspectedHostConfusion(t *testing.T) {
	w := newAdvWorld(t, worldOptions{geos: eu, inspect: true})
	tests := []struct {
		name          string
		connectHost   string // Host header of the CONNECT
		inner         string
		wantStatus    int
		wantReason    string
		wantUpstreams int64 // new connections to the TLS upstream
	}{
		{"allowed", "", "GET /allowed/a HTTP/1.1\r\nHost: inspected.lab.test\r\n\r\n", 200, "", 1},
		{"trailing dot", "", "GET /allowed/a HTTP/1.1\r\nHost: inspected.lab.test.\r\n\r\n", 200, "", 1},
		{"other host", "", "GET /allowed/a HTTP/1.1\r\nHost: unlisted.example.com\r\n\r\n", 400, "bad-request", 0},
		{"listed exempt host", "", "GET /allowed/a HTTP/1.1\r\nHost: winatp-gw-weu.microsoft.com\r\n\r\n", 400, "bad-request", 0},
		{"other port", "", "GET /allowed/a HTTP/1.1\r\nHost: inspected.lab.test:8443\r\n\r\n", 400, "bad-request", 0},
		{"absolute form to other host", "", "GET https://unlisted.example.com/allowed/a HTTP/1.1\r\nHost: inspected.lab.test\r\n\r\n", 400, "bad-request", 0},
		// goproxy rewrites the scheme of an absolute-form inner request to
		// https: the same origin, over TLS.
		{"absolute http form", "", "GET http://inspected.lab.test/allowed/a HTTP/1.1\r\nHost: inspected.lab.test\r\n\r\n", 200, "", 1},
		{"userinfo in host", "", "GET /allowed/a HTTP/1.1\r\nHost: unlisted.example.com@inspected.lab.test\r\n\r\n", 400, "bad-request", 0},
		{"ip literal host", "", "GET /allowed/a HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400, "bad-request", 0},
		{"path traversal", "", "GET /allowed/../denied HTTP/1.1\r\nHost: inspected.lab.test\r\n\r\n", 403, "not-listed", 0},
		{"encoded traversal", "", "GET /allowed/%2e%2e/denied HTTP/1.1\r\nHost: inspected.lab.test\r\n\r\n", 403, "not-listed", 0},
		// Without an inner Host, goproxy uses the CONNECT's host, which Go
		// takes from the request target, not from its Host header.
		{"no inner host, connect host header unlisted", "unlisted.example.com", "GET /allowed/a HTTP/1.0\r\n\r\n", 200, "", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w.srv.Close() // no pooled upstream connections: every forward dials
			before := w.snap()
			connectHost := tt.connectHost
			if connectHost == "" {
				connectHost = "inspected.lab.test:443"
			}
			c, err := net.Dial("tcp", w.proxyURL.Host)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			io.WriteString(c, "CONNECT inspected.lab.test:443 HTTP/1.1\r\nHost: "+connectHost+"\r\n\r\n")
			br := bufio.NewReaderSize(c, 16)
			resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("CONNECT: %v %v", resp, err)
			}
			tc := tls.Client(c, &tls.Config{ServerName: "inspected.lab.test", RootCAs: w.inspectCA.Pool})
			if err := tc.Handshake(); err != nil {
				t.Fatalf("handshake with the inspecting gateway: %v", err)
			}
			io.WriteString(tc, tt.inner)
			inner, err := http.ReadResponse(bufio.NewReader(tc), nil)
			if err != nil {
				if tt.wantStatus != 400 || tt.wantReason != "" {
					t.Fatalf("inner response: %v", err)
				}
			} else {
				body, _ := io.ReadAll(inner.Body)
				checkStatus(t, inner, string(body), tt.wantStatus, tt.wantReason)
			}
			time.Sleep(30 * time.Millisecond)
			if n := w.tlsConns.Load() - before.tls; n != tt.wantUpstreams {
				t.Errorf("TLS upstream saw %d connections, want %d", n, tt.wantUpstreams)
			}
			if now := w.snap(); now.s443 != before.s443 || now.s80 != before.s80 {
				t.Errorf("127.0.0.2 sinks saw connections")
			}
		})
	}
}
