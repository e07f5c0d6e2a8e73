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

// Well-known test URLs of the client analyzers.
const (
	crlMicrosoftURL = "http://crl.microsoft.com/pki/crl/products/MicRooCerAut2011_2011_03_22.crl"
	ctlURL          = "http://ctldl.windowsupdate.com/msdownload/update/v3/static/trustedr/en/disallowedcertstl.cab"
	wwwCRLPath      = "/pkiops/crl/MicSecSerCA2011_2011-10-18.crl"
	wwwCRLURL       = "http://www.microsoft.com" + wwwCRLPath
	// The Microsoft Root Certificate Authority 2011 certificate: what the
	// /pki/ rows (commercial /pki/*, government /pki/certs) serve.
	wwwCertPath = "/pki/certs/MicRooCerAut2011_2011_03_22.crt"
	wwwCertURL  = "http://www.microsoft.com" + wwwCertPath
	goFwlinkURL = "https://go.microsoft.com/fwlink/?linkid=2120136"
)

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
		if port == 80 {
			switch host {
			case "crl.microsoft.com":
				t := mk(crlMicrosoftURL, 200)
				t.CRL = true
				out = append(out, t)
			case "ctldl.windowsupdate.com":
				t := mk(ctlURL, 200)
				t.CRL = true
				out = append(out, t)
			case "www.microsoft.com":
				if r.MatchesPath(wwwCRLPath) {
					t := mk(wwwCRLURL, 200)
					t.CRL = true
					out = append(out, t)
				} else if r.MatchesPath(wwwCertPath) {
					t := mk(wwwCertURL, 200)
					t.CRL = true
					out = append(out, t)
				} else {
					out = append(out, mk("http://"+host+firstPath(r), 0))
				}
			case "go.microsoft.com":
				// The analyzers test go.microsoft.com over HTTPS only.
			default:
				out = append(out, mk("http://"+hostPort(host, 80)+firstPath(r), 0))
			}
			continue
		}
		if port != 443 {
			out = append(out, mk("https://"+hostPort(host, port)+firstPath(r), 0))
			continue
		}
		h := "https://" + hostPort(host, 443)
		switch {
		case strings.HasPrefix(host, "winatp-gw-") && strings.HasSuffix(host, ".microsoft.com"):
			out = append(out, mk(h+"/test", 200), mk(h+"/commands/test", 200))
		case isGeoLabel(host, "edr-", ".endpoint.security.microsoft.com"):
			out = append(out, mk(h+"/edr/commands/test", 200))
		case isGeoLabel(host, "mdav.", ".endpoint.security.microsoft.com"):
			out = append(out, mk(h+"/mdav/test", 404))
		case strings.HasSuffix(host, "-v20.events.data.microsoft.com") && strings.Count(host, ".") == 4:
			t := mk(h+"/ping", 200)
			t.Body = "OK"
			out = append(out, t)
		case strings.HasSuffix(host, ".vortex-win.data.microsoft.com") && strings.Count(host, ".") == 4:
			out = append(out, mk(h+"/health/keepalive", 200))
		case strings.HasSuffix(host, ".blob.core.windows.net") && strings.Count(host, ".") == 4,
			strings.HasSuffix(host, ".blob.core.usgovcloudapi.net") && strings.Count(host, ".") == 4:
			out = append(out, mk(h+"/", 400))
		case host == "crl.microsoft.com":
			out = append(out, mk(h+"/", 400))
		case (strings.HasSuffix(host, ".x.cp.wd.microsoft.com") || strings.HasSuffix(host, ".x.cp.wd.microsoft.us")) &&
			strings.Count(host, ".") == 5 && !strings.HasPrefix(host, "cdn."):
			out = append(out, mk(h+"/api/report", 200))
		case host == "go.microsoft.com":
			t := mk(goFwlinkURL, 200)
			t.Method = http.MethodHead
			out = append(out, t)
		default:
			out = append(out, mk(h+firstPath(r), 0))
		}
	}
	return out
}

// isGeoLabel reports whether host is prefix…"."geo suffix, e.g.
// edr-weu.eu.endpoint.security.microsoft.com.
func isGeoLabel(host, prefix, suffix string) bool {
	rest, ok := strings.CutSuffix(host, suffix)
	return ok && strings.HasPrefix(rest, prefix) && strings.Count(rest, ".") == 1
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
