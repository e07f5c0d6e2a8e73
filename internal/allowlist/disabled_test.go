package allowlist

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/defendergw/gateway/internal/reason"
)

// TestDecideDisabledService checks that a target only a disabled service's
// row would allow is refused as service-disabled, naming the service and the
// setting, and that every other decision stays what it was.
func TestDecideDisabledService(t *testing.T) {
	operator, err := ParseRules([]byte(`
rules:
  - action: allow
    host: crl.microsoft.com
    ports: [80]
    service: contoso-crl
  - action: deny
    host: ctldl.windowsupdate.com
`), "rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	eu := []Geography{EU}
	bySetting := Options{Geographies: eu, DisabledServices: []string{"crl"}}
	byFile := Options{Geographies: eu, RulesDisabledServices: []string{"crl"}}
	byBoth := Options{Geographies: eu, DisabledServices: []string{"crl"}, RulesDisabledServices: []string{"crl"}}
	tests := []struct {
		name       string
		opts       Options
		target     string
		wantReason Reason
		wantRule   string // host of the decision's rule ("" for none)
		wantSvc    string
		wantBy     DisabledBy
		wantDetail string // substring of Detail(); "" wants Detail() == ""
	}{
		{"the issue: crl by setting, not port from the portal row", bySetting,
			"http://crl.microsoft.com/pki/crl/products/x.crl", reason.ServiceDisabled, "crl.microsoft.com", "crl",
			DisabledBySetting, `service "crl" (CRL / certificate trust) is disabled by GATEWAY_DISABLED_SERVICES`},
		{"crl by rules file", byFile,
			"http://crl.microsoft.com/pki/crl/products/x.crl", reason.ServiceDisabled, "crl.microsoft.com", "crl",
			DisabledByRulesFile, `service "crl" (CRL / certificate trust) is disabled by disable_services in the rules file (GATEWAY_RULES_FILE)`},
		{"crl by both", byBoth, "crl.microsoft.com:80", reason.ServiceDisabled, "crl.microsoft.com", "crl",
			DisabledByBoth, "disabled by GATEWAY_DISABLED_SERVICES and by disable_services in the rules file"},
		{"connect to a host only the disabled service lists", bySetting, "ctldl.windowsupdate.com:80",
			reason.ServiceDisabled, "ctldl.windowsupdate.com", "crl", DisabledBySetting, `service "crl"`},
		{"path row of the disabled service", bySetting, "http://www.microsoft.com/pkiops/certs/x.crt",
			reason.ServiceDisabled, "www.microsoft.com", "crl", DisabledBySetting, `service "crl"`},
		{"disabled row's port does not fit: still port", bySetting, "crl.microsoft.com:8080",
			reason.Port, "crl.microsoft.com", "admin-portal", NotDisabled, ""},
		{"disabled row's path does not fit: the enabled row's refusal", bySetting, "http://www.microsoft.com/other",
			reason.Port, "www.microsoft.com", "av-update", NotDisabled, ""},
		{"host no enabled row names", Options{DisabledServices: []string{"mma"}}, "ws.ods.opinsights.azure.com:443",
			reason.ServiceDisabled, "*.ods.opinsights.azure.com", "mma", DisabledBySetting, `service "mma"`},
		{"no row at all: still not-listed", bySetting, "unlisted.example.com:443",
			reason.NotListed, "", "", NotDisabled, ""},
		{"enabled row still allows", bySetting, "crl.microsoft.com:443",
			reason.Allowed, "crl.microsoft.com", "admin-portal", NotDisabled, ""},
		{"other services unaffected", bySetting, "winatp-gw-weu.microsoft.com:443",
			reason.Allowed, "winatp-gw-weu.microsoft.com", "edr-cnc", NotDisabled, ""},
		{"other refusals unaffected", bySetting, "winatp-gw-cus.microsoft.com:443",
			reason.Geography, "winatp-gw-cus.microsoft.com", "edr-cnc", NotDisabled, ""},
		{"operator allow rule wins", Options{Geographies: eu, DisabledServices: []string{"crl"}, Rules: operator.Rules},
			"http://crl.microsoft.com/pki/crl/products/x.crl", reason.Allowed, "crl.microsoft.com", "contoso-crl", NotDisabled, ""},
		{"operator deny rule still refuses as deny", Options{Geographies: eu, DisabledServices: []string{"crl"}, Rules: operator.Rules},
			"ctldl.windowsupdate.com:80", reason.NotListed, "ctldl.windowsupdate.com", "operator", NotDisabled, ""},
		{"government cloud", Options{Cloud: CloudDoD, DisabledServices: []string{"crl"}},
			"http://crl.microsoft.com/pki/crl/products/a.crl", reason.ServiceDisabled, "crl.microsoft.com", "crl",
			DisabledBySetting, `service "crl"`},
		{"nothing disabled: crl allowed", Options{Geographies: eu},
			"http://crl.microsoft.com/pki/crl/products/x.crl", reason.Allowed, "crl.microsoft.com", "crl", NotDisabled, ""},
		{"nothing disabled: port is port", Options{Geographies: eu},
			"crl.microsoft.com:8080", reason.Port, "crl.microsoft.com", "crl", NotDisabled, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustPolicy(t, tt.opts)
			d := decide(t, p, tt.target)
			if got, want := d.Reason, tt.wantReason; got != want {
				t.Fatalf("%s: reason = %q (err %v, rule %s), want %q", tt.target, got, d.Err, d.RuleID(), want)
			}
			if got, want := d.Allowed, tt.wantReason == reason.Allowed; got != want {
				t.Errorf("allowed = %v, want %v", got, want)
			}
			if got, want := d.Err == ErrServiceDisabled, tt.wantReason == reason.ServiceDisabled; got != want {
				t.Errorf("err = %v, want ErrServiceDisabled: %v", d.Err, want)
			}
			host := ""
			if d.Rule != nil {
				host = d.Rule.Host
			}
			if got, want := host, tt.wantRule; got != want {
				t.Errorf("rule host = %q, want %q", got, want)
			}
			if got, want := d.Service(), tt.wantSvc; got != want {
				t.Errorf("service = %q, want %q", got, want)
			}
			if got, want := d.DisabledBy, tt.wantBy; got != want {
				t.Errorf("disabled by = %v, want %v", got, want)
			}
			got := d.Detail()
			if tt.wantDetail == "" && got != "" || !strings.Contains(got, tt.wantDetail) {
				t.Errorf("detail = %q, want %q", got, tt.wantDetail)
			}
		})
	}
}

