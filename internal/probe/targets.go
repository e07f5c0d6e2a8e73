package probe

import (
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/defendergw/gateway/internal/allowlist"
)

// Target is one URL the connectivity probe requests, with the answer the
// real service gives (from Microsoft's client analyzers).
type Target struct {
	URL       string `json:"url"`            // e.g. https://winatp-gw-weu.microsoft.com/test
	Method    string `json:"method"`         // GET or HEAD
	Expect    int    `json:"expect"`         // expected status; 0 = any HTTP status proves reachability
	Body      string `json:"body,omitempty"` // expected body prefix ("OK" for /ping); "" = not checked
	Service   string `json:"service"`        // catalog service id(s), comma-separated when rows share a URL
	Geography string `json:"geography"`      // geography of the row
	Required  bool   `json:"required"`
	CRL       bool   `json:"crl"` // plain-HTTP CRL/CTL fetch on port 80
}

// Targets derives the probe targets from the policy's allow rows in
// force (WW and the configured geographies): exact hosts only, since a
// wildcard names no host to request (see NotProbed). Hosts an operator deny
// rule refuses are left out. Each host gets the analyzers' test URL(s); other
// hosts get GET https://host/ accepting any status. The result is sorted by
// URL and method, one target per URL and method.
func Targets(p *allowlist.Policy) []Target {
	byKey := map[string]*Target{}
	services := map[string][]string{}
	rules := p.Rules()
	for i := range rules {
		r := &rules[i]
		if r.Action != allowlist.Allow || r.Wildcard() || !p.InGeography(r.Geography) {
			continue
		}
		for _, t := range targetsForRule(r) {
			if deniedTarget(p, t) {
				continue
			}
			k := t.Method + " " + t.URL
			if have, ok := byKey[k]; ok {
				have.Required = have.Required || t.Required
				if have.Geography == allowlist.WW.String() {
					have.Geography = t.Geography
				}
			} else {
				tc := t
				byKey[k] = &tc
			}
			if !slices.Contains(services[k], r.ServiceID) {
				services[k] = append(services[k], r.ServiceID)
			}
		}
	}
	out := make([]Target, 0, len(byKey))
	for k, t := range byKey {
		s := services[k]
		slices.Sort(s)
		t.Service = strings.Join(s, ",")
		out = append(out, *t)
	}
	slices.SortFunc(out, func(a, b Target) int {
		if c := strings.Compare(a.URL, b.URL); c != 0 {
			return c
		}
		return strings.Compare(a.Method, b.Method)
	})
	return out
}

// targetsForRule maps one exact-host allow row to its test URLs.
func targetsForRule(r *allowlist.Rule) []Target {
	host := r.Host
	base := Target{Method: http.MethodGet, Service: r.ServiceID, Geography: r.Geography.String(), Required: r.Required}
	mk := func(u string, expect int) Target {
		t := base
		t.URL, t.Expect = u, expect
		return t
	}
	ports := r.Ports
	if len(ports) == 0 {
		ports = []uint16{443}
	}
	var out []Target
	for _, port := range ports {
		scheme := "https://"
		if port == 80 {
			scheme = "http://"
		}
		e := hostTestFor(host, port, r.MatchesPath)
		switch {
		case e != nil && e.skip:
		case e != nil && len(e.probes) > 0:
			for _, hp := range e.probes {
				u := hp.url
				if strings.HasPrefix(u, "/") {
					u = scheme + hostPort(host, port) + u
				}
				t := mk(u, hp.expect)
				t.Body, t.CRL = hp.body, hp.crl
				if hp.method != "" {
					t.Method = hp.method
				}
				out = append(out, t)
			}
		default:
			out = append(out, mk(scheme+hostPort(host, port)+firstPath(r), 0))
		}
	}
	return out
}

// hostPort renders host (brackets for IPv6) with the port left out when it is
// the scheme's default.
func hostPort(host string, port uint16) string {
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	if port == 80 || port == 443 {
		return host
	}
	return host + ":" + strconv.Itoa(int(port))
}

// firstPath is the row's first path prefix (so a path-limited row is probed
// where it allows), or "/".
func firstPath(r *allowlist.Rule) string {
	if len(r.Paths) == 0 || !strings.HasPrefix(r.Paths[0], "/") {
		return "/"
	}
	return r.Paths[0]
}

// deniedTarget reports whether a deny rule refuses t.
func deniedTarget(p *allowlist.Policy, t Target) bool {
	u, err := url.Parse(t.URL)
	if err != nil {
		return false
	}
	port := u.Port()
	if port == "" {
		port = "443"
		if u.Scheme == "http" {
			port = "80"
		}
	}
	at, err := allowlist.ParseAuthority(net.JoinHostPort(u.Hostname(), port))
	if err != nil {
		return false
	}
	if u.Scheme == "http" {
		if np, err := allowlist.NormalizePath(u.EscapedPath()); err == nil {
			at.Path, at.HasPath = np, true
		}
	}
	d := p.Decide(at)
	return d.Rule != nil && d.Rule.Action == allowlist.Deny
}

// NotProbed lists the wildcard allow patterns in force, sorted: they name no
// host to request.
func NotProbed(p *allowlist.Policy) []string {
	var out []string
	for _, r := range p.Rules() {
		if r.Action == allowlist.Allow && r.Wildcard() && p.InGeography(r.Geography) && !slices.Contains(out, r.Host) {
			out = append(out, r.Host)
		}
	}
	slices.Sort(out)
	return out
}
