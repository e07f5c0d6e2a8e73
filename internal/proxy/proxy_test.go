package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/defendergw/gateway/internal/allowlist"
	"github.com/defendergw/gateway/internal/testutil"
	"github.com/defendergw/gateway/internal/tlsbypass"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func bufioReader(c net.Conn) *bufio.Reader { return bufio.NewReaderSize(c, 16) }

var eu = []allowlist.Geography{allowlist.EU}

func TestConnectDecisions(t *testing.T) {
	w := newWorld(t, worldOptions{geos: eu})
	tests := []struct {
		name       string
		target     string
		wantStatus int
		wantReason string
	}{
		{"eu host", "winatp-gw-weu.microsoft.com:443", 200, ""},
		{"us host on eu gateway", "winatp-gw-cus.microsoft.com:443", 403, "geography"},
		{"streamlined us host on eu gateway", "edr-cus.us.endpoint.security.microsoft.com:443", 403, "geography"},
		{"unlisted", "unlisted.example.com:443", 403, "not-listed"},
		{"port", "winatp-gw-weu.microsoft.com:8443", 403, "port"},
		{"ipv4 literal", "127.0.0.1:443", 403, "ip-literal"},
		{"ipv6 literal", "[::1]:443", 403, "ip-literal"},
		{"decimal ip", "2130706433:443", 403, "ip-literal"},
		{"missing port", "winatp-gw-weu.microsoft.com", 400, "bad-request"},
		{"port zero", "winatp-gw-weu.microsoft.com:0", 400, "bad-request"},
		{"port too big", "winatp-gw-weu.microsoft.com:65536", 400, "bad-request"},
		{"empty label", "winatp-gw-weu..microsoft.com:443", 400, "bad-request"},
		{"no dns answer", "nxdomain.wdcp.microsoft.com:443", 502, "dns-failure"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := w.tlsConns.Load()
			_, resp := w.connect(tt.target, nil)
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("CONNECT %s: status %d, want %d", tt.target, resp.StatusCode, tt.wantStatus)
			}
			if got := resp.Header.Get(ReasonHeader); got != tt.wantReason {
				t.Errorf("CONNECT %s: %s = %q, want %q", tt.target, ReasonHeader, got, tt.wantReason)
			}
			if tt.wantStatus != 200 {
				body := readAll(t, resp.Body)
				if !strings.Contains(body, tt.wantReason) {
					t.Errorf("body %q does not name the reason %q", body, tt.wantReason)
				}
				if n := w.tlsConnsSince(t, before); n != 0 {
					t.Errorf("refused CONNECT %s: upstream saw %d connections, want 0", tt.target, n)
				}
			}
		})
	}
}

func TestTunnelCarriesTLSEndToEnd(t *testing.T) {
	w := newWorld(t, worldOptions{geos: eu})
	client := w.client()
	resp, err := client.Get("https://winatp-gw-weu.microsoft.com/commands/test")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body := readAll(t, resp.Body)
	if resp.StatusCode != 200 || body != "tls upstream winatp-gw-weu.microsoft.com /commands/test" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
	// The client verified the upstream's own certificate (issued by the test
	// CA for the Defender name): the gateway relayed TLS untouched.
	if resp.TLS == nil || resp.TLS.PeerCertificates[0].Subject.CommonName != tlsNames[0] {
		t.Errorf("client did not see the upstream certificate: %+v", resp.TLS)
	}
	// The tunnel is recorded once, when it ends.
	resp.Body.Close()
	client.CloseIdleConnections()
	w.waitLog(t, `"msg":"outcome","action":"ConnectionSuccess"`)
}

func TestRefusedWithGoClient(t *testing.T) {
	w := newWorld(t, worldOptions{geos: eu})
	_, err := w.client().Get("https://winatp-gw-cus.microsoft.com/")
	if err == nil || !strings.Contains(err.Error(), "Forbidden") {
		t.Fatalf("err = %v, want a Forbidden proxy response", err)
	}
	if n := w.tlsConns.Load(); n != 0 {
		t.Errorf("upstream saw %d connections", n)
	}
}

