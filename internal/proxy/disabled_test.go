package proxy

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/defendergw/gateway/internal/allowlist"
	"github.com/defendergw/gateway/internal/reason"
)

// servePolicy starts a second gateway on 127.0.0.1 with w's options and
// policy p (newWorld builds its policy from rules alone), and points w's
// clients at it.
func (w *world) servePolicy(t *testing.T, p *allowlist.Policy) {
	t.Helper()
	opts := w.srv.opts
	opts.Policy = func() *allowlist.Policy { return p }
	srv, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: srv, ReadHeaderTimeout: 5 * time.Second}
	go hs.Serve(ln)
	t.Cleanup(func() {
		hs.Close()
		srv.Close()
	})
	w.srv = srv
	w.proxyURL = &url.URL{Scheme: "http", Host: ln.Addr().String()}
}

func disabledPolicy(t *testing.T, opts allowlist.Options) *allowlist.Policy {
	t.Helper()
	cat, err := allowlist.Embedded()
	if err != nil {
		t.Fatal(err)
	}
	opts.Geographies = eu
	p, err := allowlist.NewPolicy(cat, opts)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestServiceDisabled checks that a request only a disabled service's row
// would allow is refused with 403 service-disabled and a body naming the
// service and the setting, over CONNECT and plain HTTP, and that the
// upstream is never contacted.
func TestServiceDisabled(t *testing.T) {
	settings := []struct {
		name    string
		opts    allowlist.Options
		setting string
	}{
		{"GATEWAY_DISABLED_SERVICES", allowlist.Options{DisabledServices: []string{"crl"}},
			"is disabled by GATEWAY_DISABLED_SERVICES"},
		{"rules file", allowlist.Options{RulesDisabledServices: []string{"crl"}},
			"is disabled by disable_services in the rules file (GATEWAY_RULES_FILE)"},
	}
	for _, st := range settings {
		t.Run(st.name, func(t *testing.T) {
			w := newWorld(t, worldOptions{geos: eu})
			w.servePolicy(t, disabledPolicy(t, st.opts))
			tests := []struct {
				name       string
				connect    string // CONNECT target, or
				get        string // absolute-form GET
				wantStatus int
				wantReason string
			}{
				{"connect to the disabled service's port", "crl.microsoft.com:80", "", 403, "service-disabled"},
				{"http to the disabled service's row", "", "http://crl.microsoft.com/pki/crl/products/x.crl", 403, "service-disabled"},
				{"http to a path row of the disabled service", "", "http://www.microsoft.com/pkiops/certs/x.crt", 403, "service-disabled"},
				{"port no row allows: still port", "crl.microsoft.com:8443", "", 403, "port"},
				{"unlisted: still not-listed", "unlisted.example.com:443", "", 403, "not-listed"},
				{"another service's row still allows", "crl.microsoft.com:443", "", 200, ""},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					beforeTLS := w.tlsConns.Load()
					var resp *http.Response
					if tt.connect != "" {
						_, resp = w.connect(tt.connect, nil)
					} else {
						var err error
						if resp, err = w.client().Get(tt.get); err != nil {
							t.Fatal(err)
						}
					}
					defer resp.Body.Close()
					if got, want := resp.StatusCode, tt.wantStatus; got != want {
						t.Fatalf("status = %d, want %d", got, want)
					}
					if got, want := resp.Header.Get(ReasonHeader), tt.wantReason; got != want {
						t.Errorf("%s = %q, want %q", ReasonHeader, got, want)
					}
					if tt.wantStatus == 200 {
						return
					}
					body := readAll(t, resp.Body)
					if tt.wantReason == "service-disabled" {
						for _, want := range []string{"403 Forbidden: service-disabled", `service "crl"`, st.setting,
							"Remove crl from"} {
							if !strings.Contains(body, want) {
								t.Errorf("body %q lacks %q", body, want)
							}
						}
					} else if strings.Contains(body, "disabled") {
						t.Errorf("body %q speaks of a disabled service", body)
					}
					if n := w.tlsConnsSince(t, beforeTLS); n != 0 {
						t.Errorf("upstream saw %d TLS connections, want 0", n)
					}
					select {
					case r := <-w.httpReqs:
						t.Errorf("upstream saw %s %s", r.Method, r.URL)
					default:
					}
				})
			}
			if logs := w.logs.String(); !strings.Contains(logs, `"reason":"service-disabled"`) ||
				!strings.Contains(logs, `"service":"crl"`) {
				t.Errorf("log lacks the service-disabled decision:\n%s", logs)
			}
		})
	}
}

func TestClassifyServiceDisabled(t *testing.T) {
	tests := []struct {
		name string
		err  error
	}{
		{"sentinel", allowlist.ErrServiceDisabled},
		{"wrapped", fmt.Errorf("crl.microsoft.com:80: %w", allowlist.ErrServiceDisabled)},
		{"joined", errors.Join(errors.New("ctx"), allowlist.ErrServiceDisabled)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rc, status := classify(tt.err)
			if got, want := status, http.StatusForbidden; got != want {
				t.Errorf("status = %d, want %d", got, want)
			}
			if got, want := rc.String(), "service-disabled"; got != want {
				t.Errorf("reason = %q, want %q", got, want)
			}
		})
	}
}

func TestHintServiceDisabled(t *testing.T) {
	rule := &allowlist.Rule{ID: "catalog:21", ServiceID: "crl", ServiceName: "CRL / certificate trust"}
	tests := []struct {
		name string
		d    *allowlist.Decision
		want string
	}{
		{"setting", &allowlist.Decision{Reason: reason.ServiceDisabled, Rule: rule, DisabledBy: allowlist.DisabledBySetting},
			`crl.microsoft.com:80 is refused: service "crl" (CRL / certificate trust) is disabled by GATEWAY_DISABLED_SERVICES; rule catalog:21 would allow it. Remove crl from GATEWAY_DISABLED_SERVICES if endpoints need the service.`},
		{"rules file", &allowlist.Decision{Reason: reason.ServiceDisabled, Rule: rule, DisabledBy: allowlist.DisabledByRulesFile},
			`crl.microsoft.com:80 is refused: service "crl" (CRL / certificate trust) is disabled by disable_services in the rules file (GATEWAY_RULES_FILE); rule catalog:21 would allow it. Remove crl from disable_services in the rules file (GATEWAY_RULES_FILE) if endpoints need the service.`},
		{"both", &allowlist.Decision{Reason: reason.ServiceDisabled, Rule: rule, DisabledBy: allowlist.DisabledByBoth},
			`Remove crl from both GATEWAY_DISABLED_SERVICES and disable_services in the rules file (GATEWAY_RULES_FILE)`},
		{"no decision", nil, "GATEWAY_DISABLED_SERVICES, or disable_services in the rules file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := hint(reason.ServiceDisabled, "crl.microsoft.com:80", tt.d, nil); !strings.Contains(got, tt.want) {
				t.Errorf("hint = %q, want %q", got, tt.want)
			}
		})
	}
}
