package pactest_test

import (
	"bytes"
	"errors"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/dop251/goja"

	"github.com/defendergw/gateway/internal/allowlist"
	gwpac "github.com/defendergw/gateway/internal/pac"
)

// pacHelpers are the standard PAC helper functions the browsers predefine,
// reduced to what a test needs. The DNS and address helpers count their calls:
// the generated PAC must never need them (dnsResolve blocks the browser).
const pacHelpers = `
var dnsCalls = 0;
function dnsDomainIs(host, domain) {
	return host.length >= domain.length && host.substring(host.length - domain.length) === domain;
}
function shExpMatch(str, shexp) {
	var re = shexp.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*").replace(/\?/g, ".");
	return new RegExp("^" + re + "$").test(str);
}
function isPlainHostName(host) { return host.indexOf(".") < 0; }
function localHostOrDomainIs(host, hostdom) {
	return host === hostdom || hostdom.lastIndexOf(host + ".", 0) === 0;
}
function isInNet(host, pattern, mask) { dnsCalls++; return false; }
function myIpAddress() { dnsCalls++; return "192.0.2.99"; }
function dnsResolve(host) { dnsCalls++; return null; }
function isResolvable(host) { dnsCalls++; return false; }
`

// pacOperatorRules exercises exact, wildcard, IP-literal, geography-specific and
// deny rules, including denies under an allowed wildcard.
const pacOperatorRules = `rules:
  - action: allow
    host: ops.example.com
  - action: allow
    host: "*.corp.example"
  - action: allow
    host: 192.0.2.10
  - action: allow
    host: "[2001:db8::1]"
  - action: allow
    host: us-only.example.com
    geography: US
  - action: deny
    host: bad.corp.example
  - action: deny
    host: "*.blocked.corp.example"
  - action: allow
    host: ok.blocked.corp.example
  - action: deny
    host: paths.corp.example
    paths: ["/admin"]
  - action: deny
    host: port.corp.example
    ports: [8443]
  - action: deny
    host: winatp-gw-neu.microsoft.com
  - action: deny
    host: 192.0.2.11
  - action: allow
    host: 192.0.2.11
`

const pacTestProxy = "gw.corp.example:3128"

