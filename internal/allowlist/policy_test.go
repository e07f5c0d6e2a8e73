package allowlist

import (
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/defendergw/gateway/internal/reason"
)

func mustPolicy(t testing.TB, opts Options) *Policy {
	t.Helper()
	cat, err := Embedded()
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewPolicy(cat, opts)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func decide(t *testing.T, p *Policy, target string) Decision {
	t.Helper()
	var tg Target
	var err error
	if strings.HasPrefix(target, "http://") {
		u, perr := url.Parse(target)
		if perr != nil {
			t.Fatal(perr)
		}
		tg, err = ParseURL(u)
	} else {
		tg, err = ParseAuthority(target)
	}
	if err != nil {
		return Decision{Err: err, Reason: ReasonOf(err)}
	}
	return p.Decide(tg)
}

func TestEmbeddedCatalog(t *testing.T) {
	cat, err := Embedded()
	if err != nil {
		t.Fatal(err)
	}
	if cat.Version == "" {
		t.Error("catalog has no version")
	}
	perGeo := map[Geography]int{}
	for _, r := range cat.Rules {
		perGeo[r.Geography]++
		if r.ServiceID != "admin-portal" && (!r.TLSExempt || !r.Anonymous) {
			t.Errorf("%s %s: endpoint rows must be TLS-exempt and anonymous", r.ID, r.Host)
		}
	}
	for _, g := range AllGeographies() {
		// Switzerland and India are data locations with no device rows of
		// their own in Microsoft's lists: their gateways get the WW rows.
		if none := g == CH || g == IN; (perGeo[g] == 0) != none {
			t.Errorf("geography %s: %d rows", g, perGeo[g])
		}
	}
	if cat.Published.IsZero() || len(cat.Sources) == 0 {
		t.Errorf("catalog published %v with %d sources, want both", cat.Published, len(cat.Sources))
	}
	for _, s := range cat.Sources {
		if !strings.HasPrefix(s.URL, "https://learn.microsoft.com/") && !strings.HasPrefix(s.URL, "https://download.microsoft.com/") {
			t.Errorf("source %s cites %s: the catalog cites Microsoft's published addresses only", s.Tag, s.URL)
		}
	}
	// Hosts the reference document names, one per table row kind.
	for _, h := range []string{"crl.microsoft.com", "ctldl.windowsupdate.com", "events.data.microsoft.com",
		"*.wdcp.microsoft.com", "*.blob.core.windows.net", "winatp-gw-cus.microsoft.com", "winatp-gw-weu.microsoft.com",
		"winatp-gw-uks.microsoft.com", "winatp-gw-aue.microsoft.com", "winatp-gw-aec0a.microsoft.com",
		"ussus1eastprod.blob.core.windows.net", "usseu1northprod.blob.core.windows.net",
		"edr-cus.us.endpoint.security.microsoft.com", "mdav.eu.endpoint.security.microsoft.com",
		"*.endpoint.security.microsoft.com", "reflector.defender.microsoft.com", "packages.microsoft.com",
		"ecs.office.com", "*.ecs.office.com", "config.edge.skype.com", "*.endpoint.security.microsoft.us",
		"winatp-gw-usgt.microsoft.com", "gccmod.ecs.office.com", "unitedstates2.ss.wd.microsoft.us"} {
		found := false
		for _, r := range cat.Rules {
			found = found || r.Host == h
		}
		if !found {
			t.Errorf("catalog lacks %s", h)
		}
	}
}

func TestDecide(t *testing.T) {
	eu := mustPolicy(t, Options{Geographies: []Geography{EU}})
	tests := []struct {
		name        string
		target      string
		wantReason  Reason
		wantService string
	}{
		{"eu gateway", "winatp-gw-weu.microsoft.com:443", reason.Allowed, "edr-cnc"},
		{"us gateway host refused", "winatp-gw-cus.microsoft.com:443", reason.Geography, "edr-cnc"},
		{"streamlined eu", "edr-weu.eu.endpoint.security.microsoft.com:443", reason.Allowed, "streamlined"},
		{"streamlined us refused over ww wildcard", "edr-cus.us.endpoint.security.microsoft.com:443", reason.Geography, "streamlined"},
		{"streamlined unknown sub under ww wildcard", "new.endpoint.security.microsoft.com:443", reason.Allowed, "streamlined"},
		{"wildcard subdomain", "eu.wdcp.microsoft.com:443", reason.Allowed, "av-maps"},
		{"wildcard deep subdomain", "a.b.wdcp.microsoft.com:443", reason.Allowed, "av-maps"},
		{"wildcard apex", "wdcp.microsoft.com:443", reason.NotListed, ""},
		{"suffix confusion", "evilwdcp.microsoft.com:443", reason.NotListed, ""},
		{"suffix appended", "eu.wdcp.microsoft.com.evil.com:443", reason.NotListed, ""},
		{"case and trailing dot", "WINATP-GW-WEU.MICROSOFT.COM.:443", reason.Allowed, "edr-cnc"},
		{"port", "winatp-gw-weu.microsoft.com:8443", reason.Port, "edr-cnc"},
		{"port 80 on 443-only host", "winatp-gw-weu.microsoft.com:80", reason.Port, "edr-cnc"},
		{"unlisted", "example.com:443", reason.NotListed, ""},
		{"ip literal", "127.0.0.1:443", reason.IPLiteral, ""},
		{"ipv6 literal", "[::1]:443", reason.IPLiteral, ""},
		{"ip notation", "2130706433:443", reason.IPLiteral, ""},
		{"userinfo", "x@winatp-gw-weu.microsoft.com:443", reason.BadRequest, ""},
		{"crl path", "http://crl.microsoft.com/pki/crl/products/MicRooCerAut.crl", reason.Allowed, "crl"},
		{"crl path case", "http://crl.microsoft.com/PKI/CRL/Products/x.crl", reason.Allowed, "crl"},
		{"crl host-wide", "http://crl.microsoft.com/other", reason.Allowed, "crl"},
		{"www other path", "http://www.microsoft.com/other", reason.NotListed, "crl"},
		{"www path prefix confusion", "http://www.microsoft.com/pkiopsevil/x.crl", reason.NotListed, "crl"},
		{"www pki intermediate", "http://www.microsoft.com/pki/mscorp/x.crt", reason.Allowed, "crl"},
		{"crl path traversal", "http://www.microsoft.com/pkiops/crl/../../evil", reason.NotListed, "crl"},
		{"www pkiops", "http://www.microsoft.com/pkiops/certs/MicCodSigPCA.crt", reason.Allowed, "crl"},
		{"ctl any path", "http://ctldl.windowsupdate.com/msdownload/update/v3/static/trustedr/en/disallowedcertstl.cab", reason.Allowed, "crl"},
		{"crl over 443 connect", "crl.microsoft.com:443", reason.Allowed, "admin-portal"},
		{"adl path row over connect", "www.microsoft.com:443", reason.Allowed, "av-update"},
		{"ecs apex", "ecs.office.com:443", reason.Allowed, "av-core"},
		{"go.microsoft.com port 80", "http://go.microsoft.com/fwlink/?linkid=2120136", reason.Allowed, "av-adl"},
		{"blob account not listed (default scope)", "someaccount.blob.core.windows.net:443", reason.NotListed, ""},
		{"us blob account refused for eu", "ussus1eastprod.blob.core.windows.net:443", reason.Geography, "sample-storage"},
		{"eu blob account", "usseu1northprod.blob.core.windows.net:443", reason.Allowed, "sample-storage"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := decide(t, eu, tt.target)
			if d.Reason != tt.wantReason {
				t.Fatalf("%s: reason = %q (err %v), want %q", tt.target, d.Reason, d.Err, tt.wantReason)
			}
			if d.Allowed != (tt.wantReason == reason.Allowed) {
				t.Errorf("%s: allowed = %v with reason %q", tt.target, d.Allowed, d.Reason)
			}
			if got := d.Service(); got != tt.wantService {
				t.Errorf("%s: service = %q, want %q", tt.target, got, tt.wantService)
			}
			if d.Allowed && (d.Rule == nil || d.Err != nil) {
				t.Errorf("%s: allowed decision needs a rule and no error: %+v", tt.target, d)
			}
			if !d.Allowed && d.Err == nil {
				t.Errorf("%s: refusal without error", tt.target)
			}
		})
	}
}