func TestPrivateDestination(t *testing.T) {
	w := newWorld(t, worldOptions{geos: eu})
	sink := testutil.Sink(t, "127.0.0.2:0")
	w.mu.Lock()
	w.portMap[443] = sink.Port()
	w.mu.Unlock()
	w.dns.Set("winatp-gw-neu.microsoft.com", "127.0.0.2")
	_, resp := w.connect("winatp-gw-neu.microsoft.com:443", nil)
	if resp.StatusCode != 403 || resp.Header.Get(ReasonHeader) != "private-destination" {
		t.Fatalf("got %d %q, want 403 private-destination", resp.StatusCode, resp.Header.Get(ReasonHeader))
	}
	if n := sink.AcceptedSince(t, 0); n != 0 {
		t.Errorf("127.0.0.2 saw %d connections, want 0", n)
	}
}

func TestPlainHTTP(t *testing.T) {
	w := newWorld(t, worldOptions{geos: eu})
	tests := []struct {
		name       string
		url        string
		wantStatus int
		wantReason string
	}{
		{"crl path", "http://crl.microsoft.com/pki/crl/products/MicRooCerAut_2010-06-23.crl", 200, ""},
		{"www pkiops", "http://www.microsoft.com/pkiops/crl/x.crl", 200, ""},
		{"crl host-wide on port 80", "http://crl.microsoft.com/other", 200, ""},
		{"other path on www host", "http://www.microsoft.com/other", 403, "not-listed"},
		{"traversal out of crl path", "http://www.microsoft.com/pkiops/crl/../../private", 403, "not-listed"},
		{"unlisted", "http://unlisted-http.example.com/", 403, "not-listed"},
		{"ip literal", "http://127.0.0.1/", 403, "ip-literal"},
		{"port on crl host", "http://crl.microsoft.com:8080/pki/crl/products/x.crl", 403, "port"},
		// Go's client would turn this into a CONNECT: the row is sent as
		// written, like every other, on a raw connection.
		{"https absolute form", "https://crl.microsoft.com/", 400, "bad-request"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, err := url.Parse(tt.url)
			if err != nil {
				t.Fatal(err)
			}
			c, err := net.Dial("tcp", w.proxyURL.Host)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", tt.url, u.Host)
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body := readAll(t, resp.Body)
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("GET %s: %d %q, want %d", tt.url, resp.StatusCode, body, tt.wantStatus)
			}
			if got := resp.Header.Get(ReasonHeader); got != tt.wantReason {
				t.Errorf("%s = %q, want %q", ReasonHeader, got, tt.wantReason)
			}
		})
	}
}

func TestPlainHTTPStripsHopByHop(t *testing.T) {
	w := newWorld(t, worldOptions{geos: eu})
	req, _ := http.NewRequest("GET", "http://crl.microsoft.com/pki/crl/products/hop", nil)
	req.Header.Set("Connection", "X-Secret-Hop")
	req.Header.Set("X-Secret-Hop", "1")
	req.Header.Set("Proxy-Authorization", "Basic dXNlcjpwYXNz")
	req.Header.Set("Keep-Alive", "timeout=5")
	req.Header.Set("X-End-To-End", "kept")
	resp, err := w.client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	got := <-w.httpReqs
	for _, h := range []string{"X-Secret-Hop", "Proxy-Authorization", "Keep-Alive"} {
		if v := got.Header.Get(h); v != "" {
			t.Errorf("upstream received %s: %q", h, v)
		}
	}
	if got.Header.Get("X-End-To-End") != "kept" {
		t.Errorf("end-to-end header lost")
	}
	if !strings.Contains(got.Header.Get("Via"), "defender-gateway") {
		t.Errorf("upstream Via = %q", got.Header.Get("Via"))
	}
	if got.Host != "crl.microsoft.com" {
		t.Errorf("upstream Host = %q", got.Host)
	}
	if resp.Header.Get("X-Upstream-Hop") != "" {
		t.Errorf("client received the upstream's hop-by-hop header: %v", resp.Header)
	}
	if resp.Header.Get(ReasonHeader) != "" {
		t.Errorf("upstream could spoof %s", ReasonHeader)
	}
}