func pacTestPolicy(t testing.TB, rules string, opts allowlist.Options) *allowlist.Policy {
	t.Helper()
	cat, err := allowlist.Embedded()
	if err != nil {
		t.Fatal(err)
	}
	if rules != "" {
		rs, err := allowlist.ParseRules([]byte(rules), "rules.yaml")
		if err != nil {
			t.Fatal(err)
		}
		opts.Rules = rs.Rules
	}
	p, err := allowlist.NewPolicy(cat, opts)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// pacVM evaluates a PAC file and returns its FindProxyForURL.
type pacVM struct {
	vm   *goja.Runtime
	find goja.Callable
}

func newPACVM(t testing.TB, pac []byte) *pacVM {
	t.Helper()
	vm := goja.New()
	if _, err := vm.RunString(pacHelpers); err != nil {
		t.Fatal(err)
	}
	if _, err := vm.RunString(string(pac)); err != nil {
		t.Fatalf("PAC does not evaluate: %v\n%s", err, pac)
	}
	find, ok := goja.AssertFunction(vm.Get("FindProxyForURL"))
	if !ok {
		t.Fatal("PAC defines no FindProxyForURL function")
	}
	return &pacVM{vm: vm, find: find}
}

func (v *pacVM) call(t testing.TB, url, host string) string {
	t.Helper()
	r, err := v.find(goja.Undefined(), v.vm.ToValue(url), v.vm.ToValue(host))
	if err != nil {
		t.Fatalf("FindProxyForURL(%q, %q): %v", url, host, err)
	}
	return r.String()
}

func (v *pacVM) dnsCalls() int64 { return v.vm.Get("dnsCalls").ToInteger() }

func TestPACFindProxyForURL(t *testing.T) {
	p := pacTestPolicy(t, pacOperatorRules, allowlist.Options{Geographies: []allowlist.Geography{allowlist.EU}})
	const gw = "PROXY " + pacTestProxy
	cases := []struct {
		name  string
		host  string
		proxy bool // true: the gateway; false: the Default
	}{
		{"catalog host of configured geography", "winatp-gw-weu.microsoft.com", true},
		{"catalog host of another geography", "winatp-gw-cus.microsoft.com", false},
		{"catalog WW exact host", "crl.microsoft.com", true},
		{"wildcard subdomain", "eu.wdcp.microsoft.com", true},
		{"wildcard deeper subdomain", "a.b.wdcp.microsoft.com", true},
		{"wildcard apex", "wdcp.microsoft.com", false},
		{"suffix confusion prefix", "evilwdcp.microsoft.com", false},
		{"suffix confusion appended domain", "wdcp.microsoft.com.evil.com", false},
		{"upper case and trailing dot", "WINATP-GW-WEU.MICROSOFT.COM.", true},
		{"trailing dot wildcard", "eu.wdcp.microsoft.com.", true},
		{"two trailing dots", "winatp-gw-weu.microsoft.com..", false},
		{"streamlined host of configured geography", "edr-weu.eu.endpoint.security.microsoft.com", true},
		{"streamlined host of another geography under WW wildcard", "edr-cus.us.endpoint.security.microsoft.com", false},
		{"WW streamlined wildcard", "anything.endpoint.security.microsoft.com", true},
		{"unrelated host", "www.example.org", false},
		{"plain host name", "intranet", false},
		{"empty host", "", false},
		{"operator exact", "ops.example.com", true},
		{"operator exact subdomain", "x.ops.example.com", false},
		{"operator wildcard", "app.corp.example", true},
		{"operator wildcard deeper", "a.b.corp.example", true},
		{"operator wildcard apex", "corp.example", false},
		{"operator IPv4 literal", "192.0.2.10", true},
		{"operator IPv4 literal trailing dot", "192.0.2.10.", true},
		{"unlisted IPv4 literal", "192.0.2.12", false},
		{"operator IPv6 literal bracketed", "[2001:db8::1]", true},
		{"operator IPv6 literal bare", "2001:db8::1", true},
		{"operator IPv6 literal upper case", "[2001:DB8::1]", true},
		{"unlisted IPv6 literal", "[2001:db8::2]", false},
		{"operator rule of another geography", "us-only.example.com", false},
		{"deny under allowed wildcard", "bad.corp.example", false},
		{"deny wildcard under allowed wildcard", "x.blocked.corp.example", false},
		{"allow under deny wildcard", "ok.blocked.corp.example", false},
		{"deny wildcard apex stays allowed", "blocked.corp.example", true},
		{"path-limited deny keeps host", "paths.corp.example", true},
		{"port-limited deny keeps host", "port.corp.example", true},
		{"deny of catalog host", "winatp-gw-neu.microsoft.com", false},
		{"deny of allowed IP literal", "192.0.2.11", false},
	}
	for _, def := range []string{"DIRECT", "PROXY"} {
		t.Run(def, func(t *testing.T) {
			pac, err := gwpac.Render(p, gwpac.Options{Proxy: pacTestProxy, Default: def})
			if err != nil {
				t.Fatal(err)
			}
			vm := newPACVM(t, pac)
			other := "DIRECT"
			if def == "PROXY" {
				other = gw
			}
			for _, c := range cases {
				t.Run(c.name, func(t *testing.T) {
					url := "https://" + c.host + "/"
					want := other
					if c.proxy {
						want = gw
					}
					if got := vm.call(t, url, c.host); got != want {
						t.Errorf("FindProxyForURL(%q, %q) = %q, want %q", url, c.host, got, want)
					}
				})
			}
			if n := vm.dnsCalls(); n != 0 {
				t.Errorf("PAC called DNS/address helpers %d times, want 0", n)
			}
		})
	}
}

// TestPACMatchesPolicy checks the PAC against the policy itself: a host goes
// to the gateway exactly when the policy allows it on some port a rule names.
func TestPACMatchesPolicy(t *testing.T) {
	policies := []struct {
		name  string
		rules string
		opts  allowlist.Options
	}{
		{"EU with operator rules", pacOperatorRules, allowlist.Options{Geographies: []allowlist.Geography{allowlist.EU}}},
		{"US", "", allowlist.Options{Geographies: []allowlist.Geography{allowlist.US}}},
		{"UK blob listed", "", allowlist.Options{Geographies: []allowlist.Geography{allowlist.UK}, BlobScope: allowlist.BlobListed}},
		{"all geographies with operator rules", pacOperatorRules, allowlist.Options{}},
		{"UK blob wildcard", "", allowlist.Options{Geographies: []allowlist.Geography{allowlist.UK}, BlobScope: allowlist.BlobWildcard}},
		{"GCC with operator rules", pacOperatorRules, allowlist.Options{Cloud: allowlist.CloudGCC}},
		{"GCC High", "", allowlist.Options{Cloud: allowlist.CloudGCCHigh}},
		{"DoD", "", allowlist.Options{Cloud: allowlist.CloudDoD}},
	}
	for _, pc := range policies {
		t.Run(pc.name, func(t *testing.T) {
			p := pacTestPolicy(t, pc.rules, pc.opts)
			pac, err := gwpac.Render(p, gwpac.Options{Proxy: pacTestProxy})
			if err != nil {
				t.Fatal(err)
			}
			vm := newPACVM(t, pac)
			ports := []uint16{80, 443}
			var hosts []string
			for _, r := range p.Rules() {
				for _, q := range r.Ports {
					if !slices.Contains(ports, q) {
						ports = append(ports, q)
					}
				}
				if s, ok := strings.CutPrefix(r.Host, "*."); ok {
					hosts = append(hosts, s, "x."+s, "a.b."+s, "evil"+s, "ok."+s, "bad."+s)
				} else {
					hosts = append(hosts, r.Host, "x."+r.Host)
				}
			}
			for _, h := range hosts {
				want := false
				for _, port := range ports {
					tgt, err := allowlist.ParseAuthority(net.JoinHostPort(h, strconv.Itoa(int(port))))
					if err != nil {
						break // not a host the gateway accepts ("x.192.0.2.10")
					}
					if d := p.Decide(tgt); d.Allowed {
						want = true
						break
					}
				}
				got := vm.call(t, "https://"+h+"/", h) == "PROXY "+pacTestProxy
				if got != want {
					t.Errorf("host %q: PAC sends to gateway = %v, policy allows = %v", h, got, want)
				}
			}
		})
	}
}

func TestPACOutput(t *testing.T) {
	p := pacTestPolicy(t, pacOperatorRules, allowlist.Options{Geographies: []allowlist.Geography{allowlist.EU}})
	cat, _ := allowlist.Embedded()
	pac, err := gwpac.Render(p, gwpac.Options{Proxy: pacTestProxy})
	if err != nil {
		t.Fatal(err)
	}
	t.Run("header", func(t *testing.T) {
		first, _, _ := bytes.Cut(pac, []byte("\n"))
		if !bytes.HasPrefix(first, []byte("//")) {
			t.Errorf("first line = %q, want a comment", first)
		}
		want := "// Catalog version: " + cat.Version + "; geographies: WW, EU."
		if !bytes.Contains(pac, []byte(want+"\n")) {
			t.Errorf("PAC lacks %q:\n%s", want, pac)
		}
	})
	t.Run("ES5", func(t *testing.T) {
		for _, bad := range []string{"let ", "const ", "=>", "`"} {
			if bytes.Contains(pac, []byte(bad)) {
				t.Errorf("PAC contains %q", bad)
			}
		}
		if m := regexp.MustCompile(`,\s*[}\]]`).Find(pac); m != nil {
			t.Errorf("PAC has a trailing comma: %q", m)
		}
	})
	t.Run("deterministic", func(t *testing.T) {
		for range 20 {
			again, err := gwpac.Render(p, gwpac.Options{Proxy: pacTestProxy})
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(again, pac) {
				t.Fatal("PAC output differs between runs")
			}
		}
	})
	t.Run("sorted keys", func(t *testing.T) {
		for _, obj := range []string{"exact", "wild"} {
			_, rest, ok := bytes.Cut(pac, []byte("var "+obj+" = {"))
			if !ok {
				t.Fatalf("no %s object", obj)
			}
			body, _, _ := bytes.Cut(rest, []byte("};"))
			var keys []string
			for _, m := range regexp.MustCompile(`"([^"]*)":`).FindAllSubmatch(body, -1) {
				keys = append(keys, string(m[1]))
			}
			if len(keys) == 0 || !slices.IsSorted(keys) {
				t.Errorf("%s keys not sorted or empty: %q", obj, keys)
			}
		}
	})
	t.Run("other geographies not listed", func(t *testing.T) {
		for _, h := range []string{"winatp-gw-cus.microsoft.com", "us-only.example.com"} {
			if bytes.Contains(pac, []byte(`"`+h+`"`)) {
				t.Errorf("PAC lists %q", h)
			}
		}
	})
}

func TestPACProxyAddress(t *testing.T) {
	p := pacTestPolicy(t, "", allowlist.Options{Geographies: []allowlist.Geography{allowlist.EU}})
	cases := []struct{ proxy, want string }{
		{"gw.corp.example:3128", "PROXY gw.corp.example:3128"},
		{"GW.Corp.Example.:8080", "PROXY gw.corp.example:8080"},
		{"192.0.2.1:3128", "PROXY 192.0.2.1:3128"},
		{"[2001:DB8::5]:3128", "PROXY [2001:db8::5]:3128"},
	}
	for _, c := range cases {
		t.Run(c.proxy, func(t *testing.T) {
			pac, err := gwpac.Render(p, gwpac.Options{Proxy: c.proxy, Default: "proxy"})
			if err != nil {
				t.Fatal(err)
			}
			if got := newPACVM(t, pac).call(t, "https://www.example.org/", "www.example.org"); got != c.want {
				t.Errorf("got %q, want %q", got, c.want)
			}
		})
	}
}

func TestPACErrors(t *testing.T) {
	p := pacTestPolicy(t, "", allowlist.Options{Geographies: []allowlist.Geography{allowlist.EU}})
	cat, _ := allowlist.Embedded()
	bad, err := allowlist.NewPolicy(cat, allowlist.Options{Rules: []allowlist.Rule{{ID: "x", Host: `evil"host`}}})
	if err != nil {
		t.Fatal(err)
	}
	// option is the gwpac.OptionError.Option wanted; "" means another error.
	cases := []struct {
		name   string
		p      *allowlist.Policy
		opts   gwpac.Options
		option string
	}{
		{"nil policy", nil, gwpac.Options{Proxy: pacTestProxy}, ""},
		{"empty proxy", p, gwpac.Options{}, gwpac.OptionProxy},
		{"blank proxy", p, gwpac.Options{Proxy: "  "}, gwpac.OptionProxy},
		{"proxy without port", p, gwpac.Options{Proxy: "gw.corp.example"}, gwpac.OptionProxy},
		{"proxy port zero", p, gwpac.Options{Proxy: "gw.corp.example:0"}, gwpac.OptionProxy},
		{"proxy port too large", p, gwpac.Options{Proxy: "gw.corp.example:65536"}, gwpac.OptionProxy},
		{"proxy port not numeric", p, gwpac.Options{Proxy: "gw.corp.example:http"}, gwpac.OptionProxy},
		{"proxy host with quote", p, gwpac.Options{Proxy: `gw"x:3128`}, gwpac.OptionProxy},
		{"proxy host with space", p, gwpac.Options{Proxy: "gw x:3128"}, gwpac.OptionProxy},
		{"proxy zoned address", p, gwpac.Options{Proxy: "[fe80::1%eth0]:3128"}, gwpac.OptionProxy},
		{"bad default", p, gwpac.Options{Proxy: pacTestProxy, Default: "SOCKS"}, gwpac.OptionDefault},
		{"default with address", p, gwpac.Options{Proxy: pacTestProxy, Default: "PROXY other:3128"}, gwpac.OptionDefault},
		{"unnormalised rule host", bad, gwpac.Options{Proxy: pacTestProxy}, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := gwpac.Render(c.p, c.opts)
			if err == nil {
				t.Fatalf("gwpac.Render() = %d bytes, nil error; want an error", len(got))
			}
			if got != nil {
				t.Errorf("gwpac.Render() returned output with error %v", err)
			}
			// The caller (gateway pac) adds its own prefix.
			if strings.HasPrefix(err.Error(), "pac:") {
				t.Errorf("error %q carries a pac: prefix", err)
			}
			var oe *gwpac.OptionError
			switch {
			case c.option == "" && errors.As(err, &oe):
				t.Errorf("error %v is a gwpac.OptionError for %s, want another error", err, oe.Option)
			case c.option != "" && !errors.As(err, &oe):
				t.Errorf("error %T %v, want a *gwpac.OptionError", err, err)
			case c.option != "" && (oe.Option != c.option || oe.Reason == ""):
				t.Errorf("gwpac.OptionError option %q reason %q, want option %q with a reason", oe.Option, oe.Reason, c.option)
			case c.option == gwpac.OptionProxy && oe.Value != c.opts.Proxy, c.option == gwpac.OptionDefault && oe.Value != c.opts.Default:
				t.Errorf("gwpac.OptionError value %q, want the value given", oe.Value)
			}
		})
	}
}

func BenchmarkPAC(b *testing.B) {
	p := pacTestPolicy(b, pacOperatorRules, allowlist.Options{Geographies: []allowlist.Geography{allowlist.EU}})
	b.ReportAllocs()
	for b.Loop() {
		if _, err := gwpac.Render(p, gwpac.Options{Proxy: pacTestProxy}); err != nil {
			b.Fatal(err)
		}
	}
}