func TestDecideGeographies(t *testing.T) {
	tests := []struct {
		name   string
		geos   []Geography
		target string
		want   Reason
	}{
		{"unset allows every geography", nil, "winatp-gw-cus.microsoft.com:443", reason.Allowed},
		{"unset allows uae", nil, "winatp-gw-aec0a.microsoft.com:443", reason.Allowed},
		{"us", []Geography{US}, "winatp-gw-cus.microsoft.com:443", reason.Allowed},
		{"us refuses uk", []Geography{US}, "winatp-gw-uks.microsoft.com:443", reason.Geography},
		{"us and uk", []Geography{US, UK}, "winatp-gw-uks.microsoft.com:443", reason.Allowed},
		{"ww rows always", []Geography{AU}, "events.data.microsoft.com:443", reason.Allowed},
		{"au", []Geography{AU}, "edr-aue.au.endpoint.security.microsoft.com:443", reason.Allowed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustPolicy(t, Options{Geographies: tt.geos})
			if got := decide(t, p, tt.target).Reason; got != tt.want {
				t.Errorf("%s with %v: reason = %q, want %q", tt.target, tt.geos, got, tt.want)
			}
			if p.AllGeographies() != (len(tt.geos) == 0) {
				t.Errorf("AllGeographies() = %v with %v", p.AllGeographies(), tt.geos)
			}
		})
	}
}

