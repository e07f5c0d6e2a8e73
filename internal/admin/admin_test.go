package admin

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/defendergw/gateway/internal/allowlist"
	"github.com/defendergw/gateway/internal/reason"
)

// euPolicy is the embedded catalog for an EU gateway.
func euPolicy(t *testing.T) *allowlist.Policy {
	t.Helper()
	cat, err := allowlist.Embedded()
	if err != nil {
		t.Fatal(err)
	}
	p, err := allowlist.NewPolicy(cat, allowlist.Options{Geographies: []allowlist.Geography{allowlist.EU}})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestHandler(t *testing.T) {
	p := euPolicy(t)
	var notReady error
	srv := httptest.NewServer(Handler(Options{
		Policy:  func() *allowlist.Policy { return p },
		Metrics: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "gateway_up 1\n") }),
		Ready:   func() error { return notReady },
	}))
	defer srv.Close()
	get := func(path string) (int, string) {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	tests := []struct {
		name, path string
		wantCode   int
		want       string
	}{
		{"metrics", "/metrics", 200, "gateway_up 1"},
		{"healthz", "/healthz", 200, "ok"},
		{"readyz", "/readyz", 200, "ready"},
		{"decide allowed", "/decide?target=winatp-gw-weu.microsoft.com:443", 200, `"allowed": true`},
		{"decide refused", "/decide?target=https://winatp-gw-cus.microsoft.com/", 200, `"reason": "geography"`},
		{"decide missing target", "/decide", 400, "missing"},
		{"allowlist", "/allowlist", 200, `"catalog_version"`},
		{"unknown", "/nope", 404, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := get(tt.path)
			if code != tt.wantCode || !strings.Contains(body, tt.want) {
				t.Errorf("GET %s: %d %q, want %d containing %q", tt.path, code, body, tt.wantCode, tt.want)
			}
		})
	}
	notReady = errors.New("dns: no server answers")
	if code, body := get("/readyz"); code != 503 || !strings.Contains(body, "dns") {
		t.Errorf("readyz while not ready: %d %q", code, body)
	}
	_, body := get("/allowlist")
	var l allowlist.Listing
	if err := json.Unmarshal([]byte(body), &l); err != nil {
		t.Fatal(err)
	}
	for _, r := range l.Rules {
		if r.Geography != allowlist.WW && r.Geography != allowlist.EU {
			t.Errorf("EU allowlist lists %s of %s", r.Host, r.Geography)
		}
	}
	_, all := get("/allowlist?all=1")
	if !strings.Contains(all, "winatp-gw-cus.microsoft.com") || strings.Contains(body, "winatp-gw-cus.microsoft.com") {
		t.Errorf("?all=1 should add other geographies' rows, and only then")
	}
}

// TestProfiling checks that runtime profiles are served only when enabled.
func TestProfiling(t *testing.T) {
	p := euPolicy(t)
	for _, tt := range []struct {
		name      string
		profiling bool
		path      string
		wantCode  int
		want      string
	}{
		{"off: index", false, "/debug/pprof/", 404, ""},
		{"off: goroutines", false, "/debug/pprof/goroutine?debug=1", 404, ""},
		{"on: index", true, "/debug/pprof/", 200, "goroutine"},
		{"on: goroutines", true, "/debug/pprof/goroutine?debug=1", 200, "goroutine profile: total"},
		{"on: heap", true, "/debug/pprof/heap?debug=1", 200, "heap profile"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(Handler(Options{Policy: func() *allowlist.Policy { return p }, Profiling: tt.profiling}))
			defer srv.Close()
			resp, err := http.Get(srv.URL + tt.path)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.wantCode || !strings.Contains(string(b), tt.want) {
				t.Errorf("GET %s: %d %.80q; want %d containing %q", tt.path, resp.StatusCode, b, tt.wantCode, tt.want)
			}
		})
	}
}

// TestStatusRoutes mounts the status page at / and /status.json only when
// it is given, and never lets / catch every unknown path.
func TestStatusRoutes(t *testing.T) {
	p := euPolicy(t)
	status := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "status "+r.URL.Path) })
	tests := []struct {
		name   string
		status http.Handler
		path   string
		code   int
		body   string
	}{
		{"page", status, "/", 200, "status /"},
		{"json", status, "/status.json", 200, "status /status.json"},
		{"unknown path", status, "/nope", 404, ""},
		{"no page", nil, "/", 404, ""},
		{"no json", nil, "/status.json", 404, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(Handler(Options{Policy: func() *allowlist.Policy { return p }, Status: tt.status}))
			defer srv.Close()
			resp, err := http.Get(srv.URL + tt.path)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.code || (tt.body != "" && string(body) != tt.body) {
				t.Errorf("GET %s = %d %q, want %d %q", tt.path, resp.StatusCode, body, tt.code, tt.body)
			}
		})
	}
}

// TestDecideServiceDisabled checks that /decide names a disabled service and
// the setting that disabled it, in reason, error and detail.
func TestDecideServiceDisabled(t *testing.T) {
	cat, err := allowlist.Embedded()
	if err != nil {
		t.Fatal(err)
	}
	const target = "http://crl.microsoft.com/pki/crl/products/x.crl"
	tests := []struct {
		name       string
		opts       allowlist.Options
		target     string
		wantReason allowlist.Reason
		wantDetail string
	}{
		{"by setting", allowlist.Options{DisabledServices: []string{"crl"}}, target, reason.ServiceDisabled,
			`service "crl" (CRL / certificate trust) is disabled by GATEWAY_DISABLED_SERVICES`},
		{"by rules file", allowlist.Options{RulesDisabledServices: []string{"crl"}}, target, reason.ServiceDisabled,
			`service "crl" (CRL / certificate trust) is disabled by disable_services in the rules file (GATEWAY_RULES_FILE)`},
		{"unlisted: no detail", allowlist.Options{DisabledServices: []string{"crl"}}, "unlisted.example.com:443",
			reason.NotListed, ""},
		{"enabled: allowed", allowlist.Options{}, target, reason.Allowed, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.opts.Geographies = []allowlist.Geography{allowlist.EU}
			p, err := allowlist.NewPolicy(cat, tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			srv := httptest.NewServer(Handler(Options{Policy: func() *allowlist.Policy { return p }}))
			defer srv.Close()
			resp, err := http.Get(srv.URL + "/decide?target=" + url.QueryEscape(tt.target))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if got, want := resp.StatusCode, http.StatusOK; got != want {
				t.Fatalf("status = %d, want %d", got, want)
			}
			var raw map[string]any
			var e allowlist.Explanation
			b, _ := io.ReadAll(resp.Body)
			if err := json.Unmarshal(b, &raw); err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(b, &e); err != nil {
				t.Fatal(err)
			}
			if got, want := raw["reason"], tt.wantReason.String(); got != want {
				t.Errorf("reason = %v, want %q", got, want)
			}
			if got, want := e.Allowed, tt.wantReason == reason.Allowed; got != want {
				t.Errorf("allowed = %v, want %v", got, want)
			}
			detail, _ := raw["detail"].(string)
			if got, want := detail, tt.wantDetail; got != want {
				t.Errorf("detail = %q, want %q", got, want)
			}
			if tt.wantDetail == "" {
				return
			}
			if !strings.Contains(e.Error, tt.wantDetail) {
				t.Errorf("error = %q, want it to carry the detail", e.Error)
			}
			if e.Service != "crl" || e.Rule == nil || e.Rule.ServiceID != "crl" || e.Rule.Host != "crl.microsoft.com" {
				t.Errorf("service %q rule %+v, want the disabled crl row", e.Service, e.Rule)
			}
		})
	}
}
