package main

import (
	"bufio"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
	"golang.org/x/crypto/bcrypt"

	"github.com/defendergw/gateway/internal/testutil"
)

// ipv6Loopback reports whether ::1 can be listened on here.
func ipv6Loopback() bool {
	ln, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		return false
	}
	ln.Close()
	return true
}

// Every GATEWAY_LISTEN address serves the proxy, and the PAC file fetched
// from each advertises that one.
func TestSeveralListeners(t *testing.T) {
	dns := testutil.NewDNS(t)
	_, port, rules := labTLS(t, dns)
	listen := "127.0.0.1:0,127.0.0.2:0"
	if ipv6Loopback() {
		listen += ",[::1]:0"
	}
	g := startGateway(t, "GATEWAY_LISTEN="+listen, "GATEWAY_DNS_SERVERS="+dns.Addr, "GATEWAY_RULES_FILE="+rules,
		"GATEWAY_ALLOW_PRIVATE_DESTINATIONS=127.0.0.0/8")
	if got, want := len(g.addrs), strings.Count(listen, ",")+1; got != want {
		t.Fatalf("listeners: got %v, want %d", g.addrs, want)
	}
	for _, addr := range g.addrs {
		t.Run(addr, func(t *testing.T) {
			_, resp := connect(t, addr, fmt.Sprintf("app.lab.test:%d", port))
			if resp.StatusCode != 200 {
				t.Errorf("CONNECT through %s: %d %s", addr, resp.StatusCode, resp.Header.Get("X-Gateway-Reason"))
			}
			code, pac := httpGet(t, "http://"+addr+"/proxy.pac")
			if code != 200 || !strings.Contains(pac, `"PROXY `+addr+`"`) {
				t.Errorf("PAC from %s: %d, want it to advertise PROXY %s:\n%s", addr, code, addr, pac)
			}
			for _, other := range g.addrs {
				if other != addr && strings.Contains(pac, other) {
					t.Errorf("PAC from %s advertises another listener, %s", addr, other)
				}
			}
		})
	}
}

// dialWithHeader connects from src to addr and sends a PROXY header (v1 or
// v2) naming client, or none if version is 0.
func dialWithHeader(t *testing.T, src, addr string, version byte, client string) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if version != 0 {
		h := proxyproto.HeaderProxyFromAddrs(version, net.TCPAddrFromAddrPort(netip.MustParseAddrPort(client)), c.RemoteAddr())
		if _, err := h.WriteTo(c); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// Behind a load balancer that sends the PROXY protocol, the client address
// the header carries is the client: the client networks, the per-client
// limit and the access log see it, not the balancer.
func TestProxyProtocolBinary(t *testing.T) {
	dns := testutil.NewDNS(t)
	_, port, rules := labTLS(t, dns)
	logPath := filepath.Join(t.TempDir(), "access.log")
	g := startGateway(t, "GATEWAY_DNS_SERVERS="+dns.Addr, "GATEWAY_RULES_FILE="+rules,
		"GATEWAY_ALLOW_PRIVATE_DESTINATIONS=127.0.0.0/8", "GATEWAY_ACCESS_LOG="+logPath,
		"GATEWAY_PROXY_PROTOCOL=required", "GATEWAY_PROXY_PROTOCOL_FROM=127.0.0.1/32",
		"GATEWAY_CLIENT_CIDRS=127.0.0.9/32,127.0.0.10/32", "GATEWAY_MAX_CONNS_PER_CLIENT=1")
	target := fmt.Sprintf("app.lab.test:%d", port)
	request := func(c net.Conn) (*http.Response, error) {
		fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
		return http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodConnect})
	}
	// The first tunnel of client 127.0.0.9 stays open, holding its one
	// connection.
	held := dialWithHeader(t, "127.0.0.1", g.addr, 1, "127.0.0.9:40000")
	if resp, err := request(held); err != nil || resp.StatusCode != 200 {
		t.Fatalf("held tunnel: %v %v", resp, err)
	}
	tests := []struct {
		name       string
		src        string // the balancer's address
		version    byte   // 0: no header
		client     string
		wantStatus int // 0: closed unanswered
		wantReason string
	}{
		{"v2 header, another allowed client", "127.0.0.1", 2, "127.0.0.10:40001", 200, ""},
		{"v1 header, the held client's second connection", "127.0.0.1", 1, "127.0.0.9:40002", 429, "client-conn-limit"},
		{"v2 header naming a client outside the client networks", "127.0.0.1", 2, "127.0.0.8:40003", 403, "client-not-allowed"},
		{"no header", "127.0.0.1", 0, "", 0, ""},
		{"a header from a peer that is no balancer", "127.0.0.2", 1, "127.0.0.10:40004", 0, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := dialWithHeader(t, tc.src, g.addr, tc.version, tc.client)
			resp, err := request(c)
			if tc.wantStatus == 0 {
				if err == nil {
					t.Fatalf("got %d %s, want the connection closed unanswered", resp.StatusCode, resp.Header.Get("X-Gateway-Reason"))
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tc.wantStatus || resp.Header.Get("X-Gateway-Reason") != tc.wantReason {
				t.Errorf("got %d %q, want %d %q", resp.StatusCode, resp.Header.Get("X-Gateway-Reason"), tc.wantStatus, tc.wantReason)
			}
			c.Close()
		})
	}
	held.Close()
	// The records name the header's clients, never the balancer.
	for n := 0; n < 3; n++ { // the two tunnels and the client-not-allowed refusal (limit refusals are counted, not logged)
		line := waitLogLine(t, logPath, n)
		switch {
		case strings.Contains(line, `"LocalIP":"127.0.0.1"`):
			t.Errorf("access log names the balancer as the client: %s", line)
		case strings.Contains(line, "client-not-allowed") && !strings.Contains(line, `"LocalIP":"127.0.0.8"`):
			t.Errorf("access log names another client than the header's: %s", line)
		}
	}
	waitMetric(t, "http://"+g.admin, `gateway_proxy_protocol_rejected_total{reason="no_header"} 1`)
	waitMetric(t, "http://"+g.admin, `gateway_proxy_protocol_rejected_total{reason="untrusted"} 1`)
}