func TestOperatorRules(t *testing.T) {
	rs, err := ParseRules([]byte(`
rules:
  - action: allow
    host: "*.contoso.com"
    comment: contoso apps
  - action: allow
    host: plain.contoso.com
    ports: [80]
    paths: ["/pub/"]
  - action: deny
    host: bad.contoso.com
  - action: deny
    host: "*.wdcpalt.microsoft.com"
  - action: allow
    host: 192.0.2.10
    ports: [8443]
disable_services: [mma]
`), "rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	p := mustPolicy(t, Options{Geographies: []Geography{EU}, Rules: rs.Rules, DisabledServices: rs.DisabledServices,
		BlobScope: BlobWildcard})
	tests := []struct {
		target string
		want   Reason
		rule   string
	}{
		{"app.contoso.com:443", reason.Allowed, "rules.yaml:3"},
		{"app.contoso.com:80", reason.Port, "rules.yaml:3"},
		{"contoso.com:443", reason.NotListed, ""},
		{"bad.contoso.com:443", reason.NotListed, "rules.yaml:10"},
		{"x.wdcpalt.microsoft.com:443", reason.NotListed, "rules.yaml:12"},
		{"x.wdcp.microsoft.com:443", reason.Allowed, ""},
		{"http://plain.contoso.com/pub/a", reason.Allowed, "rules.yaml:6"},
		{"http://plain.contoso.com/private", reason.NotListed, "rules.yaml:6"},
		{"192.0.2.10:8443", reason.Allowed, "rules.yaml:14"},
		{"192.0.2.11:8443", reason.IPLiteral, ""},
		{"someaccount.blob.core.windows.net:443", reason.Allowed, ""}, // wildcard scope: the portal and scanner rows
	}
	for _, tt := range tests {
		t.Run(tt.target, func(t *testing.T) {
			d := decide(t, p, tt.target)
			if d.Reason != tt.want {
				t.Fatalf("reason = %q (%v), want %q", d.Reason, d.Err, tt.want)
			}
			if tt.rule != "" && d.RuleID() != tt.rule {
				t.Errorf("rule = %q, want %q", d.RuleID(), tt.rule)
			}
		})
	}
	// With the MMA rows off, the wildcard scope still opens every account
	// through the portal's host-wide row (which beats the network scanner's
	// path-limited one, whose path a tunnel does not show).
	if d := decide(t, p, "someaccount.blob.core.windows.net:443"); d.PathUnchecked || d.Service() != "admin-portal" {
		t.Errorf("blob with mma disabled: got service %q pathUnchecked %v, want admin-portal false", d.Service(), d.PathUnchecked)
	}
}