// TestDisabledServiceModes checks audit and unlisted modes: audit lets a
// disabled service's target through and says why; unlisted-authenticated
// keeps opening destinations no rule in force names.
func TestDisabledServiceModes(t *testing.T) {
	tests := []struct {
		name         string
		opts         Options
		target       string
		wantAllowed  bool
		wantReason   Reason
		wantAudited  bool
		wantUnlisted bool
	}{
		{"audit", Options{Audit: true, DisabledServices: []string{"crl"}}, "crl.microsoft.com:80",
			true, reason.ServiceDisabled, true, false},
		{"unlisted-authenticated: host no enabled row names", Options{UnlistedAuthenticated: true,
			DisabledServices: []string{"mma"}}, "ws.ods.opinsights.azure.com:443", true, reason.Unlisted, false, true},
		{"unlisted-authenticated: unlisted port", Options{UnlistedAuthenticated: true,
			DisabledServices: []string{"mma"}}, "ws.ods.opinsights.azure.com:8443", false, reason.NotListed, false, false},
		{"unlisted-authenticated: port refusal becomes service-disabled", Options{UnlistedAuthenticated: true,
			DisabledServices: []string{"crl"}}, "crl.microsoft.com:80", false, reason.ServiceDisabled, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := decide(t, mustPolicy(t, tt.opts), tt.target)
			if d.Allowed != tt.wantAllowed || d.Reason != tt.wantReason || d.Audited != tt.wantAudited || d.Unlisted != tt.wantUnlisted {
				t.Errorf("%s: allowed %v reason %q audited %v unlisted %v, want %v %q %v %v", tt.target,
					d.Allowed, d.Reason, d.Audited, d.Unlisted, tt.wantAllowed, tt.wantReason, tt.wantAudited, tt.wantUnlisted)
			}
		})
	}
}