func TestRawRequests(t *testing.T) {
	w := newWorld(t, worldOptions{geos: eu})
	tests := []struct {
		name, req  string
		wantStatus int
		wantReason string
	}{
		{"origin form to the gateway", "GET / HTTP/1.1\r\nHost: gw\r\n\r\n", 200, ""},
		{"https absolute form", "GET https://crl.microsoft.com/ HTTP/1.1\r\nHost: crl.microsoft.com\r\n\r\n", 400, "bad-request"},
		{"absolute uri wins over host header", "GET http://www.microsoft.com/other HTTP/1.1\r\nHost: crl.microsoft.com\r\n\r\n", 403, "not-listed"},
		{"userinfo in url", "GET http://u:p@crl.microsoft.com/pki/crl/products/a HTTP/1.1\r\nHost: crl.microsoft.com\r\n\r\n", 400, "bad-request"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := net.Dial("tcp", w.proxyURL.Host)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			io.WriteString(c, tt.req)
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.wantStatus || resp.Header.Get(ReasonHeader) != tt.wantReason {
				t.Errorf("got %d %q, want %d %q", resp.StatusCode, resp.Header.Get(ReasonHeader), tt.wantStatus, tt.wantReason)
			}
		})
	}
}

func TestUpstreamFailures(t *testing.T) {
	w := newWorld(t, worldOptions{geos: eu, responseHeaderTimeout: 300 * time.Millisecond})
	// A port nobody listens on: take one from the OS, then free it.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := port(ln.Addr())
	ln.Close()
	// An upstream that accepts and never answers.
	silent := testutil.Listen(t, "127.0.0.1:0")
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()

	t.Run("connect refused", func(t *testing.T) {
		w.mu.Lock()
		w.portMap[443] = closed
		w.mu.Unlock()
		// Without ClientHello verification the gateway dials before it
		// answers, so the failure gets a status.
		_, resp := w.connect("raw.lab.test:443", nil)
		if resp.StatusCode != 502 || resp.Header.Get(ReasonHeader) != "upstream-unreachable" {
			t.Errorf("got %d %q, want 502 upstream-unreachable", resp.StatusCode, resp.Header.Get(ReasonHeader))
		}
		// A verified tunnel must answer 200 before it may dial: the
		// failure closes the tunnel after the ClientHello.
		c, resp := w.connect("winatp-gw-weu.microsoft.com:443", clientHello(t, "winatp-gw-weu.microsoft.com"))
		if resp.StatusCode != 200 {
			t.Fatalf("verified: got %d, want 200", resp.StatusCode)
		}
		if _, err := c.Read(make([]byte, 1)); err != io.EOF {
			t.Errorf("verified tunnel to a closed port: read %v, want EOF", err)
		}
	})
	t.Run("http response timeout", func(t *testing.T) {
		w.mu.Lock()
		w.portMap[80] = silent.Port()
		w.mu.Unlock()
		resp, err := w.client().Get("http://crl.microsoft.com/pki/crl/products/a.crl")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 504 || resp.Header.Get(ReasonHeader) != "upstream-timeout" {
			t.Errorf("got %d %q, want 504 upstream-timeout", resp.StatusCode, resp.Header.Get(ReasonHeader))
		}
	})
	t.Run("http dns failure", func(t *testing.T) {
		resp, err := w.client().Get("http://nxdomain.download.windowsupdate.com/a")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 502 || resp.Header.Get(ReasonHeader) != "dns-failure" {
			t.Errorf("got %d %q, want 502 dns-failure", resp.StatusCode, resp.Header.Get(ReasonHeader))
		}
	})
}

// echoUpstream accepts one connection and echoes what it reads.
func echoUpstream(t *testing.T) (*testutil.Listener, chan []byte) {
	l := testutil.Listen(t, "127.0.0.1:0")
	got := make(chan []byte, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		b, _ := io.ReadAll(c) // until the client half-closes
		c.Write(b)            // echo back after the half-close
		got <- b
	}()
	return l, got
}