func TestParseRulesErrors(t *testing.T) {
	tests := []struct{ name, yaml, want string }{
		{"unknown key", "rules:\n  - action: allow\n    host: a.example.com\n    prots: [443]\n", "prots"},
		{"unknown top key", "rule:\n  - action: allow\n", "rule"},
		{"bad action", "rules:\n  - action: permit\n    host: a.example.com\n", "line 2"},
		{"bad host", "rules:\n  - action: allow\n    host: a..example.com\n", "line 2"},
		{"too broad", "rules:\n  - action: allow\n    host: '*.com'\n", "too broad"},
		{"bad port", "rules:\n  - action: allow\n    host: a.example.com\n    ports: [70000]\n", "port"},
		{"bad geography", "rules:\n  - action: allow\n    host: a.example.com\n    geography: MARS\n", "geography"},
		{"missing host", "rules:\n  - action: allow\n", "host"},
		{"bad path", "rules:\n  - action: allow\n    host: a.example.com\n    paths: [nopath]\n", "path"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseRules([]byte(tt.yaml), "r.yaml")
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "r.yaml") {
				t.Errorf("err = %v, want mention of %q and the file name", err, tt.want)
			}
		})
	}
}

func TestNewPolicyErrors(t *testing.T) {
	cat, _ := Embedded()
	if _, err := NewPolicy(cat, Options{DisabledServices: []string{"nope"}}); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("unknown disabled service: err = %v", err)
	}
	if _, err := ParseGeography("MARS"); err == nil {
		t.Error("ParseGeography(MARS) succeeded")
	}
	if g, err := ParseGeography("eu"); err != nil || g != EU {
		t.Errorf("ParseGeography(eu) = %v, %v", g, err)
	}
}

func TestParseCatalogErrors(t *testing.T) {
	const meta = "# catalog-version: 1\n# catalog-published: 2026-12-02\n# source: S1 2026-07-03 https://learn.microsoft.com/x\n"
	head := "service_id,service_name,geography,host,paths,ports,required,tls_exempt,anonymous,source,comment\n"
	row := "a,A,WW,a.com,,443,required,yes,yes,S1,\n"
	tests := []struct{ name, csv, want string }{
		{"no version", "# catalog-published: 2026-12-02\n# source: S1 - u\n" + head + row, "catalog-version"},
		{"no published date", "# catalog-version: 1\n# source: S1 - u\n" + head + row, "catalog-published"},
		{"bad published date", "# catalog-version: 1\n# catalog-published: 12/02/2026\n# source: S1 - u\n" + head + row, "cat line 2"},
		{"no source", "# catalog-version: 1\n# catalog-published: 2026-12-02\n" + head + row, "# source:"},
		{"source without url", "# catalog-version: 1\n# catalog-published: 2026-12-02\n# source: S1 2026-07-03\n" + head + row, "cat line 3"},
		{"source with a bad date", "# catalog-version: 1\n# catalog-published: 2026-12-02\n# source: S1 July u\n" + head + row, "date"},
		{"source declared twice", meta + "# source: S1 - u\n" + head + row, "declared twice"},
		{"undeclared source tag", meta + head + "a,A,WW,a.com,,443,required,yes,yes,S9#row 3,\n", `cat line 5: source "S9"`},
		{"row without source", meta + head + "a,A,WW,a.com,,443,required,yes,yes,,\n", "source: empty"},
		{"bad geo", meta + head + "a,A,XX,a.com,,443,required,yes,yes,S1,\n", "cat line 5"},
		{"bad port", meta + head + "a,A,WW,a.com,,4430000,required,yes,yes,S1,\n", "port"},
		{"bad flag", meta + head + "a,A,WW,a.com,,443,required,maybe,yes,S1,\n", "tls_exempt"},
		{"bad service id", meta + head + "Bad Id,A,WW,a.com,,443,required,yes,yes,S1,\n", "service_id"},
		{"wrong columns", meta + "host,ports\n" + "a.com,443\n", "column header"},
		{"empty", meta + head, "no rules"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseCatalog([]byte(tt.csv), "cat")
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want mention of %q", err, tt.want)
			}
		})
	}
}

