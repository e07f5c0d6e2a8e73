package main

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/defendergw/gateway/internal/testutil"
)

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// waitStatus polls url until it answers want.
func waitStatus(t *testing.T, url string, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		code, body := httpGet(t, url)
		if code == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: %d %q, want %d", url, code, body, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestAdminEndpoints(t *testing.T) {
	dns := testutil.NewDNS(t)
	g := startGateway(t, "GATEWAY_GEOGRAPHIES=EU", "GATEWAY_DNS_SERVERS="+dns.Addr, "GATEWAY_DNS_PROBE_INTERVAL=100ms")
	admin := "http://" + g.admin
	if code, _ := httpGet(t, admin+"/healthz"); code != 200 {
		t.Errorf("/healthz = %d", code)
	}
	waitStatus(t, admin+"/readyz", 200)

	for _, target := range []string{"winatp-gw-weu.microsoft.com:443", "https://winatp-gw-cus.microsoft.com/x",
		"http://crl.microsoft.com/pki/crl/products/a.crl", "127.0.0.1:443"} {
		t.Run("decide "+target, func(t *testing.T) {
			_, body := httpGet(t, admin+"/decide?target="+target)
			out, _, _ := runCLI(t, []string{"GATEWAY_GEOGRAPHIES=EU"}, "explain", "--format", "json", target)
			var fromAdmin, fromCLI map[string]any
			if err := json.Unmarshal([]byte(body), &fromAdmin); err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal([]byte(out), &fromCLI); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(fromAdmin, fromCLI) {
				t.Errorf("/decide and explain disagree:\n%s\n%s", body, out)
			}
		})
	}
	code, body := httpGet(t, admin+"/allowlist")
	if code != 200 || !strings.Contains(body, "winatp-gw-weu.microsoft.com") || strings.Contains(body, "winatp-gw-cus.microsoft.com") {
		t.Errorf("/allowlist: %d, EU rules expected", code)
	}

	// DNS goes down: readiness fails; the process stays alive.
	dns.Close()
	waitStatus(t, admin+"/readyz", 503)
	if code, _ := httpGet(t, admin+"/healthz"); code != 200 {
		t.Errorf("/healthz while DNS is down = %d", code)
	}
}

// labTLS starts a TLS upstream for app.lab.test and a rules file allowing it.
func labTLS(t *testing.T, dns *testutil.DNS) (ca *testutil.CA, port int, rules string) {
	ca = testutil.NewCA(t)
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "lab upstream "+r.URL.Path)
	}))
	up.TLS = &tls.Config{Certificates: []tls.Certificate{ca.Leaf(t, "app.lab.test")}}
	up.StartTLS()
	t.Cleanup(up.Close)
	port = up.Listener.Addr().(*net.TCPAddr).Port
	dns.Set("app.lab.test", "127.0.0.1")
	rules = filepath.Join(t.TempDir(), "rules.yaml")
	writeFile(t, rules, fmt.Sprintf("rules:\n  - action: allow\n    host: '*.lab.test'\n    ports: [%d]\n", port))
	return ca, port, rules
}