func TestTunnelKeepsBytesSentWithConnect(t *testing.T) {
	w := newWorld(t, worldOptions{geos: eu})
	up, got := echoUpstream(t)
	w.mu.Lock()
	w.portMap[443] = up.Port()
	w.mu.Unlock()
	// A TLS ClientHello written in the same segment as the CONNECT request.
	hello := clientHello(t, "winatp-gw-weu.microsoft.com")
	c, resp := w.connect("winatp-gw-weu.microsoft.com:443", hello)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	c.(*net.TCPConn).CloseWrite()
	select {
	case b := <-got:
		if string(b) != string(hello) {
			t.Fatalf("upstream got %d bytes, want the %d-byte ClientHello intact", len(b), len(hello))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("upstream got nothing")
	}
}

func TestTunnelHalfClose(t *testing.T) {
	w := newWorld(t, worldOptions{geos: eu, tunnel: tlsbypass.Options{IdleTimeout: 5 * time.Second, HalfCloseTimeout: 5 * time.Second}})
	up, _ := echoUpstream(t)
	w.mu.Lock()
	w.portMap[443] = up.Port()
	w.mu.Unlock()
	c, resp := w.connect("raw.lab.test:443", nil)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	payload := strings.Repeat("defender ", 10000)
	if _, err := io.WriteString(c, payload); err != nil {
		t.Fatal(err)
	}
	// Half-close: the upstream sees EOF, answers, and closes; the client
	// reads the whole answer and then EOF.
	c.(*net.TCPConn).CloseWrite()
	back, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if string(back) != payload {
		t.Fatalf("echo: got %d bytes, want %d", len(back), len(payload))
	}
	deadline := time.Now().Add(3 * time.Second)
	for !strings.Contains(w.logs.String(), `"outcome":"closed"`) {
		if time.Now().After(deadline) {
			t.Fatalf("no tunnel-closed log line:\n%s", w.logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, want := range []string{`"outcome":"closed"`, `"bytes_up":90000`, `"bytes_down":90000`, `"service":"operator"`} {
		if !strings.Contains(w.logs.String(), want) {
			t.Errorf("tunnel log lacks %s:\n%s", want, w.logs.String())
		}
	}
}

func TestTunnelIdleTimeout(t *testing.T) {
	w := newWorld(t, worldOptions{geos: eu, tunnel: tlsbypass.Options{IdleTimeout: 200 * time.Millisecond}})
	up := testutil.Listen(t, "127.0.0.1:0")
	go func() {
		c, err := up.Accept()
		if err == nil {
			io.Copy(io.Discard, c) // never writes, never closes first
			c.Close()
		}
	}()
	w.mu.Lock()
	w.portMap[443] = up.Port()
	w.mu.Unlock()
	c, resp := w.connect("raw.lab.test:443", nil)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	start := time.Now()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("read: %v, want EOF from the idle timeout", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("idle tunnel closed after %v", d)
	}
}

func TestCurl(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("curl is required in CI")
		}
		t.Skip("curl not installed")
	}
	w := newWorld(t, worldOptions{geos: eu})
	caFile := t.TempDir() + "/ca.pem"
	if err := os.WriteFile(caFile, w.ca.PEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, url string
		wantCode  string
	}{
		{"tunnel", "https://winatp-gw-weu.microsoft.com/test", "200"},
		{"geography", "https://winatp-gw-cus.microsoft.com/test", "403"},
		{"crl", "http://crl.microsoft.com/pki/crl/products/a.crl", "200"},
		{"www other path", "http://www.microsoft.com/x", "403"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// -w %{http_connect} reports the proxy's CONNECT answer.
			out, _ := exec.Command(curl, "-s", "-o", "/dev/null", "--noproxy", "", "-x", w.proxyURL.String(),
				"--cacert", caFile, "-w", "%{http_code} %{http_connect}", "--max-time", "10", tt.url).Output()
			codes := strings.Fields(string(out))
			got := ""
			if len(codes) == 2 {
				got = codes[0]
				if strings.HasPrefix(tt.url, "https") && codes[1] != "200" {
					got = codes[1]
				}
			}
			if got != tt.wantCode {
				t.Errorf("curl %s: got %q, want %s", tt.url, out, tt.wantCode)
			}
		})
	}
}

// clientHello captures the first flight of a real Go TLS client.
func clientHello(t *testing.T, sni string) []byte {
	a, b := net.Pipe()
	defer a.Close()
	go func() {
		// No SNI needs InsecureSkipVerify, or crypto/tls refuses to start.
		tls.Client(b, &tls.Config{ServerName: sni, InsecureSkipVerify: sni == ""}).Handshake()
		b.Close()
	}()
	buf := make([]byte, 16<<10)
	n, err := a.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	return buf[:n]
}

func TestNeverDialsItself(t *testing.T) {
	w := newWorld(t, worldOptions{geos: eu})
	// 127.0.0.1 is allowed as a destination in this world; the gateway's own
	// listener on it must still be refused.
	w.mu.Lock()
	w.portMap[443] = port(mustResolveTCP(t, w.proxyURL.Host))
	w.mu.Unlock()
	_, resp := w.connect("winatp-gw-neu3.microsoft.com:443", nil)
	if resp.StatusCode != 403 || resp.Header.Get(ReasonHeader) != "private-destination" {
		t.Fatalf("got %d %q, want 403 private-destination", resp.StatusCode, resp.Header.Get(ReasonHeader))
	}
}

func mustResolveTCP(t *testing.T, hostport string) net.Addr {
	a, err := net.ResolveTCPAddr("tcp", hostport)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestShutdownClosesTunnelsAfterGrace(t *testing.T) {
	w := newWorld(t, worldOptions{geos: eu})
	up, _ := echoUpstream(t)
	w.mu.Lock()
	w.portMap[443] = up.Port()
	w.mu.Unlock()
	c, resp := w.connect("raw.lab.test:443", nil)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	deadline := time.Now().Add(3 * time.Second)
	for w.srv.Active() != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("active tunnels = %d, want 1", w.srv.Active())
		}
		time.Sleep(5 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	// The tunnel still flows during the grace period.
	if _, err := c.Write([]byte("during grace")); err != nil {
		t.Fatalf("write during grace: %v", err)
	}
	err := w.srv.Shutdown(ctx)
	if err == nil || time.Since(start) < 150*time.Millisecond {
		t.Errorf("Shutdown returned %v after %v; want the grace period to expire", err, time.Since(start))
	}
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.ReadAll(c); err != nil && !isReset(err) {
		t.Errorf("tunnel not closed after the grace period: %v", err)
	}
	for deadline := time.Now().Add(3 * time.Second); w.srv.Active() != 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("active tunnels after shutdown = %d", w.srv.Active())
		}
	}
}

