package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/defendergw/gateway/internal/parent"
)

// fakeParent is a real HTTP/1.1 forward proxy on loopback standing in for a
// corporate proxy: it answers CONNECT (relaying to a loopback IP target, or
// echoing for any other target) and forwards absolute-form requests to
// loopback origins, and records every request it gets. status, if not 0,
// is its answer to every request instead; auth, if set, is the
// Proxy-Authorization it demands (407 otherwise).
type fakeParent struct {
	ln     net.Listener
	status int
	auth   string
	echo   bool // echo every tunnel, whatever its target
	// origin is the loopback address every absolute-form request is
	// sent to (setOrigin), whatever its host.
	origin string
	mu     sync.Mutex
	seen   []seenRequest
}

type seenRequest struct{ method, target, host, auth string }

func newFakeParent(t *testing.T, status int, auth string) *fakeParent {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeParent{ln: ln, status: status, auth: auth}
	hs := &http.Server{Handler: f, ReadHeaderTimeout: 5 * time.Second}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })
	return f
}

func (f *fakeParent) url(userinfo string) *url.URL {
	u, err := url.Parse("http://" + userinfo + f.ln.Addr().String())
	if err != nil {
		panic(err)
	}
	return u
}

func (f *fakeParent) setOrigin(addr string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.origin = addr
}

func (f *fakeParent) requests() []seenRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]seenRequest(nil), f.seen...)
}

// loopbackTarget reports whether hostport is a loopback IP literal: the only
// destinations the fake parent connects to.
func loopbackTarget(hostport string) bool {
	ap, err := netip.ParseAddrPort(hostport)
	return err == nil && ap.Addr().IsLoopback()
}