func TestShutdownWithOpenTunnel(t *testing.T) {
	dns := testutil.NewDNS(t)
	ca, port, rules := labTLS(t, dns)
	g := startGateway(t, "GATEWAY_DNS_SERVERS="+dns.Addr, "GATEWAY_RULES_FILE="+rules,
		"GATEWAY_ALLOW_PRIVATE_DESTINATIONS=127.0.0.1", "GATEWAY_SHUTDOWN_GRACE=2s", "GATEWAY_GEOGRAPHIES=EU")
	admin := "http://" + g.admin
	waitStatus(t, admin+"/readyz", 200)

	c, err := net.Dial("tcp", g.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	target := fmt.Sprintf("app.lab.test:%d", port)
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	tc := tls.Client(c, &tls.Config{ServerName: "app.lab.test", RootCAs: ca.Pool})
	get := func(path string) error {
		fmt.Fprintf(tc, "GET %s HTTP/1.1\r\nHost: app.lab.test\r\n\r\n", path)
		resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
		if err != nil {
			return err
		}
		b, _ := io.ReadAll(resp.Body)
		if string(b) != "lab upstream "+path {
			return fmt.Errorf("body %q", b)
		}
		return nil
	}
	if err := get("/before"); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	g.cmd.Process.Signal(syscall.SIGTERM)
	waitStatus(t, admin+"/readyz", 503)
	// The tunnel keeps flowing during the grace period; new connections are refused.
	if err := get("/during"); err != nil {
		t.Fatalf("tunnel during the grace period: %v", err)
	}
	if nc, err := net.DialTimeout("tcp", g.addr, time.Second); err == nil {
		nc.Close()
		t.Errorf("proxy listener still accepts during shutdown")
	}
	done := make(chan error, 1)
	go func() { done <- g.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("exit: %v, want 0", err)
		}
		// One-sided: it must not exit before the tunnel's grace (the
		// upper bound is the select's timeout below).
		if d := time.Since(start); d < 1500*time.Millisecond {
			t.Errorf("exited after %v, before the 2s grace", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("gateway did not exit")
	}
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.ReadAll(tc); err == nil {
		// EOF (nil from ReadAll) is the expected end.
	} else if !strings.Contains(err.Error(), "reset") && !strings.Contains(err.Error(), "EOF") {
		t.Errorf("tunnel after exit: %v", err)
	}
}

func TestMetricsScrape(t *testing.T) {
	dns := testutil.NewDNS(t)
	ca, port, rules := labTLS(t, dns)
	dns.Set("winatp-gw-cus.microsoft.com", "127.0.0.1")
	g := startGateway(t, "GATEWAY_DNS_SERVERS="+dns.Addr, "GATEWAY_RULES_FILE="+rules, "GATEWAY_GEOGRAPHIES=EU",
		"GATEWAY_ALLOW_PRIVATE_DESTINATIONS=127.0.0.1", "GATEWAY_ACCESS_LOG_FORMAT=squid")
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		Proxy: http.ProxyURL(mustURL(t, "http://"+g.addr)), TLSClientConfig: &tls.Config{RootCAs: ca.Pool}}}
	if resp, err := client.Get(fmt.Sprintf("https://app.lab.test:%d/x", port)); err == nil {
		resp.Body.Close()
	} else {
		t.Fatal(err)
	}
	client.Get("https://winatp-gw-cus.microsoft.com/")
	client.CloseIdleConnections()
	// The tunnel's series appear when it has ended: wait for them rather
	// than for a fixed time.
	var scrape string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		_, scrape = httpGet(t, "http://"+g.admin+"/metrics")
		if strings.Contains(scrape, "# TYPE gateway_tunnel_duration_seconds ") || time.Now().After(deadline) {
			break
		}
	}
	exported := map[string]bool{}
	for _, l := range strings.Split(scrape, "\n") {
		if name, ok := strings.CutPrefix(l, "# TYPE "); ok {
			exported[strings.Fields(name)[0]] = true
		}
	}
	listed := map[string]bool{}
	data, err := os.ReadFile("../../deploy/prometheus/metrics.txt")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range strings.Fields(string(data)) {
		listed[n] = true
	}
	var unlisted []string
	for n := range exported {
		if strings.HasPrefix(n, "gateway_") && !listed[n] {
			unlisted = append(unlisted, n)
		}
	}
	sort.Strings(unlisted)
	if len(unlisted) > 0 {
		t.Errorf("exported but missing from deploy/prometheus/metrics.txt: %v", unlisted)
	}
	for _, want := range []string{"gateway_build_info", "gateway_decisions_total", "gateway_tunnel_bytes_total",
		"gateway_dns_queries_total", "gateway_upstream_dial_duration_seconds", "gateway_catalog_rules", "go_goroutines",
		"process_open_fds"} {
		if !exported[want] {
			t.Errorf("scrape lacks %s", want)
		}
	}
	if !strings.Contains(scrape, `reason="geography"`) || !strings.Contains(scrape, `gateway_dns_queries_total{result="success"}`) {
		t.Errorf("scrape lacks the geography refusal or the DNS success:\n%s", scrape)
	}

	// promtool lints the scrape and checks the shipped rules and dashboard.
	if _, err := exec.LookPath("promtool"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("promtool is required in CI (Debian package prometheus)")
		}
		t.Skip("promtool not installed")
	}
	f := filepath.Join(t.TempDir(), "scrape.txt")
	writeFile(t, f, scrape)
	cmd := exec.Command("bash", "../../.ci/check-monitoring")
	cmd.Env = append(os.Environ(), "METRICS_SCRAPE="+f)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("check-monitoring: %v\n%s", err, out)
	}
}

