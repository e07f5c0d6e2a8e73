package proxy

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/defendergw/gateway/internal/testutil"
)

func htpasswdLine(t *testing.T, user, pass string) string {
	h, err := bcrypt.GenerateFromPassword([]byte(pass), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return user + ":" + string(h) + "\n"
}

func basic(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}

// connectWith sends CONNECT with extra header lines on a fresh connection.
func (w *world) connectWith(t *testing.T, target, headers string) *http.Response {
	c, err := net.Dial("tcp", w.proxyURL.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write([]byte("CONNECT " + target + " HTTP/1.1\r\nHost: " + target + "\r\n" + headers + "\r\n"))
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func TestAuthentication(t *testing.T) {
	w := newWorld(t, worldOptions{geos: eu, htpasswd: htpasswdLine(t, "alice", "s3cret"), unlisted: true})
	tests := []struct {
		name       string
		target     string
		headers    string
		wantStatus int
		wantReason string
	}{
		{"defender host anonymous", "winatp-gw-weu.microsoft.com:443", "", 200, ""},
		{"defender host with wrong credentials", "winatp-gw-weu.microsoft.com:443", "Proxy-Authorization: " + basic("alice", "nope") + "\r\n", 200, ""},
		{"unlisted anonymous", "unlisted.example.com:443", "", 407, "auth-required"},
		{"unlisted wrong password", "unlisted.example.com:443", "Proxy-Authorization: " + basic("alice", "nope") + "\r\n", 407, "auth-required"},
		{"unlisted unknown user", "unlisted.example.com:443", "Proxy-Authorization: " + basic("bob", "s3cret") + "\r\n", 407, "auth-required"},
		{"unlisted valid", "unlisted.example.com:443", "Proxy-Authorization: " + basic("alice", "s3cret") + "\r\n", 200, ""},
		{"unlisted bad port", "unlisted.example.com:8443", "Proxy-Authorization: " + basic("alice", "s3cret") + "\r\n", 403, "not-listed"},
		{"geography still refused", "winatp-gw-cus.microsoft.com:443", "Proxy-Authorization: " + basic("alice", "s3cret") + "\r\n", 403, "geography"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := w.connectWith(t, tt.target, tt.headers)
			if resp.StatusCode != tt.wantStatus || resp.Header.Get(ReasonHeader) != tt.wantReason {
				t.Fatalf("got %d %q, want %d %q", resp.StatusCode, resp.Header.Get(ReasonHeader), tt.wantStatus, tt.wantReason)
			}
			if tt.wantStatus == 407 && !strings.Contains(resp.Header.Get("Proxy-Authenticate"), `Basic realm="test realm"`) {
				t.Errorf("Proxy-Authenticate = %q", resp.Header.Get("Proxy-Authenticate"))
			}
		})
	}
	if strings.Contains(w.logs.String(), "s3cret") || strings.Contains(w.logs.String(), basic("alice", "s3cret")[6:]) {
		t.Errorf("credentials in the log:\n%s", w.logs.String())
	}
	// The authenticated tunnels are recorded when they end.
	w.waitLog(t, `"user":"alice"`)
}

func TestAuthenticationRetryOnSameConnection(t *testing.T) {
	w := newWorld(t, worldOptions{geos: eu, htpasswd: htpasswdLine(t, "alice", "s3cret"), unlisted: true})
	c, err := net.Dial("tcp", w.proxyURL.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	c.Write([]byte("CONNECT unlisted.example.com:443 HTTP/1.1\r\nHost: unlisted.example.com:443\r\n\r\n"))
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != 407 {
		t.Fatalf("first CONNECT: %v %v", resp, err)
	}
	resp.Body.Close()
	c.Write([]byte("CONNECT unlisted.example.com:443 HTTP/1.1\r\nHost: unlisted.example.com:443\r\nProxy-Authorization: " + basic("alice", "s3cret") + "\r\n\r\n"))
	resp, err = http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("retry on the same connection: %v %v", resp, err)
	}
	tc := tls.Client(c, &tls.Config{ServerName: "unlisted.example.com", RootCAs: w.ca.Pool})
	if err := tc.Handshake(); err != nil {
		t.Fatalf("tunnel after 407 retry: %v", err)
	}
}

func TestAuthenticationClients(t *testing.T) {
	w := newWorld(t, worldOptions{geos: eu, htpasswd: htpasswdLine(t, "alice", "s3cret"), unlisted: true})
	withCreds := *w.proxyURL
	withCreds.User = url.UserPassword("alice", "s3cret")
	goClient := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		Proxy: http.ProxyURL(&withCreds), TLSClientConfig: &tls.Config{RootCAs: w.ca.Pool}}}
	resp, err := goClient.Get("https://unlisted.example.com/x")
	if err != nil {
		t.Fatalf("Go client with proxy credentials: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("Go client: %d", resp.StatusCode)
	}
	if _, err := w.client().Get("https://unlisted.example.com/x"); err == nil || !strings.Contains(err.Error(), "Proxy Authentication Required") {
		t.Errorf("Go client without credentials: err = %v, want 407", err)
	}

	curl, err := exec.LookPath("curl")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("curl is required in CI")
		}
		t.Skip("curl not installed")
	}
	caFile := t.TempDir() + "/ca.pem"
	os.WriteFile(caFile, w.ca.PEM(), 0o600)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"curl with --proxy-user", []string{"--proxy-user", "alice:s3cret"}, "200 200"},
		{"curl anonymous", nil, "000 407"},
		{"curl wrong password", []string{"--proxy-user", "alice:bad"}, "000 407"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"-s", "-o", "/dev/null", "--noproxy", "", "-x", w.proxyURL.String(), "--cacert", caFile,
				"-w", "%{http_code} %{http_connect}", "--max-time", "10"}, tc.args...)
			out, _ := exec.Command(curl, append(args, "https://unlisted.example.com/x")...).Output()
			if string(out) != tc.want {
				t.Errorf("curl: %q, want %q", out, tc.want)
			}
		})
	}
}