func (f *fakeParent) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.seen = append(f.seen, seenRequest{r.Method, r.RequestURI, r.Host, r.Header.Get("Proxy-Authorization")})
	f.mu.Unlock()
	switch {
	case f.auth != "" && r.Header.Get("Proxy-Authorization") != f.auth:
		w.Header().Set("Proxy-Authenticate", `Basic realm="corp"`)
		w.WriteHeader(http.StatusProxyAuthRequired)
		return
	case f.status != 0:
		w.WriteHeader(f.status)
		return
	}
	if r.Method == http.MethodConnect {
		var up net.Conn
		if !f.echo && loopbackTarget(r.RequestURI) {
			var err error
			if up, err = net.Dial("tcp", r.RequestURI); err != nil {
				w.WriteHeader(http.StatusServiceUnavailable)
				return
			}
		}
		c, bw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		bw.WriteString("HTTP/1.1 200 Connection established\r\n\r\n")
		bw.Flush()
		if up == nil { // echo
			io.Copy(c, bw)
			return
		}
		defer up.Close()
		go func() { io.Copy(up, bw); up.(*net.TCPConn).CloseWrite() }()
		io.Copy(c, up)
		return
	}
	f.mu.Lock()
	origin := f.origin
	f.mu.Unlock()
	if !loopbackTarget(origin) {
		w.WriteHeader(http.StatusForbidden)
		return
	}
	out := r.Clone(r.Context())
	out.RequestURI = ""
	out.Header.Del("Proxy-Authorization")
	tr := &http.Transport{DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, origin)
	}}
	defer tr.CloseIdleConnections()
	resp, err := tr.RoundTrip(out)
	if err != nil {
		w.WriteHeader(http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	io.Copy(w, resp.Body)
}

// closedPort returns a loopback address where nothing listens.
func closedPort(t *testing.T) *url.URL {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return &url.URL{Scheme: "http", Host: addr}
}

// squid runs a real Squid on loopback as the parent; stop ends it (its
// access log is complete after stop).
type squid struct {
	addr, dir string
	cmd       *exec.Cmd
}

func startSquid(t *testing.T) *squid {
	t.Helper()
	const bin = "/usr/sbin/squid"
	if _, err := os.Stat(bin); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("squid is not installed at %s (CI installs it: .ci/run)", bin)
		}
		t.Skipf("squid is not installed at %s: apt-get install squid to run the parent proxy tests against it", bin)
	}
	dir := t.TempDir()
	// Started as root, Squid runs as its own user (proxy), which must be
	// able to write its logs here.
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o777); err != nil {
			t.Fatal(err)
		}
	}
	// Squid resolves the names it is asked for from this file only: its
	// DNS server is loopback's port 53, where nothing answers.
	if err := os.WriteFile(filepath.Join(dir, "hosts"), []byte("127.0.0.1 plain.lab.test\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	conf := fmt.Sprintf(`http_port %[1]s
pid_filename %[2]s/squid.pid
access_log stdio:%[2]s/access.log
cache_log %[2]s/cache.log
cache_store_log none
cache deny all
coredump_dir %[2]s
pinger_enable off
hosts_file %[2]s/hosts
dns_nameservers 127.0.0.1
shutdown_lifetime 0 seconds
http_access allow all
`, addr, dir)
	if err := os.WriteFile(filepath.Join(dir, "squid.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-N", "-f", filepath.Join(dir, "squid.conf"))
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &squid{addr: addr, dir: dir, cmd: cmd}
	t.Cleanup(s.stop)
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(filepath.Join(dir, "cache.log"))
			t.Fatalf("squid did not listen on %s:\n%s\n%s", addr, b, out.String())
		}
	}
	return s
}

func (s *squid) stop() {
	if s.cmd.ProcessState != nil {
		return
	}
	s.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		s.cmd.Process.Kill()
		<-done
	}
}

func (s *squid) accessLog(t *testing.T) string {
	t.Helper()
	s.stop() // Squid writes its log buffered: complete once it has stopped
	b, err := os.ReadFile(filepath.Join(s.dir, "access.log"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func parentOpts(urls ...*url.URL) *parent.Options {
	return &parent.Options{Parents: urls, Retry: time.Minute, DialTimeout: 2 * time.Second}
}

// TestParentSquid sends a verified tunnel and a plain-HTTP request through
// a real Squid: the tunnel is a CONNECT to the checked address, plain HTTP
// an absolute-form GET naming it, with the name in Host.
func TestParentSquid(t *testing.T) {
	sq := startSquid(t)
	// plain.lab.test is allowed on the port of another world's plain
	// upstream, which Squid reaches by name.
	up := newWorld(t, worldOptions{})
	upPort := port(up.httpUp.Listener.Addr())
	rules := rawRule + fmt.Sprintf("  - action: allow\n    host: plain.lab.test\n    ports: [%d]\n", upPort)
	w := newWorld(t, worldOptions{rules: rules, parent: parentOpts(&url.URL{Scheme: "http", Host: sq.addr})})
	w.dns.Set("plain.lab.test", "127.0.0.1")
	client := w.client()

	resp, err := client.Get("https://winatp-gw-weu.microsoft.com/through-squid")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := readAll(t, resp.Body), "tls upstream winatp-gw-weu.microsoft.com /through-squid"; got != want {
		t.Errorf("tunnel through squid: body %q, want %q", got, want)
	}
	resp.Body.Close()

	// Plain HTTP names the host: Squid resolves it (from its hosts file)
	// and connects to the port the request names.
	u := fmt.Sprintf("http://plain.lab.test:%d/pki/squid.crl", upPort)
	resp, err = client.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := readAll(t, resp.Body), fmt.Sprintf("http upstream plain.lab.test:%d /pki/squid.crl", upPort); resp.StatusCode != http.StatusOK || got != want {
		t.Errorf("plain HTTP through squid: %d %q, want 200 %q", resp.StatusCode, got, want)
	}
	resp.Body.Close()

	log := sq.accessLog(t)
	for _, want := range []string{"CONNECT " + w.tlsUp.Listener.Addr().String(), "GET " + u} {
		if !strings.Contains(log, want) {
			t.Errorf("squid's access log lacks %q:\n%s", want, log)
		}
	}
}

// TestParentCredentials authenticates to a parent with the URL's
// credentials, on both paths, and never writes the password anywhere.
func TestParentCredentials(t *testing.T) {
	const user, pass = "gw", "s3cret-Pa55"
	want := "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
	fp := newFakeParent(t, 0, want)
	fp.echo = true
	w := newWorld(t, worldOptions{telemetry: true, parent: parentOpts(fp.url(user + ":" + pass + "@"))})
	fp.setOrigin(w.httpUp.Listener.Addr().String())

	c, resp := w.connect("raw.lab.test:443", nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT through an authenticating parent: %s", resp.Status)
	}
	fmt.Fprint(c, "ping")
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo through the parent: %q, %v", buf, err)
	}
	c.Close()

	resp2, err := w.client().Get("http://crl.microsoft.com/pki/crl/products/auth.crl")
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, resp2.Body)
	resp2.Body.Close()
	if resp2.StatusCode != http.StatusOK {
		t.Errorf("plain HTTP through an authenticating parent: %s", resp2.Status)
	}

	seen := fp.requests()
	if len(seen) != 2 {
		t.Fatalf("parent saw %d requests, want 2: %+v", len(seen), seen)
	}
	for _, r := range seen {
		if r.auth != want {
			t.Errorf("%s %s: Proxy-Authorization %q, want %q", r.method, r.target, r.auth, want)
		}
	}

	// A wrong password: the parent's 407 is parent-refused on both paths,
	// and the password is still not written.
	wrong := newWorld(t, worldOptions{telemetry: true, parent: parentOpts(fp.url(user + ":wrong-" + pass + "@"))})
	_, resp = wrong.connect("raw.lab.test:443", nil)
	if resp.StatusCode != http.StatusBadGateway || resp.Header.Get(ReasonHeader) != "parent-refused" {
		t.Errorf("CONNECT with wrong parent credentials: %s %q, want 502 parent-refused", resp.Status, resp.Header.Get(ReasonHeader))
	}
	resp2, err = wrong.client().Get("http://crl.microsoft.com/pki/crl/products/auth.crl")
	if err != nil {
		t.Fatal(err)
	}
	body := readAll(t, resp2.Body)
	resp2.Body.Close()
	if resp2.StatusCode != http.StatusBadGateway || resp2.Header.Get(ReasonHeader) != "parent-refused" || resp2.Header.Get("Proxy-Authenticate") != "" {
		t.Errorf("plain HTTP with wrong parent credentials: %s %q (Proxy-Authenticate %q), want 502 parent-refused without the parent's challenge",
			resp2.Status, resp2.Header.Get(ReasonHeader), resp2.Header.Get("Proxy-Authenticate"))
	}

	for _, world := range []*world{w, wrong} {
		waitEvents(t, world, 2)
		world.events.Close()
		events, _ := os.ReadFile(world.eventFile)
		for name, text := range map[string]string{"access log": string(events), "operational log": world.logs.String(), "refusal body": body} {
			for _, secret := range []string{pass, base64.StdEncoding.EncodeToString([]byte(user + ":" + pass)), "wrong-" + pass} {
				if strings.Contains(text, secret) {
					t.Errorf("the %s contains the parent's credentials %q:\n%s", name, secret, text)
				}
			}
		}
	}
}

// waitEvents waits until the world's access log holds n events.
func waitEvents(t *testing.T, w *world, n int) string {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		b, _ := os.ReadFile(w.eventFile)
		if strings.Count(string(b), "\n") >= n || time.Now().After(deadline) {
			return string(b)
		}
	}
}

// TestParentRefused turns a parent's refusal or error into 502
// parent-refused, without failing over to the next parent.
func TestParentRefused(t *testing.T) {
	for _, status := range []int{http.StatusForbidden, http.StatusProxyAuthRequired, http.StatusServiceUnavailable, http.StatusBadGateway} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			refusing, next := newFakeParent(t, status, ""), newFakeParent(t, 0, "")
			w := newWorld(t, worldOptions{telemetry: true, parent: parentOpts(refusing.url(""), next.url(""))})
			_, resp := w.connect("raw.lab.test:443", nil)
			if got := resp.Header.Get(ReasonHeader); resp.StatusCode != http.StatusBadGateway || got != "parent-refused" {
				t.Errorf("CONNECT refused by the parent with %d: %s %q, want 502 parent-refused", status, resp.Status, got)
			}
			if n := len(next.requests()); n != 0 {
				t.Errorf("the next parent got %d requests: a refusal must not fail over", n)
			}
			got := scrape(t, w)
			if v := got[`gateway_parent_requests_total{parent="`+refusing.ln.Addr().String()+`",result="refused"}`]; v != 1 {
				t.Errorf("refused attempts = %v, want 1", v)
			}
			if v := got[`gateway_parent_up{parent="`+refusing.ln.Addr().String()+`"}`]; v != 1 {
				t.Errorf("a parent that answered must stay up: parent_up = %v", v)
			}
		})
	}
	// Plain HTTP: a parent's 407, 403 and 5xx are its own refusals; any
	// other answer is relayed as the origin's.
	for _, tc := range []struct {
		status     int
		wantStatus int
		wantReason string
	}{
		{http.StatusProxyAuthRequired, http.StatusBadGateway, "parent-refused"},
		{http.StatusForbidden, http.StatusBadGateway, "parent-refused"},
		{http.StatusServiceUnavailable, http.StatusBadGateway, "parent-refused"},
		{http.StatusNotFound, http.StatusNotFound, ""},
	} {
		t.Run(fmt.Sprintf("plain HTTP %d", tc.status), func(t *testing.T) {
			fp := newFakeParent(t, tc.status, "")
			w := newWorld(t, worldOptions{parent: parentOpts(fp.url(""))})
			resp, err := w.client().Get("http://crl.microsoft.com/pki/crl/products/x.crl")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if got := resp.Header.Get(ReasonHeader); resp.StatusCode != tc.wantStatus || got != tc.wantReason {
				t.Errorf("plain HTTP answered %d by the parent: got %s %q, want %d %q", tc.status, resp.Status, got, tc.wantStatus, tc.wantReason)
			}
		})
	}
}

// TestParentFailover skips a parent that cannot be connected to, marks it
// down and keeps skipping it while another is up.
func TestParentFailover(t *testing.T) {
	dead, alive := closedPort(t), newFakeParent(t, 0, "")
	w := newWorld(t, worldOptions{telemetry: true, parent: parentOpts(dead, alive.url(""))})
	alive.setOrigin(w.httpUp.Listener.Addr().String())
	for i := range 2 {
		c, resp := w.connect("raw.lab.test:443", nil)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("CONNECT %d with the first parent down: %s %q", i, resp.Status, resp.Header.Get(ReasonHeader))
		}
		c.Close()
		resp2, err := w.client().Get("http://crl.microsoft.com/pki/crl/products/failover.crl")
		if err != nil {
			t.Fatal(err)
		}
		if body := readAll(t, resp2.Body); resp2.StatusCode != http.StatusOK || !strings.HasPrefix(body, "http upstream crl.microsoft.com") {
			t.Errorf("plain HTTP %d with the first parent down: %s %q", i, resp2.Status, body)
		}
		resp2.Body.Close()
	}
	got := scrape(t, w)
	for key, want := range map[string]float64{
		`gateway_parent_requests_total{parent="` + dead.Host + `",result="unreachable"}`:       1, // then skipped
		`gateway_parent_requests_total{parent="` + alive.ln.Addr().String() + `",result="ok"}`: 4,
		`gateway_parent_up{parent="` + dead.Host + `"}`:                                        0,
		`gateway_parent_up{parent="` + alive.ln.Addr().String() + `"}`:                         1,
	} {
		if got[key] != want {
			t.Errorf("%s = %v, want %v", key, got[key], want)
		}
	}
	if n := len(alive.requests()); n != 4 {
		t.Errorf("the second parent got %d requests, want 4", n)
	}
}

// TestParentUnreachable answers 502 parent-unreachable when no parent can
// be connected to.
func TestParentUnreachable(t *testing.T) {
	w := newWorld(t, worldOptions{telemetry: true, parent: parentOpts(closedPort(t), closedPort(t))})
	_, resp := w.connect("raw.lab.test:443", nil)
	if got := resp.Header.Get(ReasonHeader); resp.StatusCode != http.StatusBadGateway || got != "parent-unreachable" {
		t.Errorf("CONNECT without a parent: %s %q, want 502 parent-unreachable", resp.Status, got)
	}
	for _, body := range []string{"", "a body"} {
		req, _ := http.NewRequest(http.MethodPost, "http://crl.microsoft.com/pki/crl/products/x.crl", strings.NewReader(body))
		if body == "" {
			req.Method, req.Body = http.MethodGet, nil
		}
		resp, err := w.client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got := resp.Header.Get(ReasonHeader); resp.StatusCode != http.StatusBadGateway || got != "parent-unreachable" {
			t.Errorf("%s without a parent: %s %q, want 502 parent-unreachable", req.Method, resp.Status, got)
		}
	}
	// A verified tunnel dials after the 200 and the ClientHello: it is
	// closed, and recorded as parent-unreachable.
	c, resp := w.connect("winatp-gw-weu.microsoft.com:443", nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("verified CONNECT: %s", resp.Status)
	}
	tlc := tls.Client(c, &tls.Config{ServerName: "winatp-gw-weu.microsoft.com", RootCAs: w.ca.Pool})
	if err := tlc.Handshake(); err == nil {
		t.Error("a verified tunnel without a parent completed a TLS handshake")
	}
	events := waitEvents(t, w, 4)
	if n := strings.Count(events, `"parent-unreachable"`); n < 4 {
		t.Errorf("access log has %d parent-unreachable records, want 4:\n%s", n, events)
	}
}

// TestParentBypass sends bypassed destinations direct: the parent sees
// nothing of them.
func TestParentBypass(t *testing.T) {
	fp := newFakeParent(t, 0, "")
	po := parentOpts(fp.url(""))
	for _, p := range []string{"*.WDCP.microsoft.com", "crl.microsoft.com.", "raw.lab.test"} {
		n, err := parent.NormalizeBypass(p)
		if err != nil {
			t.Fatal(err)
		}
		po.Bypass = append(po.Bypass, n)
	}
	w := newWorld(t, worldOptions{rules: parentRules, parent: po})
	w.dns.Set("raw2.lab.test", "127.0.0.1")
	for _, u := range []string{"http://crl.microsoft.com/pki/crl/products/direct.crl", "https://eu.wdcp.microsoft.com/direct"} {
		resp, err := w.client().Get(u)
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("bypassed %s: %s", u, resp.Status)
		}
	}
	c, resp := w.connect("raw.lab.test:443", nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("bypassed CONNECT: %s", resp.Status)
	}
	c.Close()
	if seen := fp.requests(); len(seen) != 0 {
		t.Errorf("the parent saw bypassed requests: %+v", seen)
	}
	// Not bypassed: through the parent ("*.wdcp.microsoft.com" does not
	// cover raw2, nor an exact name its subdomains).
	c, resp = w.connect("raw2.lab.test:443", nil)
	c.Close()
	if seen := fp.requests(); len(seen) != 1 || seen[0].method != http.MethodConnect {
		t.Errorf("a destination not bypassed did not go through the parent (%s): %+v", resp.Status, seen)
	}
}

// parentRules adds raw2.lab.test, a second unverified tunnel host.
const parentRules = rawRule + "  - action: allow\n    host: raw2.lab.test\n    verify_sni: false\n"

// TestParentPrivateDestination: the gateway checks the destination's
// addresses before any parent sees it, and asks the parent for the checked
// address (or, with SendName, the name).
func TestParentPrivateDestination(t *testing.T) {
	for _, sendName := range []bool{false, true} {
		t.Run(fmt.Sprintf("send name %v", sendName), func(t *testing.T) {
			fp := newFakeParent(t, 0, "")
			po := parentOpts(fp.url(""))
			po.SendName = sendName
			w := newWorld(t, worldOptions{rules: parentRules, parent: po})
			// 127.0.0.2 is internal here: the test policy allows only
			// 127.0.0.1.
			w.dns.Set("raw.lab.test", "127.0.0.2")
			w.dns.Set("crl.microsoft.com", "127.0.0.2")
			_, resp := w.connect("raw.lab.test:443", nil)
			if got := resp.Header.Get(ReasonHeader); resp.StatusCode != http.StatusForbidden || got != "private-destination" {
				t.Errorf("CONNECT to a name resolving internally: %s %q, want 403 private-destination", resp.Status, got)
			}
			r, err := w.client().Get("http://crl.microsoft.com/pki/crl/products/x.crl")
			if err != nil {
				t.Fatal(err)
			}
			r.Body.Close()
			if got := r.Header.Get(ReasonHeader); r.StatusCode != http.StatusForbidden || got != "private-destination" {
				t.Errorf("GET of a name resolving internally: %s %q, want 403 private-destination", r.Status, got)
			}
			if seen := fp.requests(); len(seen) != 0 {
				t.Fatalf("the parent was asked for an internal destination: %+v", seen)
			}

			w.dns.Set("raw2.lab.test", "127.0.0.1")
			c, resp := w.connect("raw2.lab.test:443", nil)
			c.Close()
			want := w.tlsUp.Listener.Addr().String() // the checked address (port mapped by the lab)
			if sendName {
				want = "raw2.lab.test:443"
			}
			if seen := fp.requests(); len(seen) != 1 || seen[0].target != want {
				t.Errorf("the parent was asked for %+v (%s), want CONNECT %s", seen, resp.Status, want)
			}
		})
	}
}

// TestParentTunnelConnKept: the tunnel's upstream connection is the
// parent's TCP connection itself when the parent sent nothing beyond its
// answer (the relay splices *net.TCPConn).
func TestParentTunnelConnKept(t *testing.T) {
	fp := newFakeParent(t, 0, "")
	chain, err := parent.New(*parentOpts(fp.url("")))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := chain.DialTunnel(ctx, "echo.test", 443, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, ok := c.(*net.TCPConn); !ok {
		t.Errorf("DialTunnel returned %T, want *net.TCPConn", c)
	}
	fmt.Fprint(c, "hello")
	b := make([]byte, 5)
	if _, err := io.ReadFull(bufio.NewReader(c), b); err != nil || string(b) != "hello" {
		t.Errorf("echo: %q %v", b, err)
	}
}

// TestParentInspected: an inspected tunnel's requests reach the origin over
// a CONNECT to the parent naming the checked address, with TLS to the
// origin's name.
func TestParentInspected(t *testing.T) {
	fp := newFakeParent(t, 0, "")
	w := newWorld(t, worldOptions{geos: eu, inspect: true, parent: parentOpts(fp.url(""))})
	inspected := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		Proxy: http.ProxyURL(w.proxyURL), TLSClientConfig: &tls.Config{RootCAs: w.inspectCA.Pool}, DisableKeepAlives: true}}
	resp, err := inspected.Get("https://inspected.lab.test/allowed/through-parent")
	if err != nil {
		t.Fatal(err)
	}
	body := readAll(t, resp.Body)
	resp.Body.Close()
	if want := "tls upstream inspected.lab.test /allowed/through-parent"; resp.StatusCode != http.StatusOK || body != want {
		t.Errorf("inspected request through the parent: %s %q, want 200 %q", resp.Status, body, want)
	}
	seen := fp.requests()
	if len(seen) != 1 || seen[0].method != http.MethodConnect || seen[0].target != w.tlsUp.Listener.Addr().String() {
		t.Errorf("the parent saw %+v, want one CONNECT %s", seen, w.tlsUp.Listener.Addr())
	}
}