func TestReasonOf(t *testing.T) {
	for _, err := range []error{ErrNotListed, ErrGeography, ErrCloud, ErrPort, ErrIPLiteral, ErrBadTarget, ErrServiceDisabled} {
		if got := ReasonOf(errors.Join(errors.New("ctx"), err)); !got.Refusal() {
			t.Errorf("ReasonOf(%v) = %q, want a refusal", err, got)
		}
	}
}

func BenchmarkDecide(b *testing.B) {
	benchDecide(b, Options{Geographies: []Geography{EU}},
		"winatp-gw-weu.microsoft.com:443", "a.b.eu.wdcp.microsoft.com:443", "unlisted.example.com:443")
}

// benchDecide decides each target (parsing it first, as the proxy does)
// under a policy built with opts.
func benchDecide(b *testing.B, opts Options, targets ...string) {
	p := mustPolicy(b, opts)
	for _, target := range targets {
		b.Run(target, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				t, err := ParseAuthority(target)
				if err != nil {
					b.Fatal(err)
				}
				_ = p.Decide(t)
			}
		})
	}
}

func TestBlobScope(t *testing.T) {
	tests := []struct {
		name   string
		scope  BlobScope
		geos   []Geography
		target string
		want   Reason
	}{
		{"wildcard any account", BlobWildcard, []Geography{US}, "someaccount.blob.core.windows.net:443", reason.Allowed},
		{"wildcard listed account", BlobWildcard, []Geography{US}, "ussus1eastprod.blob.core.windows.net:443", reason.Allowed},
		{"listed refuses other accounts", BlobListed, []Geography{US}, "someaccount.blob.core.windows.net:443", reason.NotListed},
		{"listed allows us account", BlobListed, []Geography{US}, "ussus1eastprod.blob.core.windows.net:443", reason.Allowed},
		{"listed allows automated ir", BlobListed, []Geography{US}, "automatedirstrprdcus.blob.core.windows.net:443", reason.Allowed},
		{"listed refuses eu account for us", BlobListed, []Geography{US}, "usseu1northprod.blob.core.windows.net:443", reason.Geography},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustPolicy(t, Options{Geographies: tt.geos, BlobScope: tt.scope})
			d := decide(t, p, tt.target)
			if d.Reason != tt.want {
				t.Fatalf("%s with %s: reason %q, want %q", tt.target, tt.scope, d.Reason, tt.want)
			}
			if d.Allowed && !d.TLSExempt {
				t.Errorf("%s: allowed blob account must be TLS-exempt", tt.target)
			}
		})
	}
	if _, err := ParseBlobScope("some"); err == nil {
		t.Error("ParseBlobScope(some) succeeded")
	}
}

func TestVerifySNIRule(t *testing.T) {
	rs, err := ParseRules([]byte("rules:\n  - action: allow\n    host: legacy.contoso.com\n    verify_sni: false\n  - action: allow\n    host: modern.contoso.com\n"), "r.yaml")
	if err != nil {
		t.Fatal(err)
	}
	p := mustPolicy(t, Options{Rules: rs.Rules})
	if d := decide(t, p, "legacy.contoso.com:443"); !d.Allowed || !d.NoSNICheck {
		t.Errorf("legacy: allowed %v NoSNICheck %v, want true true", d.Allowed, d.NoSNICheck)
	}
	if d := decide(t, p, "modern.contoso.com:443"); !d.Allowed || d.NoSNICheck {
		t.Errorf("modern: allowed %v NoSNICheck %v, want true false", d.Allowed, d.NoSNICheck)
	}
}

