package status

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/defendergw/gateway/internal/proxy"
	"github.com/defendergw/gateway/internal/telemetry"
	"github.com/defendergw/gateway/internal/testutil/fakeclock"
	"github.com/defendergw/gateway/internal/upcheck"
)

func newBoard() (*Board, *fakeclock.Clock) {
	c := fakeclock.New(time.Date(2026, 12, 2, 10, 0, 30, 0, time.UTC))
	return New(Options{Now: c.Now}), c
}

func ev(action, service, url string, port int, reason string) telemetry.Event {
	e := telemetry.Event{ActionType: action, LocalIP: "127.0.0.1", RemoteURL: url, RemotePort: port, Status: 200}
	e.Fields.Service, e.Fields.Reason = service, reason
	if action == telemetry.ConnectionBlocked {
		e.Status = 403
	}
	return e
}

func row(t *testing.T, tr Traffic, service string) ServiceRow {
	t.Helper()
	for _, r := range tr.Services {
		if r.Service == service {
			return r
		}
	}
	t.Fatalf("no row for service %q in %+v", service, tr.Services)
	return ServiceRow{}
}

func TestBoardCounts(t *testing.T) {
	b, c := newBoard()
	b.Log(ev(telemetry.ConnectionSuccess, "edr-cnc", "edr-weu.endpoint.security.microsoft.com", 443, ""))
	b.Log(ev(telemetry.ConnectionAudited, "edr-cnc", "edr-weu.endpoint.security.microsoft.com", 443, "geography"))
	b.Log(ev(telemetry.ConnectionBlocked, "edr-cnc", "edr-eus.endpoint.security.microsoft.com", 443, "geography"))
	b.Log(ev(telemetry.ConnectionFailed, "crl", "http://crl.microsoft.com/pki/crl/x.crl?secret=1", 80, "dns-failure"))
	b.Log(ev(telemetry.ConnectionBlocked, "", "example.com", 443, "not-listed"))

	tr := b.Traffic([]string{"edr-cnc", "crl", "av-core"})
	tests := []struct {
		service                      string
		requests, refusals, failures int
		success                      bool
		problem                      string // reason of the last problem, "" for none
	}{
		{"edr-cnc", 3, 1, 0, true, "geography"},
		{"crl", 1, 0, 1, false, "dns-failure"},
		{"av-core", 0, 0, 0, false, ""}, // listed by the policy, no traffic: still a row
		{"", 1, 1, 0, false, "not-listed"},
	}
	for _, tt := range tests {
		t.Run(tt.service, func(t *testing.T) {
			r := row(t, tr, tt.service)
			if r.Requests != tt.requests || r.Refusals != tt.refusals || r.Failures != tt.failures {
				t.Errorf("counts = %d/%d/%d, want %d/%d/%d", r.Requests, r.Refusals, r.Failures,
					tt.requests, tt.refusals, tt.failures)
			}
			if (r.LastSuccess != nil) != tt.success {
				t.Errorf("last success = %v, want set %v", r.LastSuccess, tt.success)
			}
			switch {
			case tt.problem == "" && r.LastProblem != nil:
				t.Errorf("last problem = %+v, want none", r.LastProblem)
			case tt.problem != "" && (r.LastProblem == nil || r.LastProblem.Reason != tt.problem):
				t.Errorf("last problem = %+v, want reason %s", r.LastProblem, tt.problem)
			}
		})
	}
	if got := tr.Services[0].Service; got != "av-core" {
		t.Errorf("first row = %q, want the policy's services in name order (av-core first)", got)
	}
	if got := row(t, tr, "crl").LastProblem.Target; got != "crl.microsoft.com:80" {
		t.Errorf("failed plain-HTTP target = %q, want the host alone (no path or query)", got)
	}
	if got := row(t, tr, "edr-cnc").Health(c.Now()); got != "problem" {
		t.Errorf("health after a refusal = %q, want problem", got)
	}

	// Fifteen minutes on, the counts have left the window; the last
	// success and problem stay.
	c.Advance(Window)
	r := row(t, b.Traffic(nil), "edr-cnc")
	if r.Requests != 0 || r.Refusals != 0 {
		t.Errorf("after the window: requests %d refusals %d, want 0", r.Requests, r.Refusals)
	}
	if r.LastSuccess == nil || r.LastProblem == nil {
		t.Errorf("after the window the last success and problem were lost: %+v", r)
	}
	if got := r.Health(c.Now()); got != "idle" {
		t.Errorf("health after the window = %q, want idle", got)
	}
	if len(b.Traffic(nil).TopRefused) != 0 {
		t.Errorf("top refused after the window = %v, want none", b.Traffic(nil).TopRefused)
	}
}

