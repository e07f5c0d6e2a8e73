package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/defendergw/gateway/internal/status"
	"github.com/defendergw/gateway/internal/testutil"
)

var updateScreenshot = flag.Bool("update-screenshot", false, "rewrite docs/status-page.png from the Chromium test")

// proxyClient is an HTTP client that goes through the lab gateway and
// trusts the lab CA.
func proxyClient(t *testing.T, l *labProcess) *http.Client {
	t.Helper()
	pem, err := os.ReadFile(l.ca)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		Proxy:           http.ProxyURL(mustURL(t, l.gateway)),
		TLSClientConfig: &tls.Config{RootCAs: roots},
	}}
}

// waitFor polls the admin listener until ok accepts the body of path.
func waitFor(t *testing.T, u string, ok func(string) bool) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var body string
	for time.Now().Before(deadline) {
		_, body = httpGet(t, u)
		if ok(body) {
			return body
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s never became what the test waits for; last:\n%s", u, body)
	return ""
}

// TestStatusPageInChromium sends real traffic through the lab gateway and
// reads the status page in headless Chromium: the service rows count it and
// the refusals are listed with their reasons.
func TestStatusPageInChromium(t *testing.T) {
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("chromium is required in CI (Debian package chromium)")
		}
		t.Skip("chromium not installed")
	}
	l := startLab(t, "GATEWAY_GEOGRAPHIES=EU", "GATEWAY_UPSTREAM_CHECK_INTERVAL=10s")
	c := proxyClient(t, l)
	traffic := []struct {
		name, url string
		status    int
	}{
		{"EU command and control", "https://edr-weu.eu.endpoint.security.microsoft.com/edr/commands/test", 200},
		{"EU command and control again", "https://edr-neu.eu.endpoint.security.microsoft.com/edr/commands/test", 200},
		{"CRL over plain HTTP", "http://crl.microsoft.com/pki/crl/products/status-page.crl", 200},
		{"US geography refused", "http://edr-eus.us.endpoint.security.microsoft.com/edr/commands/test", 403},
		{"unlisted refused", "http://unlisted.example.com/", 403},
	}
	for _, tt := range traffic {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := c.Get(tt.url)
			if err != nil {
				if tt.status == 200 {
					t.Fatalf("GET %s: %v", tt.url, err)
				}
				return // a refused CONNECT ends the request with an error
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.status {
				t.Errorf("GET %s = %d, want %d", tt.url, resp.StatusCode, tt.status)
			}
		})
	}
	// The board records a tunnel when it ends, so close the client's.
	c.CloseIdleConnections()
	waitFor(t, l.admin+"/status.json", func(body string) bool {
		var s status.Snapshot
		return json.Unmarshal([]byte(body), &s) == nil && len(s.Refusals) >= 2 && s.Check != nil &&
			serviceRequests(s, "streamlined") >= 3
	})

	dir := t.TempDir()
	args := []string{"--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir=" + dir, "--window-size=1280,1600",
		// Nothing but loopback: the page must load no external asset.
		"--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--virtual-time-budget=3000"}
	run := func(extra ...string) string {
		t.Helper()
		return runChromium(t, chromium, append(args, extra...)...)
	}
	dom := run("--dump-dom", l.admin+"/")

	rows := []struct {
		service            string
		class              string
		requests, refusals string
	}{
		// The EDR gateways of the streamlined connectivity: two EU
		// tunnels and the US refusal (its row is the US one). The
		// tunnels end, and so succeed, after the refusal: ok.
		{"streamlined", "ok", "3", "1"},
		{"crl", "ok", "1", "0"},
	}
	for _, tt := range rows {
		t.Run("row "+tt.service, func(t *testing.T) {
			re := regexp.MustCompile(`<tr class="(\w+)" data-service="` + regexp.QuoteMeta(tt.service) +
				`">\s*<td>[^<]*</td>\s*<td class="n">(\d+)</td>\s*<td class="n">(\d+)</td>`)
			m := re.FindStringSubmatch(dom)
			if m == nil {
				t.Fatalf("no row for %s in the page:\n%s", tt.service, dom)
			}
			if m[1] != tt.class || m[2] != tt.requests || m[3] != tt.refusals {
				t.Errorf("row %s: class %s, requests %s, refusals %s; want %s, %s, %s", tt.service, m[1], m[2], m[3],
					tt.class, tt.requests, tt.refusals)
			}
		})
	}
	refusals := section(t, dom, `id="refusals"`)
	for _, want := range []string{"edr-eus.us.endpoint.security.microsoft.com", "<code>geography</code>",
		"unlisted.example.com", "<code>not-listed</code>"} {
		if !strings.Contains(refusals, want) {
			t.Errorf("recent refusals lack %q:\n%s", want, refusals)
		}
	}
	if top := section(t, dom, `id="top-refused"`); !strings.Contains(top, "unlisted.example.com:80") {
		t.Errorf("top refused destinations lack unlisted.example.com:80:\n%s", top)
	}
	if check := section(t, dom, `id="upstream-check"`); !strings.Contains(check, "streamlined") || strings.Contains(check, "failed") {
		t.Errorf("upstream check against the lab does not show every service passing:\n%s", check)
	}
	if !strings.Contains(dom, `<dd id="geographies">WW, EU</dd>`) {
		t.Errorf("configuration lacks the geographies WW, EU")
	}

	if *updateScreenshot {
		shot := dir + "/shot.png"
		run("--screenshot="+shot, l.admin+"/")
		png, err := os.ReadFile(shot)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile("../../docs/status-page.png", png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func serviceRequests(s status.Snapshot, service string) int {
	for _, r := range s.Services {
		if r.Service == service {
			return r.Requests
		}
	}
	return 0
}

// section returns the page from the element with attr to the end of its
// table (or paragraph).
func section(t *testing.T, dom, attr string) string {
	t.Helper()
	i := strings.Index(dom, attr)
	if i < 0 {
		t.Fatalf("page has no %s:\n%s", attr, dom)
	}
	s := dom[i:]
	for _, end := range []string{"</table>", "</p>"} {
		if j := strings.Index(s, end); j >= 0 {
			return s[:j]
		}
	}
	return s
}

// TestUpstreamCheck runs the check against the lab, where every required
// endpoint answers, and against a gateway whose DNS knows none of them.
func TestUpstreamCheck(t *testing.T) {
	t.Run("lab", func(t *testing.T) {
		l := startLab(t, "GATEWAY_GEOGRAPHIES=EU", "GATEWAY_UPSTREAM_CHECK_INTERVAL=10s")
		metrics := waitFor(t, l.admin+"/metrics", func(b string) bool {
			return strings.Contains(b, "gateway_upstream_check_success{")
		})
		for _, svc := range []string{"edr-cnc", "crl", "cloud-protection-geo", "sample-storage"} {
			if !strings.Contains(metrics, `gateway_upstream_check_success{service="`+svc+`"} 1`) {
				t.Errorf("%s not checked successfully:\n%s", svc, grepLines(metrics, "gateway_upstream_check"))
			}
		}
		if failing := regexp.MustCompile(`gateway_upstream_check_success\{service="[^"]+"\} 0`).FindAllString(metrics, -1); failing != nil {
			t.Errorf("services fail against the lab: %v", failing)
		}
	})
	t.Run("no DNS answers", func(t *testing.T) {
		dns := testutil.NewDNS(t) // knows no name: every lookup is NXDOMAIN
		g := startGateway(t, "GATEWAY_GEOGRAPHIES=EU", "GATEWAY_DNS_SERVERS="+dns.Addr,
			"GATEWAY_UPSTREAM_CHECK_INTERVAL=10s", "GATEWAY_DIAL_TIMEOUT=2s")
		admin := "http://" + g.admin
		metrics := waitFor(t, admin+"/metrics", func(b string) bool {
			return strings.Contains(b, "gateway_upstream_check_success{")
		})
		if !strings.Contains(metrics, `gateway_upstream_check_success{service="edr-cnc"} 0`) {
			t.Errorf("edr-cnc passes with no DNS answer:\n%s", grepLines(metrics, "gateway_upstream_check"))
		}
		var s status.Snapshot
		_, body := httpGet(t, admin+"/status.json")
		if err := json.Unmarshal([]byte(body), &s); err != nil || s.Check == nil {
			t.Fatalf("status.json has no upstream check: %v\n%s", err, body)
		}
		for _, svc := range s.Check.Services {
			if svc.OK || len(svc.Failed) == 0 || svc.Failed[0].Diagnosis != "dns-failure" {
				t.Errorf("service %s: %+v, want failed with dns-failure", svc.Service, svc)
			}
		}
		if log := g.log(); !strings.Contains(log, "upstream check: required Defender endpoints do not answer") {
			t.Errorf("no warning logged:\n%s", log)
		}
	})
}
