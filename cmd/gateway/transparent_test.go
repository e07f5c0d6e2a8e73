package main

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/defendergw/gateway/internal/testutil"
)

// Marks the test's clients put on their sockets (SO_MARK) so that the
// netfilter rules redirect their connections, and only theirs: the
// gateways' own connections to the upstreams carry no mark and go where
// they are addressed. (A rule matching the destination alone would send
// the gateway's dial back into the gateway.)
const (
	markLoose  = 1 // to the gateway with GATEWAY_TRANSPARENT_STRICT_DESTINATION=false
	markStrict = 2 // to the gateway with it true
	markTProxy = 3 // to the gateway with GATEWAY_TRANSPARENT_TPROXY=true (TPROXY rules)
)

// tproxyRules delivers marked connections to a transparent socket with
// TPROXY, unchanged: the kernel's tproxy.rst recipe, in prerouting, which
// loopback traffic passes on its way back in.
func tproxyRules(t *testing.T, port, port6 uint16) {
	mustRun(t, exec.Command("nft", "flush", "ruleset"))
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(fmt.Sprintf(`table inet gateway_test {
	chain prerouting {
		type filter hook prerouting priority mangle; policy accept;
		meta l4proto tcp meta mark %d meta nfproto ipv4 tproxy ip to 127.0.0.1:%d
		meta l4proto tcp meta mark %d meta nfproto ipv6 tproxy ip6 to [::1]:%d
	}
}
`, markTProxy, port, markTProxy, port6))
	mustRun(t, cmd)
}

// markedDial connects to addr from a socket carrying mark (0: none).
func markedDial(addr string, mark int) (net.Conn, error) {
	d := net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if mark == 0 {
			return nil
		}
		if err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, mark) }); err != nil {
			return err
		}
		return serr
	}}
	return d.Dial("tcp", addr)
}

// redirectRules are the netfilter rules of the README's recipes, on
// loopback: connections with a mark go to that gateway's transparent
// listener (REDIRECT rewrites the destination to the listener's port on
// the loopback address; SO_ORIGINAL_DST gives the original back).
type redirectRules func(t *testing.T, loose4, strict4, loose6 uint16)

func nftRules(t *testing.T, loose4, strict4, loose6 uint16) {
	ruleset := fmt.Sprintf(`table inet gateway_test {
	chain output {
		type nat hook output priority -100; policy accept;
		meta l4proto tcp meta mark %d meta nfproto ipv4 redirect to :%d
		meta l4proto tcp meta mark %d meta nfproto ipv4 redirect to :%d
		meta l4proto tcp meta mark %d meta nfproto ipv6 redirect to :%d
	}
}
`, markLoose, loose4, markStrict, strict4, markLoose, loose6)
	mustRun(t, exec.Command("nft", "flush", "ruleset"))
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(ruleset)
	mustRun(t, cmd)
}

func iptablesRules(t *testing.T, loose4, strict4, loose6 uint16) {
	mustRun(t, exec.Command("nft", "flush", "ruleset"))
	for _, r := range []struct {
		bin        string
		mark, port uint16
	}{{"iptables", markLoose, loose4}, {"iptables", markStrict, strict4}, {"ip6tables", markLoose, loose6}} {
		mustRun(t, exec.Command(r.bin, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-m", "mark", "--mark", fmt.Sprint(r.mark),
			"-j", "REDIRECT", "--to-ports", fmt.Sprint(r.port)))
	}
}

func mustRun(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, out)
	}
}