// Every proxy listener is the gateway itself: a CONNECT to any of them, even
// by an allowed name on an allowed port with loopback destinations allowed,
// is refused, so that no listener can be made to loop into another (each
// one's address is in the dialer's Self list).
func TestEveryListenerIsItself(t *testing.T) {
	dns := testutil.NewDNS(t)
	_, port, rules := labTLS(t, dns)
	listen := "127.0.0.1:0,127.0.0.2:0"
	if ipv6Loopback() {
		listen += ",[::1]:0"
	}
	g := startGateway(t, "GATEWAY_LISTEN="+listen, "GATEWAY_DNS_SERVERS="+dns.Addr, "GATEWAY_RULES_FILE="+rules,
		"GATEWAY_ALLOW_PRIVATE_DESTINATIONS=127.0.0.0/8,::1/128", "GATEWAY_ACCESS_LOG=off", "GATEWAY_RELOAD_INTERVAL=1h")
	// The listeners' ports are known only now: allow them too, by a reload
	// (SIGHUP, which reloads whatever the file's stamp; the watcher could
	// miss a change made this soon after start-up).
	ports := []string{fmt.Sprint(port)}
	for i, addr := range g.addrs {
		ap := netip.MustParseAddrPort(addr)
		dns.Set(fmt.Sprintf("self%d.lab.test", i), ap.Addr().String())
		ports = append(ports, fmt.Sprint(ap.Port()))
	}
	writeFile(t, rules+".tmp", fmt.Sprintf("rules:\n  - action: allow\n    host: '*.lab.test'\n    ports: [%s]\n", strings.Join(ports, ", ")))
	if err := os.Rename(rules+".tmp", rules); err != nil {
		t.Fatal(err)
	}
	if err := g.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitMetric(t, "http://"+g.admin, `gateway_config_reloads_total{file="rules",result="success"} 1`)

	tests := []struct {
		name       string
		target     string
		wantStatus int
		wantReason string
	}{
		// The control: the same rule and private-destination allowance let
		// a loopback destination that is not the gateway through.
		{"the lab upstream", fmt.Sprintf("app.lab.test:%d", port), 200, ""},
	}
	for i, addr := range g.addrs {
		ap := netip.MustParseAddrPort(addr)
		tests = append(tests, struct {
			name       string
			target     string
			wantStatus int
			wantReason string
		}{"listener " + addr, fmt.Sprintf("self%d.lab.test:%d", i, ap.Port()), 403, "private-destination"})
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, resp := connect(t, g.addr, tc.target)
			defer c.Close()
			if resp.StatusCode != tc.wantStatus || resp.Header.Get("X-Gateway-Reason") != tc.wantReason {
				t.Errorf("CONNECT %s: got %d %q, want %d %q", tc.target, resp.StatusCode, resp.Header.Get("X-Gateway-Reason"), tc.wantStatus, tc.wantReason)
			}
		})
	}
}