// TestClouds checks that each cloud's list stands alone: the most specific
// pattern is chosen among the rows of the cloud in force, and rows of other
// clouds only explain a refusal.
func TestClouds(t *testing.T) {
	commercial := mustPolicy(t, Options{Geographies: []Geography{EU}})
	gcc := mustPolicy(t, Options{Cloud: CloudGCC})
	gccHigh := mustPolicy(t, Options{Cloud: CloudGCCHigh})
	dod := mustPolicy(t, Options{Cloud: CloudDoD})
	tests := []struct {
		name    string
		p       *Policy
		target  string
		want    Reason
		service string
	}{
		{"commercial: a gov exact row does not shadow the commercial wildcard", commercial,
			"us4-v20.events.data.microsoft.com:443", reason.Allowed, "av-core"},
		{"commercial: a gov-only host", commercial, "winatp-gw-usgt.microsoft.com:443", reason.Cloud, "edr-cnc"},
		{"commercial: geography still decides within the cloud", commercial, "winatp-gw-cus.microsoft.com:443", reason.Geography, "edr-cnc"},
		{"gcc: its own gateway", gcc, "winatp-gw-usmt.microsoft.com:443", reason.Allowed, "edr-cnc"},
		{"gcc: US Gov rows", gcc, "unitedstates4.ss.wd.microsoft.us:443", reason.Allowed, "smartscreen"},
		{"gcc: streamlined gov wildcard", gcc, "x.endpoint.security.microsoft.us:443", reason.Allowed, "streamlined"},
		{"gcc: gcc mod config", gcc, "gccmod.ecs.office.com:443", reason.Allowed, "config-management"},
		{"gcc-high: shared gateway", gccHigh, "winatp-gw-usgt.microsoft.com:443", reason.Allowed, "edr-cnc"},
		{"gcc-high: GCC-only host", gccHigh, "winatp-gw-usmt.microsoft.com:443", reason.Cloud, "edr-cnc"},
		{"gcc-high: DoD-only host", gccHigh, "winatp-gw-usgv.microsoft.com:443", reason.Cloud, "edr-cnc"},
		{"gcc-high: commercial-only host", gccHigh, "winatp-gw-weu.microsoft.com:443", reason.Cloud, "edr-cnc"},
		{"gcc-high: commercial wildcard", gccHigh, "eu.wdcp.microsoft.com:443", reason.Cloud, "av-maps"},
		{"dod: DoD gateway", dod, "winatp-gw-usgv.microsoft.com:443", reason.Allowed, "edr-cnc"},
		{"dod: crl path", dod, "http://crl.microsoft.com/pki/crl/products/a.crl", reason.Allowed, "crl"},
		{"dod: crl other path", dod, "http://crl.microsoft.com/other", reason.NotListed, "crl"},
		{"dod: unlisted", dod, "example.com:443", reason.NotListed, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := decide(t, tt.p, tt.target)
			if d.Reason != tt.want || d.Service() != tt.service {
				t.Errorf("%s: reason %q service %q, want %q %q", tt.target, d.Reason, d.Service(), tt.want, tt.service)
			}
		})
	}
	if _, err := NewPolicy(&Catalog{}, Options{Cloud: CloudGCC, Geographies: []Geography{EU}}); err == nil {
		t.Error("a government cloud with data locations was accepted")
	}
	if _, err := NewPolicy(&Catalog{}, Options{Geographies: []Geography{GCC}}); err == nil {
		t.Error("a government geography as a data location was accepted")
	}
	// An operator rule without a geography applies in a government cloud.
	rs, err := ParseRules([]byte("rules:\n  - action: allow\n    host: app.contoso.us\n"), "r.yaml")
	if err != nil {
		t.Fatal(err)
	}
	p := mustPolicy(t, Options{Cloud: CloudDoD, Rules: rs.Rules})
	if d := decide(t, p, "app.contoso.us:443"); !d.Allowed {
		t.Errorf("operator rule in a DoD gateway: %+v", d)
	}
}

func TestParseAction(t *testing.T) {
	for _, tt := range []struct {
		in      string
		want    Action
		wantErr bool
	}{
		{"allow", Allow, false},
		{" Deny ", Deny, false},
		{"DENY", Deny, false},
		{"", Allow, true},
		{"permit", Allow, true},
	} {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseAction(tt.in)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("ParseAction(%q) = %v, %v; want %v, error %v", tt.in, got, err, tt.want, tt.wantErr)
			}
		})
	}
}
