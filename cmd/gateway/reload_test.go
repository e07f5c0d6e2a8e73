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
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/defendergw/gateway/internal/testutil"
)

// reloadWorld is a gateway with a rules file naming two lab hosts.
type reloadWorld struct {
	g     *servedGateway
	ca    *testutil.CA
	port  int
	rules string
}

func newReloadWorld(t *testing.T, env ...string) *reloadWorld {
	dns := testutil.NewDNS(t)
	ca := testutil.NewCA(t)
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok "+r.Host)
	}))
	up.TLS = &tls.Config{Certificates: []tls.Certificate{ca.Leaf(t, "app.lab.test", "keep.lab.test")}}
	up.StartTLS()
	t.Cleanup(up.Close)
	rw := &reloadWorld{ca: ca, port: up.Listener.Addr().(*net.TCPAddr).Port, rules: filepath.Join(t.TempDir(), "rules.yaml")}
	dns.Set("app.lab.test", "127.0.0.1")
	dns.Set("keep.lab.test", "127.0.0.1")
	rw.writeRules(t, "app.lab.test", "keep.lab.test")
	rw.g = startGateway(t, append([]string{"GATEWAY_DNS_SERVERS=" + dns.Addr, "GATEWAY_RULES_FILE=" + rw.rules,
		"GATEWAY_GEOGRAPHIES=EU", "GATEWAY_ALLOW_PRIVATE_DESTINATIONS=127.0.0.1", "GATEWAY_ACCESS_LOG=off"}, env...)...)
	return rw
}

// writeRules replaces the rules file atomically (as a ConfigMap update does).
func (rw *reloadWorld) writeRules(t *testing.T, hosts ...string) {
	var b strings.Builder
	b.WriteString("rules:\n")
	for _, h := range hosts {
		fmt.Fprintf(&b, "  - action: allow\n    host: %s\n    ports: [%d]\n", h, rw.port)
	}
	rw.writeRaw(t, b.String())
}

func (rw *reloadWorld) writeRaw(t *testing.T, content string) {
	tmp := rw.rules + ".tmp"
	writeFile(t, tmp, content)
	if err := os.Rename(tmp, rw.rules); err != nil {
		t.Fatal(err)
	}
}

// get fetches https://host/ through a new tunnel and returns the CONNECT
// status (and the reason header), or an error for any other failure.
func (rw *reloadWorld) get(host string) (int, string, error) {
	c, err := net.DialTimeout("tcp", rw.g.addr, 5*time.Second)
	if err != nil {
		return 0, "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	target := fmt.Sprintf("%s:%d", host, rw.port)
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodConnect})
	if err != nil {
		return 0, "", err
	}
	if resp.StatusCode != 200 {
		return resp.StatusCode, resp.Header.Get("X-Gateway-Reason"), nil
	}
	tc := tls.Client(c, &tls.Config{ServerName: host, RootCAs: rw.ca.Pool})
	fmt.Fprintf(tc, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", host)
	r2, err := http.ReadResponse(bufio.NewReader(tc), nil)
	if err != nil {
		return 0, "", err
	}
	body, _ := io.ReadAll(r2.Body)
	if string(body) != "ok "+host {
		return 0, "", fmt.Errorf("body %q", body)
	}
	return 200, "", nil
}