func TestBoardBounded(t *testing.T) {
	b, _ := newBoard()
	// A refusal flood of distinct destinations around one heavy hitter.
	for i := range 5000 {
		b.Log(ev(telemetry.ConnectionBlocked, "", fmt.Sprintf("h%d.example.com", i), 443, "not-listed"))
		if i%10 == 0 {
			b.Log(ev(telemetry.ConnectionBlocked, "", "heavy.example.com", 443, "not-listed"))
		}
	}
	for i := range maxServiceRows + 50 {
		b.Log(ev(telemetry.ConnectionSuccess, fmt.Sprintf("svc-%03d", i), "x.example.com", 443, ""))
	}
	b.Log(ev(telemetry.ConnectionBlocked, "", strings.Repeat("a", 10000)+".example.com", 443, "not-listed"))
	tr := b.Traffic(nil)

	if len(tr.Refusals) != RefusalRing {
		t.Errorf("ring holds %d refusals, want %d", len(tr.Refusals), RefusalRing)
	}
	if got := tr.Refusals[0].Target; len(got) != maxString {
		t.Errorf("newest refusal's target is %d bytes, want clipped to %d", len(got), maxString)
	}
	if got := tr.Refusals[1].Target; got != "h4999.example.com:443" {
		t.Errorf("second newest refusal = %q, want h4999.example.com:443 (newest first)", got)
	}
	if len(tr.TopRefused) != TopShown {
		t.Errorf("top list has %d entries, want %d", len(tr.TopRefused), TopShown)
	}
	if top := tr.TopRefused[0]; top.Target != "heavy.example.com:443" || top.Count < 500 {
		t.Errorf("top refused = %+v, want heavy.example.com:443 with at least its 500 refusals", top)
	}
	if n := len(tr.Services); n != maxServiceRows {
		t.Errorf("%d service rows, want at most %d", n, maxServiceRows)
	}
	if r := row(t, tr, OtherService); r.Requests == 0 {
		t.Errorf("services past the bound were not counted under %s", OtherService)
	}
}

// TestBoardAllocs keeps the success path of Log free of allocations once a
// service's row exists: it runs for every connection.
func TestBoardAllocs(t *testing.T) {
	b, _ := newBoard()
	e := ev(telemetry.ConnectionSuccess, "edr-cnc", "edr-weu.endpoint.security.microsoft.com", 443, "")
	e.Timestamp = time.Now()
	b.Log(e)
	if n := testing.AllocsPerRun(100, func() { b.Log(e) }); n != 0 {
		t.Errorf("Log of a success allocates %.0f times, want 0", n)
	}
}

func TestComposeTunnels(t *testing.T) {
	b, c := newBoard()
	opened := c.Now().Add(-time.Hour)
	tun := proxy.TunnelSummary{Total: 1, ByService: map[string]int{"edr-cnc": 1},
		Newest: map[string]time.Time{"edr-cnc": opened}}
	s := Compose(c.Now(), Gateway{CatalogPublished: c.Now().Add(-72 * time.Hour)}, b.Traffic([]string{"edr-cnc"}), tun)
	r := s.Services[0]
	if r.OpenTunnels != 1 || r.LastSuccess == nil || !r.LastSuccess.Equal(opened) {
		t.Errorf("row = %+v, want 1 open tunnel and last success %s", r, opened)
	}
	if got := r.Health(c.Now()); got != "ok" {
		t.Errorf("health with an open tunnel = %q, want ok", got)
	}
	if s.Gateway.CatalogAgeDays != 3 {
		t.Errorf("catalog age = %d days, want 3", s.Gateway.CatalogAgeDays)
	}
}

func TestHandler(t *testing.T) {
	b, c := newBoard()
	b.Log(ev(telemetry.ConnectionBlocked, "", "<script>alert(1)</script>.example.com", 443, "not-listed"))
	b.Log(ev(telemetry.ConnectionSuccess, "edr-cnc", "edr-weu.endpoint.security.microsoft.com", 443, ""))
	b.SetCheck(upcheck.Report{Started: c.Now(), Duration: time.Second, Services: []upcheck.ServiceResult{
		{Service: "edr-cnc", OK: true, URLs: 2},
		{Service: "crl", OK: false, URLs: 1, Failed: []upcheck.Failed{{URL: "http://crl.microsoft.com/", Diagnosis: "dns-failure"}}},
	}})
	snap := func() Snapshot {
		return Compose(c.Now(), Gateway{Cloud: "commercial", Geographies: []string{"WW", "EU"}, UpstreamCheck: "every 5m0s"},
			b.Traffic([]string{"edr-cnc", "crl"}), proxy.TunnelSummary{})
	}
	srv := httptest.NewServer(Handler(snap))
	t.Cleanup(srv.Close)

	get := func(path string) (*http.Response, string) {
		t.Helper()
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp, string(body)
	}
	resp, html := get("/")
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
		t.Errorf("content type = %q", ct)
	}
	for _, want := range []string{`<meta http-equiv="refresh"`, `data-service="edr-cnc"`, `class="problem" data-service="crl"`,
		"&lt;script&gt;", "WW, EU", "dns-failure"} {
		if !strings.Contains(html, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	if strings.Contains(html, "<script>") || strings.Contains(html, "src=\"http") || strings.Contains(html, "href=\"http") {
		t.Error("page carries a script or an external asset")
	}

	resp, body := get("/status.json")
	var s Snapshot
	if err := json.Unmarshal([]byte(body), &s); err != nil {
		t.Fatalf("status.json: %v\n%s", err, body)
	}
	if resp.Header.Get("Cache-Control") != "no-store" {
		t.Error("status.json may be cached")
	}
	if len(s.Refusals) != 1 || s.Gateway.Cloud != "commercial" || s.Check == nil || len(s.Check.Services) != 2 {
		t.Errorf("status.json = %+v, want one refusal, the cloud and two checked services", s)
	}
	if got := row(t, s.Traffic, "crl").UpstreamCheck; got != "failed" {
		t.Errorf("crl row's upstream check = %q, want failed", got)
	}
}
