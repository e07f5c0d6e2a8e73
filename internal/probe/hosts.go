package probe

import (
	"net/http"
	"path"
	"strings"
)

// hostTest is what Microsoft's client analyzers request on one kind of
// Defender host and port, and what the real service answers.
type hostTest struct {
	port uint16
	// host is the host name, with '*' standing for part or all of one
	// label (winatp-gw-*.microsoft.com).
	host string
	// path, if set, is a path the row must allow for the entry to apply
	// (www.microsoft.com serves two CRL locations on two rows).
	path string
	// skip: the analyzers do not request this host on this port.
	skip bool
	// probes are the requests; none means the default (the row's first
	// path, any answer), for hosts listed only to be kept from a wildcard
	// entry below them.
	probes []hostProbe
}

// hostProbe is one request: url is absolute, or a path on the host.
type hostProbe struct {
	url    string
	method string // GET if empty
	expect int    // 0: any HTTP answer proves reachability
	body   string // expected body prefix
	crl    bool   // a plain-HTTP CRL/CTL fetch
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

// hostTests is the probe's knowledge of the Defender hosts (from the
// MDE Client Analyzer and MpCmdRun -ValidateMapsConnection), read top to
// bottom: the first entry matching a row's host and port applies. A host no
// entry names gets GET of its row's first path, any answer.
var hostTests = []hostTest{
	{port: 80, host: "crl.microsoft.com", probes: []hostProbe{{url: crlMicrosoftURL, expect: 200, crl: true}}},
	{port: 80, host: "ctldl.windowsupdate.com", probes: []hostProbe{{url: ctlURL, expect: 200, crl: true}}},
	{port: 80, host: "www.microsoft.com", path: wwwCRLPath, probes: []hostProbe{{url: wwwCRLURL, expect: 200, crl: true}}},
	{port: 80, host: "www.microsoft.com", path: wwwCertPath, probes: []hostProbe{{url: wwwCertURL, expect: 200, crl: true}}},
	{port: 80, host: "go.microsoft.com", skip: true}, // the analyzers test it over HTTPS only

	{port: 443, host: "winatp-gw-*.microsoft.com", probes: []hostProbe{{url: "/test", expect: 200}, {url: "/commands/test", expect: 200}}},
	{port: 443, host: "edr-*.*.endpoint.security.microsoft.com", probes: []hostProbe{{url: "/edr/commands/test", expect: 200}}},
	{port: 443, host: "mdav.*.endpoint.security.microsoft.com", probes: []hostProbe{{url: "/mdav/test", expect: 404}}},
	{port: 443, host: "*-v20.events.data.microsoft.com", probes: []hostProbe{{url: "/ping", expect: 200, body: "OK"}}},
	{port: 443, host: "*.vortex-win.data.microsoft.com", probes: []hostProbe{{url: "/health/keepalive", expect: 200}}},
	{port: 443, host: "*.blob.core.windows.net", probes: []hostProbe{{url: "/", expect: 400}}},
	{port: 443, host: "*.blob.core.usgovcloudapi.net", probes: []hostProbe{{url: "/", expect: 400}}},
	{port: 443, host: "crl.microsoft.com", probes: []hostProbe{{url: "/", expect: 400}}},
	{port: 443, host: "cdn.x.cp.wd.microsoft.com"}, // a CDN name: the default, not the cloud protection test
	{port: 443, host: "cdn.x.cp.wd.microsoft.us"},
	{port: 443, host: "*.x.cp.wd.microsoft.com", probes: []hostProbe{{url: "/api/report", expect: 200}}},
	{port: 443, host: "*.x.cp.wd.microsoft.us", probes: []hostProbe{{url: "/api/report", expect: 200}}},
	{port: 443, host: "go.microsoft.com", probes: []hostProbe{{url: goFwlinkURL, method: http.MethodHead, expect: 200}}},
}

// hostTestFor returns the entry for host on port whose path the row allows
// (allows reports that), or nil.
func hostTestFor(host string, port uint16, allows func(path string) bool) *hostTest {
	for i := range hostTests {
		e := &hostTests[i]
		if e.port == port && hostMatches(e.host, host) && (e.path == "" || allows(e.path)) {
			return e
		}
	}
	return nil
}

// hostMatches reports whether host matches pattern, whose '*' stands for
// any run of characters within one label: labels are compared as path
// elements, so path.Match keeps each '*' inside its label.
func hostMatches(pattern, host string) bool {
	if strings.Count(pattern, ".") != strings.Count(host, ".") {
		return false
	}
	ok, _ := path.Match(strings.ReplaceAll(pattern, ".", "/"), strings.ReplaceAll(host, ".", "/"))
	return ok
}