// TestTransparent drives two built gateways' transparent listeners (one
// with strict destination checking) through REDIRECT rules in a network
// namespace of the test's own, once with nftables and once with iptables:
// TLS decided by SNI and the original port, plain HTTP by Host, over IPv4
// and IPv6, and every refusal (TLS alert or 403) reaching no upstream.
func TestTransparent(t *testing.T) {
	if !inNetns(t, "nft", "iptables", "ip6tables") {
		return
	}
	dns := testutil.NewDNS(t)
	ca := testutil.NewCA(t)
	leaf := ca.Leaf(t, "tls.lab.test", "tls6.lab.test", "other.lab.test")
	// The upstreams listen on 127.0.0.3 and ::1; 127.0.0.5 is an address
	// nobody listens on, which the names do not resolve to.
	tlsLn := testutil.Listen(t, "127.0.0.3:0")
	tlsUp := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "tls upstream")
	}))
	tlsUp.Listener = tlsLn
	tlsUp.TLS = &tls.Config{Certificates: []tls.Certificate{leaf}}
	tlsUp.StartTLS()
	t.Cleanup(tlsUp.Close)
	tls6Ln := testutil.Listen(t, "[::1]:0")
	tls6Up := httptest.NewUnstartedServer(tlsUp.Config.Handler)
	tls6Up.Listener = tls6Ln
	tls6Up.TLS = &tls.Config{Certificates: []tls.Certificate{leaf}}
	tls6Up.StartTLS()
	t.Cleanup(tls6Up.Close)
	httpLn := testutil.Listen(t, "127.0.0.3:0")
	httpUp := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "http upstream %s %s", r.Host, r.URL.Path)
	}))
	httpUp.Listener = httpLn
	httpUp.Start()
	t.Cleanup(httpUp.Close)
	for _, name := range []string{"tls.lab.test", "plain.lab.test", "other.lab.test"} {
		dns.Set(name, "127.0.0.3")
	}
	dns.Set("tls6.lab.test", "::1")

	dir := t.TempDir()
	rules := filepath.Join(dir, "rules.yaml")
	writeFile(t, rules, fmt.Sprintf(`rules:
  - action: allow
    host: tls.lab.test
    ports: [%d]
  - action: allow
    host: tls6.lab.test
    ports: [%d]
  - action: allow
    host: plain.lab.test
    ports: [%d]
`, tlsLn.Port(), tls6Ln.Port(), httpLn.Port()))
	looseLog, strictLog := filepath.Join(dir, "loose.log"), filepath.Join(dir, "strict.log")
	env := []string{"GATEWAY_DNS_SERVERS=" + dns.Addr, "GATEWAY_RULES_FILE=" + rules,
		"GATEWAY_ALLOW_PRIVATE_DESTINATIONS=127.0.0.0/8,::1/128", "GATEWAY_LOG_LEVEL=debug"}
	loose := startGateway(t, append(env, "GATEWAY_TRANSPARENT_LISTEN=127.0.0.1:0,[::1]:0", "GATEWAY_ACCESS_LOG="+looseLog)...)
	strict := startGateway(t, append(env, "GATEWAY_TRANSPARENT_LISTEN=127.0.0.1:0", "GATEWAY_ACCESS_LOG="+strictLog,
		"GATEWAY_TRANSPARENT_STRICT_DESTINATION=true")...)
	tproxyLog := filepath.Join(dir, "tproxy.log")
	tproxy := startGateway(t, append(env, "GATEWAY_TRANSPARENT_LISTEN=127.0.0.1:0,[::1]:0", "GATEWAY_ACCESS_LOG="+tproxyLog,
		"GATEWAY_TRANSPARENT_TPROXY=true")...)
	looseAddrs := strings.Split(loose.transparent, ",")
	if len(looseAddrs) != 2 || strict.transparent == "" {
		t.Fatalf("transparent listeners: got %q and %q, want two and one", loose.transparent, strict.transparent)
	}
	port := func(addr string) uint16 {
		ap, err := net.ResolveTCPAddr("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		return uint16(ap.Port)
	}
	loose4, loose6, strict4 := port(looseAddrs[0]), port(looseAddrs[1]), port(strict.transparent)

	tlsPort, tls6Port, httpPort := tlsLn.Port(), tls6Ln.Port(), httpLn.Port()
	tests := []transparentCase{
		{name: "tls allowed", mark: markLoose, addr: fmt.Sprintf("127.0.0.3:%d", tlsPort), tls: true,
			serverName: "tls.lab.test", wantBody: "tls upstream", upstream: tlsLn, log: looseLog},
		{name: "tls to another address of no name: the gateway dials what it resolved", mark: markLoose,
			addr: fmt.Sprintf("127.0.0.5:%d", tlsPort), tls: true, serverName: "tls.lab.test", wantBody: "tls upstream",
			upstream: tlsLn, log: looseLog},
		{name: "tls over IPv6", mark: markLoose, addr: fmt.Sprintf("[::1]:%d", tls6Port), tls: true,
			serverName: "tls6.lab.test", wantBody: "tls upstream", upstream: tls6Ln, log: looseLog},
		{name: "tls sni not listed", mark: markLoose, addr: fmt.Sprintf("127.0.0.3:%d", tlsPort), tls: true,
			serverName: "other.lab.test", wantErr: "access denied", wantReason: "not-listed", upstream: tlsLn, log: looseLog},
		{name: "tls sni listed on another port only", mark: markLoose, addr: fmt.Sprintf("127.0.0.3:%d", httpPort), tls: true,
			serverName: "tls.lab.test", wantErr: "access denied", wantReason: "port", upstream: httpLn, log: looseLog},
		{name: "tls without sni", mark: markLoose, addr: fmt.Sprintf("127.0.0.3:%d", tlsPort), tls: true,
			wantErr: "unrecognized name", wantReason: "no-sni", upstream: tlsLn, log: looseLog},
		{name: "http allowed", mark: markLoose, addr: fmt.Sprintf("127.0.0.3:%d", httpPort),
			serverName: "plain.lab.test", wantBody: fmt.Sprintf("http upstream plain.lab.test:%d /path", httpPort),
			upstream: httpLn, log: looseLog},
		{name: "http host not listed", mark: markLoose, addr: fmt.Sprintf("127.0.0.3:%d", httpPort),
			serverName: "other.lab.test", wantStatus: 403, wantReason: "not-listed", upstream: httpLn, log: looseLog},
		{name: "strict: the original destination is the name's", mark: markStrict, addr: fmt.Sprintf("127.0.0.3:%d", tlsPort),
			tls: true, serverName: "tls.lab.test", wantBody: "tls upstream", upstream: tlsLn, log: strictLog},
		{name: "strict: tls to an address that is not the name's", mark: markStrict, addr: fmt.Sprintf("127.0.0.5:%d", tlsPort),
			tls: true, serverName: "tls.lab.test", wantErr: "access denied", wantReason: "destination-mismatch",
			upstream: tlsLn, log: strictLog},
		{name: "strict: http to an address that is not the name's", mark: markStrict, addr: fmt.Sprintf("127.0.0.5:%d", httpPort),
			serverName: "plain.lab.test", wantStatus: 403, wantReason: "destination-mismatch", upstream: httpLn, log: strictLog},
		{name: "tls not redirected", addr: looseAddrs[0], tls: true, serverName: "tls.lab.test",
			wantErr: "handshake failure", wantReason: "bad-request", upstream: tlsLn, log: looseLog},
		{name: "http not redirected", addr: looseAddrs[0], serverName: "plain.lab.test", wantStatus: 400,
			wantReason: "bad-request", upstream: httpLn, log: looseLog},
	}
	for _, backend := range []struct {
		name  string
		rules redirectRules
	}{{"nftables", nftRules}, {"iptables", iptablesRules}} {
		t.Run(backend.name, func(t *testing.T) {
			backend.rules(t, loose4, strict4, loose6)
			for _, tc := range tests {
				t.Run(tc.name, func(t *testing.T) {
					tc.check(t, ca)
				})
			}
		})
	}
	t.Run("tproxy", func(t *testing.T) {
		tproxyAddrs := strings.Split(tproxy.transparent, ",")
		tproxyRules(t, port(tproxyAddrs[0]), port(tproxyAddrs[1]))
		for _, tc := range []transparentCase{
			{name: "tls allowed, to another address", mark: markTProxy, addr: fmt.Sprintf("127.0.0.5:%d", tlsPort), tls: true,
				serverName: "tls.lab.test", wantBody: "tls upstream", upstream: tlsLn, log: tproxyLog},
			{name: "tls sni not listed", mark: markTProxy, addr: fmt.Sprintf("127.0.0.5:%d", tlsPort), tls: true,
				serverName: "other.lab.test", wantErr: "access denied", wantReason: "not-listed", upstream: tlsLn, log: tproxyLog},
			{name: "http allowed", mark: markTProxy, addr: fmt.Sprintf("127.0.0.5:%d", httpPort),
				serverName: "plain.lab.test", wantBody: fmt.Sprintf("http upstream plain.lab.test:%d /path", httpPort),
				upstream: httpLn, log: tproxyLog},
			{name: "tls over IPv6", mark: markTProxy, addr: fmt.Sprintf("[::1]:%d", tls6Port), tls: true,
				serverName: "tls6.lab.test", wantBody: "tls upstream", upstream: tls6Ln, log: tproxyLog},
			{name: "not redirected", addr: tproxyAddrs[0], tls: true, serverName: "tls.lab.test",
				wantErr: "handshake failure", wantReason: "bad-request", upstream: tlsLn, log: tproxyLog},
		} {
			t.Run(tc.name, func(t *testing.T) { tc.check(t, ca) })
		}
	})
}