func TestExplainDisabledService(t *testing.T) {
	tests := []struct {
		name      string
		opts      Options
		wantError string
		wantJSON  []string
	}{
		{"setting", Options{DisabledServices: []string{"crl"}},
			`destination belongs to a catalog service that is disabled: service "crl" (CRL / certificate trust) is disabled by GATEWAY_DISABLED_SERVICES`,
			[]string{`"reason":"service-disabled"`, `"detail":"service \"crl\" (CRL / certificate trust) is disabled by GATEWAY_DISABLED_SERVICES"`,
				`"service":"crl"`}},
		{"rules file", Options{RulesDisabledServices: []string{"crl"}},
			`destination belongs to a catalog service that is disabled: service "crl" (CRL / certificate trust) is disabled by disable_services in the rules file (GATEWAY_RULES_FILE)`,
			[]string{`"reason":"service-disabled"`, `"detail":"service \"crl\" (CRL / certificate trust) is disabled by disable_services in the rules file (GATEWAY_RULES_FILE)"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := mustPolicy(t, tt.opts).Explain("http://crl.microsoft.com/pki/crl/products/x.crl")
			if e.Allowed || e.Reason != reason.ServiceDisabled {
				t.Fatalf("allowed %v reason %q, want refused service-disabled", e.Allowed, e.Reason)
			}
			if got, want := e.Error, tt.wantError; got != want {
				t.Errorf("error = %q, want %q", got, want)
			}
			if e.Rule == nil || e.Rule.ServiceID != "crl" || e.Service != "crl" {
				t.Errorf("rule %+v service %q, want the crl row", e.Rule, e.Service)
			}
			b, err := json.Marshal(e)
			if err != nil {
				t.Fatal(err)
			}
			for _, want := range tt.wantJSON {
				if !strings.Contains(string(b), want) {
					t.Errorf("json %s lacks %s", b, want)
				}
			}
		})
	}
	// A refusal for another reason carries no detail.
	e := mustPolicy(t, Options{DisabledServices: []string{"crl"}}).Explain("unlisted.example.com:443")
	if e.Detail != "" || e.Error != ErrNotListed.Error() {
		t.Errorf("not-listed: detail %q error %q, want none and %q", e.Detail, e.Error, ErrNotListed)
	}
}

func TestPolicyDisabledServices(t *testing.T) {
	p := mustPolicy(t, Options{DisabledServices: []string{"crl"}, RulesDisabledServices: []string{"mma", "crl"}})
	for _, tt := range []struct {
		service string
		want    DisabledBy
	}{{"crl", DisabledByBoth}, {"mma", DisabledByRulesFile}, {"edr-cnc", NotDisabled}} {
		t.Run(tt.service, func(t *testing.T) {
			if got := p.DisabledBy(tt.service); got != tt.want {
				t.Errorf("DisabledBy(%s) = %v, want %v", tt.service, got, tt.want)
			}
			enabled := false
			for _, s := range p.Services() {
				enabled = enabled || s == tt.service
			}
			if got, want := enabled, tt.want == NotDisabled; got != want {
				t.Errorf("%s in Services() = %v, want %v", tt.service, got, want)
			}
		})
	}
	for _, r := range p.Rules() {
		if r.ServiceID == "crl" || r.ServiceID == "mma" {
			t.Errorf("rule %s of disabled service %s is in force", r.ID, r.ServiceID)
		}
	}
	cat, err := Embedded()
	if err != nil {
		t.Fatal(err)
	}
	_, err = NewPolicy(cat, Options{RulesDisabledServices: []string{"nope"}})
	if err == nil || !strings.Contains(err.Error(), "disable_services") || !strings.Contains(err.Error(), `"nope"`) {
		t.Errorf("unknown service in disable_services: err = %v", err)
	}
}

// BenchmarkDecideDisabled decides with a service switched off: the allow
// path must cost what it costs without disabled services, and only the
// refusal path consults the disabled rows.
func BenchmarkDecideDisabled(b *testing.B) {
	benchDecide(b, Options{Geographies: []Geography{EU}, DisabledServices: []string{"crl"}},
		"winatp-gw-weu.microsoft.com:443", "crl.microsoft.com:443", "unlisted.example.com:443", "crl.microsoft.com:80")
}

func TestDisabledServicesList(t *testing.T) {
	p := mustPolicy(t, Options{Geographies: []Geography{EU}, DisabledServices: []string{"mma", "crl"},
		RulesDisabledServices: []string{"crl", "av-maps"}})
	got := p.DisabledServices()
	want := []string{"av-maps", "crl", "mma"}
	if !slices.Equal(got, want) {
		t.Fatalf("DisabledServices() = %v, want %v", got, want)
	}
	for id, by := range map[string]DisabledBy{"mma": DisabledBySetting, "av-maps": DisabledByRulesFile, "crl": DisabledByBoth} {
		if got := p.DisabledBy(id); got != by {
			t.Errorf("DisabledBy(%s) = %v, want %v", id, got, by)
		}
	}
}