// Behind the PROXY protocol, failed authentications are limited per client
// the header names: one client's failures do not lock out another that
// comes through the same balancer.
func TestProxyProtocolAuthRateLimit(t *testing.T) {
	dns := testutil.NewDNS(t)
	_, port, rules := labTLS(t, dns)
	h, err := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	users := filepath.Join(t.TempDir(), "users")
	writeFile(t, users, "alice:"+string(h)+"\n")
	g := startGateway(t, "GATEWAY_DNS_SERVERS="+dns.Addr, "GATEWAY_RULES_FILE="+rules,
		"GATEWAY_ALLOW_PRIVATE_DESTINATIONS=127.0.0.0/8", "GATEWAY_ACCESS_LOG=off",
		"GATEWAY_PROXY_PROTOCOL=required", "GATEWAY_PROXY_PROTOCOL_FROM=127.0.0.1/32",
		"GATEWAY_AUTH_HTPASSWD="+users, "GATEWAY_ANONYMOUS=none", "GATEWAY_AUTH_FAILURES_PER_MINUTE=1")
	target := fmt.Sprintf("app.lab.test:%d", port)
	// attempt opens a connection whose header names client and CONNECTs
	// with the password given.
	attempt := func(t *testing.T, version byte, client, password string) (int, string) {
		t.Helper()
		c := dialWithHeader(t, "127.0.0.1", g.addr, version, client)
		defer c.Close()
		cred := base64.StdEncoding.EncodeToString([]byte("alice:" + password))
		fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: Basic %s\r\n\r\n", target, target, cred)
		resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodConnect})
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, resp.Header.Get("X-Gateway-Reason")
	}
	// Client 127.0.0.9 fails until it is limited (the burst is a few
	// failures; 50 is far past it).
	limited := false
	for i := 0; i < 50 && !limited; i++ {
		code, reason := attempt(t, 1, "127.0.0.9:40000", "wrong")
		switch {
		case code == 429 && reason == "auth-rate-limited":
			limited = true
		case code != 407:
			t.Fatalf("failure %d of 127.0.0.9: got %d %q, want 407 or 429 auth-rate-limited", i+1, code, reason)
		}
	}
	if !limited {
		t.Fatal("127.0.0.9 was never limited")
	}
	tests := []struct {
		name       string
		version    byte
		client     string
		password   string
		wantStatus int
		wantReason string
	}{
		{"the limited client, even with the right password", 2, "127.0.0.9:40001", "pw", 429, "auth-rate-limited"},
		{"another client through the same balancer, wrong password", 2, "127.0.0.10:40002", "wrong", 407, "auth-required"},
		{"another client through the same balancer, right password", 1, "127.0.0.10:40003", "pw", 200, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, reason := attempt(t, tc.version, tc.client, tc.password)
			if code != tc.wantStatus || reason != tc.wantReason {
				t.Errorf("got %d %q, want %d %q", code, reason, tc.wantStatus, tc.wantReason)
			}
		})
	}
}

// Under GATEWAY_PROXY_PROTOCOL=optional a balancer may send a header or
// not, and other peers are served as themselves, their headers never
// believed.
func TestProxyProtocolOptionalBinary(t *testing.T) {
	dns := testutil.NewDNS(t)
	_, port, rules := labTLS(t, dns)
	g := startGateway(t, "GATEWAY_DNS_SERVERS="+dns.Addr, "GATEWAY_RULES_FILE="+rules,
		"GATEWAY_ALLOW_PRIVATE_DESTINATIONS=127.0.0.0/8", "GATEWAY_ACCESS_LOG=off",
		"GATEWAY_PROXY_PROTOCOL=optional", "GATEWAY_PROXY_PROTOCOL_FROM=127.0.0.1/32",
		// The balancer itself and one client behind it; 127.0.0.2 (no
		// balancer) and 127.0.0.8 are outside.
		"GATEWAY_CLIENT_CIDRS=127.0.0.1/32,127.0.0.9/32")
	target := fmt.Sprintf("app.lab.test:%d", port)
	tests := []struct {
		name       string
		src        string
		version    byte // 0: no header
		client     string
		wantStatus int
		wantReason string
	}{
		{"the balancer, a header naming an allowed client", "127.0.0.1", 1, "127.0.0.9:40000", 200, ""},
		{"the balancer, a header naming a client outside", "127.0.0.1", 2, "127.0.0.8:40001", 403, "client-not-allowed"},
		{"the balancer without a header is itself", "127.0.0.1", 0, "", 200, ""},
		{"another peer without a header is itself", "127.0.0.2", 0, "", 403, "client-not-allowed"},
		// Not believed: the header is the request line, and a malformed one.
		{"another peer's header naming an allowed client", "127.0.0.2", 1, "127.0.0.9:40002", 400, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := dialWithHeader(t, tc.src, g.addr, tc.version, tc.client)
			defer c.Close()
			fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
			resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodConnect})
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tc.wantStatus || resp.Header.Get("X-Gateway-Reason") != tc.wantReason {
				t.Errorf("got %d %q, want %d %q", resp.StatusCode, resp.Header.Get("X-Gateway-Reason"), tc.wantStatus, tc.wantReason)
			}
		})
	}
}