// countLines counts the lines of the file at path (0 if it does not exist).
func countLines(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return strings.Count(string(b), "\n")
}

// waitLogLine waits for the file at path to have more than n lines and
// returns line n+1.
func waitLogLine(t *testing.T, path string, n int) string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, _ := os.ReadFile(path)
		if lines := strings.SplitAfter(string(b), "\n"); len(lines) > n+1 || (len(lines) == n+1 && strings.HasSuffix(lines[n], "\n")) {
			return lines[n]
		}
		if time.Now().After(deadline) {
			t.Fatalf("no access-log line %d in %s:\n%s", n+1, path, b)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// transparentCase is one connection through a transparent listener.
type transparentCase struct {
	name       string
	mark       int
	addr       string // where the client connects
	tls        bool
	serverName string // SNI, or the Host header
	wantBody   string // success: the upstream's answer
	wantErr    string // TLS refusal: the alert the client reads
	wantStatus int    // plain HTTP refusal
	wantReason string // the refusal's reason (header, or the access log)
	upstream   *testutil.Listener
	log        string
}

// check makes tc's connection and checks its answer, its access-log line
// and, for a refusal, that the upstream saw nothing.
func (tc transparentCase) check(t *testing.T, ca *testutil.CA) {
	t.Helper()
	before := tc.upstream.Accepted()
	logged := countLines(t, tc.log)
	c, err := markedDial(tc.addr, tc.mark)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	var body, gotReason string
	var status int
	if tc.tls {
		// No ServerName: no SNI, and nothing to verify.
		tconn := tls.Client(c, &tls.Config{ServerName: tc.serverName, RootCAs: ca.Pool, InsecureSkipVerify: tc.serverName == ""})
		err = tconn.Handshake()
		c = tconn
	}
	if err == nil {
		fmt.Fprintf(c, "GET /path HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", tc.serverName)
		var resp *http.Response
		if resp, err = http.ReadResponse(bufio.NewReader(c), nil); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body, status, gotReason = string(b), resp.StatusCode, resp.Header.Get("X-Gateway-Reason")
		}
	}
	c.Close() // a tunnel is recorded when it ends
	switch {
	case tc.wantBody != "":
		if err != nil || body != tc.wantBody {
			t.Fatalf("got %q %v, want %q", body, err, tc.wantBody)
		}
	case tc.wantErr != "":
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Fatalf("TLS: got %v, want an alert %q", err, tc.wantErr)
		}
	default:
		if status != tc.wantStatus || gotReason != tc.wantReason {
			t.Fatalf("got %d %q (%v), want %d %q", status, gotReason, err, tc.wantStatus, tc.wantReason)
		}
	}
	line := waitLogLine(t, tc.log, logged)
	if !strings.Contains(line, `"protocol":"transparent"`) {
		t.Errorf("access log line lacks the protocol: %s", line)
	}
	if tc.wantReason != "" {
		if !strings.Contains(line, `"reason":"`+tc.wantReason+`"`) {
			t.Errorf("access log line: want reason %s: %s", tc.wantReason, line)
		}
		if got := testutil.CountedSince(t, tc.upstream.Addr().String(), tc.upstream.Accepted, before); got != 0 {
			t.Errorf("refused, yet the upstream saw %d connections", got)
		}
	} else if tc.tls && !strings.Contains(line, `"sni":"`+tc.serverName+`"`) {
		t.Errorf("access log line lacks the SNI: %s", line)
	}
}