func TestAuthenticationRateLimit(t *testing.T) {
	w := newWorld(t, worldOptions{geos: eu, htpasswd: htpasswdLine(t, "alice", "s3cret"), unlisted: true})
	var last *http.Response
	for range 6 {
		last = w.connectWith(t, "unlisted.example.com:443", "Proxy-Authorization: "+basic("alice", "guess")+"\r\n")
	}
	if last.StatusCode != 429 || last.Header.Get(ReasonHeader) != "auth-rate-limited" {
		t.Fatalf("after repeated failures: %d %q, want 429 auth-rate-limited", last.StatusCode, last.Header.Get(ReasonHeader))
	}
	resp := w.connectWith(t, "unlisted.example.com:443", "Proxy-Authorization: "+basic("alice", "s3cret")+"\r\n")
	if resp.StatusCode != 429 {
		t.Errorf("valid credentials while limited: %d, want 429", resp.StatusCode)
	}
	// Anonymous Defender traffic from the same address is unaffected.
	if resp := w.connectWith(t, "winatp-gw-weu.microsoft.com:443", ""); resp.StatusCode != 200 {
		t.Errorf("defender host while limited: %d, want 200", resp.StatusCode)
	}
}

func TestClientNetworks(t *testing.T) {
	w := newWorld(t, worldOptions{geos: eu, clientNetworks: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}})
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.3")}}
	c, err := d.Dial("tcp", w.proxyURL.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write([]byte("CONNECT winatp-gw-weu.microsoft.com:443 HTTP/1.1\r\nHost: x\r\n\r\n"))
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 403 || resp.Header.Get(ReasonHeader) != "client-not-allowed" {
		t.Fatalf("client 127.0.0.3: %d %q, want 403 client-not-allowed", resp.StatusCode, resp.Header.Get(ReasonHeader))
	}
	if n := w.tlsConns.Load(); n != 0 || w.dns.Queries("winatp-gw-weu.microsoft.com") != 0 {
		t.Errorf("refused client caused %d upstream connections and %d DNS queries", n, w.dns.Queries("winatp-gw-weu.microsoft.com"))
	}
	// The allowed address still works.
	if _, resp := w.connect("winatp-gw-weu.microsoft.com:443", nil); resp.StatusCode != 200 {
		t.Errorf("client 127.0.0.1: %d", resp.StatusCode)
	}
}

func TestAuditMode(t *testing.T) {
	w := newWorld(t, worldOptions{geos: eu, audit: true})
	resp, err := w.client().Get("https://unlisted.example.com/x")
	if err != nil {
		t.Fatalf("audit mode refused an unlisted host: %v", err)
	}
	resp.Body.Close()
	w.waitLog(t, `"decision":"audit","reason":"not-listed"`)
	// Address safety is enforced in every mode.
	sink := testutil.Sink(t, "127.0.0.2:0")
	w.dns.Set("private.example.com", "127.0.0.2")
	w.mu.Lock()
	w.portMap[443] = sink.Port()
	w.mu.Unlock()
	_, r := w.connect("private.example.com:443", nil)
	if r.StatusCode != 403 || r.Header.Get(ReasonHeader) != "private-destination" {
		t.Errorf("private destination in audit mode: %d %q", r.StatusCode, r.Header.Get(ReasonHeader))
	}
	if _, r := w.connect("127.0.0.1:443", nil); r.StatusCode != 403 || r.Header.Get(ReasonHeader) != "ip-literal" {
		t.Errorf("ip literal in audit mode: %d %q", r.StatusCode, r.Header.Get(ReasonHeader))
	}
	if n := sink.AcceptedSince(t, 0); n != 0 {
		t.Errorf("private destination saw %d connections", n)
	}
}