func (rw *reloadWorld) waitFor(t *testing.T, host string, status int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got, reason, err := rw.get(host)
		if err == nil && got == status {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: got %d %q %v, want %d", host, got, reason, err, status)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestReloadUnderLoad(t *testing.T) {
	rw := newReloadWorld(t, "GATEWAY_RELOAD_INTERVAL=100ms")
	rw.waitFor(t, "app.lab.test", 200)

	// One long tunnel stays open across the reload.
	long, err := net.Dial("tcp", rw.g.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer long.Close()
	target := fmt.Sprintf("keep.lab.test:%d", rw.port)
	fmt.Fprintf(long, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	lbr := bufio.NewReader(long)
	if resp, err := http.ReadResponse(lbr, &http.Request{Method: http.MethodConnect}); err != nil || resp.StatusCode != 200 {
		t.Fatalf("long tunnel: %v %v", resp, err)
	}
	ltc := tls.Client(long, &tls.Config{ServerName: "keep.lab.test", RootCAs: rw.ca.Pool})
	ltr := bufio.NewReader(ltc)
	longGet := func() error {
		fmt.Fprintf(ltc, "GET / HTTP/1.1\r\nHost: keep.lab.test\r\n\r\n")
		resp, err := http.ReadResponse(ltr, nil)
		if err != nil {
			return err
		}
		b, _ := io.ReadAll(resp.Body)
		if string(b) != "ok keep.lab.test" {
			return fmt.Errorf("body %q", b)
		}
		return nil
	}
	if err := longGet(); err != nil {
		t.Fatal(err)
	}

	// A client keeps opening tunnels to both hosts while the rules change.
	var stop atomic.Bool
	var mu sync.Mutex
	var failures []string
	var appAllowedAfterChange atomic.Bool
	var changed atomic.Bool
	var completed atomic.Int64 // requests answered, whatever the answer
	var wg sync.WaitGroup
	for _, host := range []string{"app.lab.test", "keep.lab.test"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				startedAfterChange := changed.Load()
				code, reason, err := rw.get(host)
				completed.Add(1)
				switch {
				case err != nil:
					mu.Lock()
					failures = append(failures, fmt.Sprintf("%s: %v", host, err))
					mu.Unlock()
				case code == 200:
				case host == "app.lab.test" && code == 403 && reason == "not-listed":
				default:
					mu.Lock()
					failures = append(failures, fmt.Sprintf("%s: %d %s", host, code, reason))
					mu.Unlock()
				}
				if host == "app.lab.test" && code == 200 && startedAfterChange {
					appAllowedAfterChange.Store(true)
				}
			}
		}()
	}
	// Traffic flows before the change, and goes on after it: counted, not
	// timed.
	awaitRequests := func(n int64) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); completed.Load() < n; time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("only %d requests answered, want %d", completed.Load(), n)
			}
		}
	}
	awaitRequests(20)
	rw.writeRules(t, "keep.lab.test")
	rw.waitFor(t, "app.lab.test", 403)
	changed.Store(true)
	awaitRequests(completed.Load() + 40)
	stop.Store(true)
	wg.Wait()
	if len(failures) > 0 {
		t.Errorf("requests failed for other reasons than the rule change: %v\ngateway log:\n%s", failures, rw.g.log())
	}
	if appAllowedAfterChange.Load() {
		t.Errorf("the removed host was still allowed after the new rules took effect")
	}
	if err := longGet(); err != nil {
		t.Errorf("long tunnel after the reload: %v", err)
	}

	// A broken file keeps the previous rules, and the failure is counted.
	rw.writeRaw(t, "rules:\n  - action: allow\n    host: 'bad..name'\n")
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, scrape := httpGet(t, "http://"+rw.g.admin+"/metrics")
		if strings.Contains(scrape, `gateway_config_reloads_total{file="rules",result="failure"} 1`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("reload failure not counted:\n%s", scrape)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if code, _, err := rw.get("keep.lab.test"); err != nil || code != 200 {
		t.Errorf("after a broken reload keep.lab.test: %d %v, want the previous rules (200)", code, err)
	}
	if code, _, _ := rw.get("app.lab.test"); code != 403 {
		t.Errorf("after a broken reload app.lab.test: %d, want the previous rules (403)", code)
	}
	if !strings.Contains(rw.g.log(), "reload failed; keeping the previous catalog and rules") {
		t.Errorf("broken reload not logged")
	}
}

func TestReloadOnSIGHUP(t *testing.T) {
	rw := newReloadWorld(t, "GATEWAY_RELOAD_INTERVAL=1h")
	rw.waitFor(t, "app.lab.test", 200)
	rw.writeRules(t, "keep.lab.test")
	if code, _, _ := rw.get("app.lab.test"); code != 200 {
		t.Fatalf("rules changed without a trigger: %d", code)
	}
	rw.g.cmd.Process.Signal(syscall.SIGHUP)
	rw.waitFor(t, "app.lab.test", 403)
	_, scrape := httpGet(t, "http://"+rw.g.admin+"/metrics")
	if !strings.Contains(scrape, `gateway_config_reloads_total{file="rules",result="success"} 1`) {
		t.Errorf("successful reload not counted:\n%s", grepLines(scrape, "gateway_config"))
	}
}

// TestReloadHtpasswd: the one reloader re-reads the htpasswd file like the
// rules file, counts each success and failure under its own file label,
// and reports a file that stays broken once.
func TestReloadHtpasswd(t *testing.T) {
	dir := t.TempDir()
	htp := filepath.Join(dir, "htpasswd")
	line := func(user, pass string) string {
		h, err := bcrypt.GenerateFromPassword([]byte(pass), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		return user + ":" + string(h) + "\n"
	}
	replace := func(content string) {
		writeFile(t, htp+".tmp", content)
		if err := os.Rename(htp+".tmp", htp); err != nil {
			t.Fatal(err)
		}
	}
	replace(line("alice", "pw"))
	rw := newReloadWorld(t, "GATEWAY_AUTH_HTPASSWD="+htp, "GATEWAY_AUTH_RELOAD_INTERVAL=50ms", "GATEWAY_RELOAD_INTERVAL=1h")
	admin := "http://" + rw.g.admin

	replace(line("alice", "pw") + line("bob", "pw2"))
	waitMetric(t, admin, `gateway_config_reloads_total{file="htpasswd",result="success"} 1`)

	replace("bob:plain-text-is-refused\n")
	waitMetric(t, admin, `gateway_config_reloads_total{file="htpasswd",result="failure"} 1`)
	// Checked many more times while broken: still one failure, and the
	// rules file untouched.
	for deadline := time.Now().Add(5 * time.Second); strings.Count(rw.g.log(), "htpasswd reload failed") < 1; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("htpasswd failure not logged")
		}
	}
	replace(line("carol", "pw3"))
	waitMetric(t, admin, `gateway_config_reloads_total{file="htpasswd",result="success"} 2`)
	_, scrape := httpGet(t, admin+"/metrics")
	for _, want := range []string{
		`gateway_config_reloads_total{file="htpasswd",result="failure"} 1`,
		`gateway_config_reloads_total{file="rules",result="success"} 0`,
	} {
		if !strings.Contains(scrape, want) {
			t.Errorf("metrics lack %s:\n%s", want, grepLines(scrape, "gateway_config"))
		}
	}
	if n := strings.Count(rw.g.log(), "htpasswd reload failed"); n != 1 {
		t.Errorf("broken htpasswd reported %d times, want once", n)
	}
}