func mustURL(t *testing.T, s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestAccessLogFile(t *testing.T) {
	dns := testutil.NewDNS(t)
	dir := t.TempDir()
	logFile := filepath.Join(dir, "access.log")
	g := startGateway(t, "GATEWAY_DNS_SERVERS="+dns.Addr, "GATEWAY_GEOGRAPHIES=EU",
		"GATEWAY_ACCESS_LOG="+logFile, "GATEWAY_ACCESS_LOG_FORMAT=squid")
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: http.ProxyURL(mustURL(t, "http://"+g.addr))}}
	client.Get("http://www.microsoft.com/other")
	// logrotate: move the file away, SIGHUP, and the next event lands in a new file.
	waitFileContains(t, logFile, "TCP_DENIED/403 0 GET http://www.microsoft.com/other")
	if err := os.Rename(logFile, logFile+".1"); err != nil {
		t.Fatal(err)
	}
	g.cmd.Process.Signal(syscall.SIGHUP)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(logFile); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("log file not reopened after SIGHUP")
		}
	}
	client.Get("http://crl.microsoft.com/second")
	waitFileContains(t, logFile, "GET http://crl.microsoft.com/second")
	if b, _ := os.ReadFile(logFile + ".1"); strings.Contains(string(b), "second") {
		t.Errorf("event written to the rotated file")
	}
}

// TestPprofSwitch checks GATEWAY_PPROF end to end: profiles on the admin
// listener only when switched on, never on the proxy port.
func TestPprofSwitch(t *testing.T) {
	dns := testutil.NewDNS(t)
	for _, tt := range []struct {
		name      string
		env       []string
		wantAdmin int
	}{
		{"default off", nil, 404},
		{"on", []string{"GATEWAY_PPROF=true"}, 200},
	} {
		t.Run(tt.name, func(t *testing.T) {
			g := startGateway(t, append([]string{"GATEWAY_GEOGRAPHIES=EU", "GATEWAY_DNS_SERVERS=" + dns.Addr}, tt.env...)...)
			if code, body := httpGet(t, "http://"+g.admin+"/debug/pprof/goroutine?debug=1"); code != tt.wantAdmin {
				t.Errorf("admin /debug/pprof/goroutine = %d %.60q; want %d", code, body, tt.wantAdmin)
			}
			if code, _ := httpGet(t, "http://"+g.addr+"/debug/pprof/goroutine?debug=1"); code != 404 {
				t.Errorf("proxy port /debug/pprof/goroutine = %d; want 404", code)
			}
		})
	}
}

// TestReadyNeedsADNSAnswer: a new gateway is not ready until a DNS server
// has answered once, and becomes ready when one does.
func TestReadyNeedsADNSAnswer(t *testing.T) {
	silent, err := net.ListenPacket("udp", "127.0.0.1:0") // reads queries, never answers
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { silent.Close() })
	g := startGateway(t, "GATEWAY_DNS_SERVERS="+silent.LocalAddr().String(), "GATEWAY_DNS_TIMEOUT=1s",
		"GATEWAY_DNS_PROBE_INTERVAL=100ms", "GATEWAY_GEOGRAPHIES=EU")
	admin := "http://" + g.admin
	// At once, before the first probe could have timed out.
	if code, body := httpGet(t, admin+"/readyz"); code != 503 || !strings.Contains(body, "dns") {
		t.Errorf("/readyz before any DNS answer: %d %q, want 503 naming DNS", code, body)
	}
	if code, _ := httpGet(t, admin+"/healthz"); code != 200 {
		t.Errorf("/healthz = %d, want 200 (alive, just not ready)", code)
	}
	// Still not ready once the first probe has timed out (awaited through its log line).
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(g.log(), "dns servers do not answer: not ready") {
		if time.Now().After(deadline) {
			t.Fatalf("no 'not ready' log line:\n%s", g.log())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code, body := httpGet(t, admin+"/readyz"); code != 503 {
		t.Errorf("/readyz after a failed probe: %d %q, want 503", code, body)
	}

	dns := testutil.NewDNS(t)
	g2 := startGateway(t, "GATEWAY_DNS_SERVERS="+dns.Addr, "GATEWAY_DNS_PROBE_INTERVAL=100ms", "GATEWAY_GEOGRAPHIES=EU")
	waitStatus(t, "http://"+g2.admin+"/readyz", 200)
	if !strings.Contains(g2.log(), "dns servers answer: ready") {
		t.Errorf("no 'ready' log line:\n%s", g2.log())
	}
}