// TestTunnelsSummary lists open raw tunnels for the status page: the
// count, the count by service and each tunnel's client, target and service.
func TestTunnelsSummary(t *testing.T) {
	w := newWorld(t, worldOptions{geos: eu})
	var conns []net.Conn
	for _, target := range []string{"winatp-gw-weu.microsoft.com:443", "winatp-gw-neu3.microsoft.com:443", "raw.lab.test:443"} {
		host, _, _ := net.SplitHostPort(target)
		c, resp := w.connect(target, clientHello(t, host)) // verified tunnels open on a matching ClientHello
		if resp.StatusCode != 200 {
			t.Fatalf("CONNECT %s: status %d", target, resp.StatusCode)
		}
		conns = append(conns, c)
		time.Sleep(2 * time.Millisecond) // distinct opening times, for the order
	}
	for deadline := time.Now().Add(3 * time.Second); w.srv.Active() != 3; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("active tunnels = %d, want 3", w.srv.Active())
		}
	}
	sum := w.srv.Tunnels(2)
	if sum.Total != 3 || len(sum.Oldest) != 2 {
		t.Fatalf("summary = %+v, want 3 tunnels with the 2 oldest listed", sum)
	}
	if got, want := sum.Oldest[0].Target, "winatp-gw-weu.microsoft.com:443"; got != want {
		t.Errorf("oldest tunnel = %s, want %s", got, want)
	}
	if got := sum.Oldest[0].Client; got != conns[0].LocalAddr().String() {
		t.Errorf("oldest tunnel's client = %s, want %s", got, conns[0].LocalAddr())
	}
	if sum.ByService["edr-cnc"] != 2 || sum.Newest["edr-cnc"].IsZero() {
		t.Errorf("by service = %v (newest %v), want 2 edr-cnc tunnels", sum.ByService, sum.Newest)
	}
	for _, c := range conns {
		c.Close()
	}
	for deadline := time.Now().Add(3 * time.Second); w.srv.Tunnels(0).Total != 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("tunnels still listed after their clients closed: %+v", w.srv.Tunnels(10))
		}
	}
}
