package endpoint

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/term"

	"github.com/defendergw/gateway/internal/allowlist"
	gwreason "github.com/defendergw/gateway/internal/reason"
	"github.com/defendergw/gateway/internal/resolver"
)

// ProbeTarget is one URL the connectivity probe requests, with the answer the
// real service gives (from Microsoft's client analyzers).
type ProbeTarget struct {
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

// ProbeTargets derives the probe targets from the policy's allow rows in
// force (WW and the configured geographies): exact hosts only, since a
// wildcard names no host to request (see NotProbed). Hosts an operator deny
// rule refuses are left out. Each host gets the analyzers' test URL(s); other
// hosts get GET https://host/ accepting any status. The result is sorted by
// URL and method, one target per URL and method.
func ProbeTargets(p *allowlist.Policy) []ProbeTarget {
	byKey := map[string]*ProbeTarget{}
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
	out := make([]ProbeTarget, 0, len(byKey))
	for k, t := range byKey {
		s := services[k]
		slices.Sort(s)
		t.Service = strings.Join(s, ",")
		out = append(out, *t)
	}
	slices.SortFunc(out, func(a, b ProbeTarget) int {
		if c := strings.Compare(a.URL, b.URL); c != 0 {
			return c
		}
		return strings.Compare(a.Method, b.Method)
	})
	return out
}

// targetsForRule maps one exact-host allow row to its test URLs.
func targetsForRule(r *allowlist.Rule) []ProbeTarget {
	host := r.Host
	base := ProbeTarget{Method: http.MethodGet, Service: r.ServiceID, Geography: r.Geography.String(), Required: r.Required}
	mk := func(u string, expect int) ProbeTarget {
		t := base
		t.URL, t.Expect = u, expect
		return t
	}
	ports := r.Ports
	if len(ports) == 0 {
		ports = []uint16{443}
	}
	var out []ProbeTarget
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
func deniedTarget(p *allowlist.Policy, t ProbeTarget) bool {
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

// ProbeOptions configure Probe.
type ProbeOptions struct {
	Via         *url.URL       // the gateway (http://host:port); nil = direct
	ProxyUser   *url.Userinfo  // optional proxy credentials
	RootCAs     *x509.CertPool // trusted roots for TLS; nil = system roots
	Timeout     time.Duration  // per URL, default 15s
	Concurrency int            // default 8
	// DialContext, if non-nil, replaces the dialer (tests, and the lab
	// replica which maps catalog names to loopback); if nil, net.Dialer is used.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// Progress, if non-nil, is called after each URL completes with (done,
	// total). Calls are serialised and done increases by one each time.
	Progress func(done, total int)
}

// ParseProxyUser parses "user:password" for ProbeOptions.ProxyUser. Both
// parts are required: a user name alone would be sent with an empty
// password, and the 407 that follows would look like a gateway problem.
func ParseProxyUser(s string) (*url.Userinfo, error) {
	name, pass, ok := strings.Cut(s, ":")
	switch {
	case !ok:
		return nil, fmt.Errorf("want user:password, got %q without a password", s)
	case name == "":
		return nil, errors.New("want user:password, the user name is empty")
	case pass == "":
		return nil, fmt.Errorf("want user:password, the password of %q is empty", name)
	}
	return url.UserPassword(name, pass), nil
}

// TerminalProgress returns a ProbeOptions.Progress that redraws
// "probing n/total" on one line of w, or nil when w is not a terminal: the
// carriage returns would litter a file or a pipe that is read later.
func TerminalProgress(w io.Writer) func(done, total int) {
	f, ok := w.(*os.File)
	if !ok || !isTerminal(f) {
		return nil
	}
	return func(done, total int) { fmt.Fprintf(w, "\rprobing %d/%d", done, total) }
}

// isTerminal reports whether f is a terminal (not a file, a pipe or the
// null device).
func isTerminal(f *os.File) bool { return term.IsTerminal(int(f.Fd())) }

// ProbeResult is the outcome of one target.
type ProbeResult struct {
	Target    ProbeTarget
	OK        bool
	Status    int    // HTTP status received (0 if none)
	Error     string // transport error text, if any
	Diagnosis string // one of the Diag* codes, "" when OK
	Detail    string // human explanation with what to change
	Duration  time.Duration
}

// Diagnosis codes.
const (
	DiagProxyAuth = "proxy-auth-required"
	// DiagAuthRateLimited is the gateway's 429: too many failed
	// authentications from this address.
	DiagAuthRateLimited = "auth-rate-limited"
	// DiagServiceDisabled is a refusal of a service an operator switched
	// off (GATEWAY_DISABLED_SERVICES).
	DiagServiceDisabled  = "service-disabled"
	DiagTLSInspection    = "tls-inspection"
	DiagCRLBlocked       = "crl-blocked"
	DiagGatewayRefused   = "gateway-refused"
	DiagDNSFailure       = "dns-failure"
	DiagTimeout          = "timeout"
	DiagConnRefused      = "connection-refused"
	DiagUnexpectedStatus = "unexpected-status"
	// DiagConnFailed covers transport failures none of the above explains
	// (connection reset or closed, e.g. a tunnel closed after the 200).
	DiagConnFailed = "connection-failed"
)

// diagOrder is the order advice is given in.
var diagOrder = []string{DiagProxyAuth, DiagAuthRateLimited, DiagTLSInspection, DiagServiceDisabled, DiagCRLBlocked,
	DiagGatewayRefused, DiagDNSFailure, DiagTimeout, DiagConnRefused, DiagConnFailed, DiagUnexpectedStatus}

// gatewayReasonHeader is the gateway's refusal reason header (proxy.ReasonHeader).
const gatewayReasonHeader = "X-Gateway-Reason"

// connectInfo records a proxy's answer to CONNECT.
type connectInfo struct {
	mu     sync.Mutex
	status int
	reason string
}

type connectInfoKey struct{}

// connectError is returned for a CONNECT the proxy did not accept.
type connectError struct {
	status int
	reason string
}

func (e *connectError) Error() string {
	s := fmt.Sprintf("proxy refused CONNECT: %d %s", e.status, http.StatusText(e.status))
	if e.reason != "" {
		s += " (" + gatewayReasonHeader + ": " + e.reason + ")"
	}
	return s
}

// Probe requests every target, Concurrency at a time, and returns one result
// per target in the targets' order. The environment's proxy settings are
// never used: Via says whether the probe goes through the gateway.
func Probe(ctx context.Context, targets []ProbeTarget, opts ProbeOptions) []ProbeResult {
	if opts.Timeout <= 0 {
		opts.Timeout = 15 * time.Second
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = 8
	}
	dial := opts.DialContext
	if dial == nil {
		dial = (&net.Dialer{Timeout: opts.Timeout}).DialContext
	}
	tr := &http.Transport{
		DialContext:           dial,
		TLSClientConfig:       &tls.Config{RootCAs: opts.RootCAs, MinVersion: tls.VersionTLS12},
		DisableKeepAlives:     true,
		DisableCompression:    true,
		TLSHandshakeTimeout:   opts.Timeout,
		ResponseHeaderTimeout: opts.Timeout,
		OnProxyConnectResponse: func(ctx context.Context, _ *url.URL, _ *http.Request, res *http.Response) error {
			reason := res.Header.Get(gatewayReasonHeader)
			if ci, ok := ctx.Value(connectInfoKey{}).(*connectInfo); ok {
				ci.mu.Lock()
				ci.status, ci.reason = res.StatusCode, reason
				ci.mu.Unlock()
			}
			if res.StatusCode != http.StatusOK {
				return &connectError{status: res.StatusCode, reason: reason}
			}
			return nil
		},
	}
	if opts.Via != nil {
		pu := *opts.Via
		if opts.ProxyUser != nil {
			pu.User = opts.ProxyUser
		}
		tr.Proxy = http.ProxyURL(&pu)
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{
		Transport:     tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}

	results := make([]ProbeResult, len(targets))
	sem := make(chan struct{}, opts.Concurrency)
	var wg sync.WaitGroup
	var progressMu sync.Mutex
	done := 0
	for i := range targets {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			results[i] = probeOne(ctx, client, targets[i], opts)
			<-sem
			if opts.Progress != nil {
				progressMu.Lock()
				done++
				opts.Progress(done, len(targets))
				progressMu.Unlock()
			}
		}()
	}
	wg.Wait()
	blamePort80(results)
	return results
}

// blamePort80 names the CRL cause for CRL/CTL fetches that could not
// connect while an HTTPS target got through: then the path works and only
// plain HTTP to the CRL hosts is blocked (typically port 80 closed on a
// firewall). When nothing got through, the connection failure itself is
// the cause, and each result keeps it.
func blamePort80(results []ProbeResult) {
	reached := false
	for _, r := range results {
		if r.OK && !r.Target.CRL {
			reached = true
			break
		}
	}
	if !reached {
		return
	}
	for i := range results {
		r := &results[i]
		if !r.Target.CRL || r.OK {
			continue
		}
		switch r.Diagnosis {
		case DiagTimeout, DiagConnRefused, DiagConnFailed:
			r.Diagnosis = DiagCRLBlocked
			r.Detail += "; HTTPS targets got through, so plain HTTP to this host is blocked: " + crlHint
		}
	}
}

func probeOne(ctx context.Context, client *http.Client, t ProbeTarget, opts ProbeOptions) (res ProbeResult) {
	res.Target = t
	start := time.Now()
	defer func() { res.Duration = time.Since(start) }()

	ci := &connectInfo{}
	ctx, cancel := context.WithTimeout(context.WithValue(ctx, connectInfoKey{}, ci), opts.Timeout)
	defer cancel()
	method := t.Method
	if method == "" {
		method = http.MethodGet
	}
	req, err := http.NewRequestWithContext(ctx, method, t.URL, nil)
	if err != nil {
		res.Error = err.Error()
		res.Diagnosis, res.Detail = DiagUnexpectedStatus, "invalid probe URL: "+err.Error()
		return res
	}
	req.Header.Set("User-Agent", "defendergw-probe/1")
	resp, err := client.Do(req)
	if err != nil {
		res.Error = err.Error()
		ci.mu.Lock()
		cs, cr := ci.status, ci.reason
		ci.mu.Unlock()
		var ce *connectError
		if errors.As(err, &ce) {
			cs, cr = ce.status, ce.reason
		}
		if cs != 0 && cs != http.StatusOK {
			res.Status = cs
			res.Diagnosis, res.Detail = diagnoseStatus(t, cs, cr, opts.Via != nil)
			return res
		}
		res.Diagnosis, res.Detail = diagnoseError(t, err, opts.Via != nil)
		return res
	}
	defer resp.Body.Close()
	res.Status = resp.StatusCode
	var body []byte
	if t.Body != "" {
		body, _ = io.ReadAll(io.LimitReader(resp.Body, 4096))
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))

	reason := resp.Header.Get(gatewayReasonHeader)
	switch {
	case resp.StatusCode == http.StatusProxyAuthRequired,
		reason != "" && resp.StatusCode >= 400:
		res.Diagnosis, res.Detail = diagnoseStatus(t, resp.StatusCode, reason, opts.Via != nil)
		return res
	case t.Expect == 0:
		res.OK = true
		return res
	case resp.StatusCode != t.Expect:
		res.Diagnosis = DiagUnexpectedStatus
		res.Detail = fmt.Sprintf("expected %d, got %d %s: something in the path answers instead of the service (a captive portal, block page or redirect?)",
			t.Expect, resp.StatusCode, http.StatusText(resp.StatusCode))
		if t.CRL {
			res.Diagnosis = DiagCRLBlocked
			res.Detail = fmt.Sprintf("expected %d, got %d %s fetching the CRL/CTL over plain HTTP; ", t.Expect, resp.StatusCode,
				http.StatusText(resp.StatusCode)) + crlHint
		}
		return res
	case t.Body != "" && !strings.HasPrefix(strings.TrimSpace(string(body)), t.Body):
		res.Diagnosis = DiagUnexpectedStatus
		res.Detail = fmt.Sprintf("status %d but the body is not %q: something in the path answers instead of the service",
			resp.StatusCode, t.Body)
		return res
	}
	res.OK = true
	return res
}

const crlHint = "allow plain HTTP (port 80) to the CRL/CTL hosts without authentication or inspection: without them MpCmdRun -ValidateMapsConnection fails with hr=0x80072F8F (httpcore=451)"

// diagnoseStatus explains a refusal by a proxy (or by the gateway). A
// CRL/CTL target is crl-blocked when the refusal is about the destination
// (the fetch itself was refused or answered by something else); a refusal
// of this client or of the whole service, and a failure to reach the
// upstream, keep their own cause (see blamePort80 for the latter).
func diagnoseStatus(t ProbeTarget, status int, reason string, via bool) (string, string) {
	rc, _ := gwreason.Parse(reason) // an unknown code is None: advice falls back to the access log
	who := "the proxy"
	if via {
		who = "the gateway"
	}
	crl := func(code, d string) (string, string) {
		if t.CRL {
			return DiagCRLBlocked, d + "; " + crlHint
		}
		return code, d
	}
	switch {
	case status == http.StatusProxyAuthRequired || rc == gwreason.AuthRequired:
		return DiagProxyAuth, fmt.Sprintf("%s answered %d (%s) to an anonymous request; the Defender sensor runs as LocalSystem and cannot authenticate: allow anonymous access to this URL",
			who, status, orText(reason, "Proxy Authentication Required"))
	case rc == gwreason.AuthRateLimited:
		return DiagAuthRateLimited, fmt.Sprintf("%s answered %d %s: too many failed authentications from this address (GATEWAY_AUTH_FAILURES_PER_MINUTE); check the --proxy-user password, wait a minute and retry",
			who, status, reason)
	case rc == gwreason.ServiceDisabled:
		d := fmt.Sprintf("%s refused %s: %d %s: an operator switched this service off (GATEWAY_DISABLED_SERVICES, or disable_services in GATEWAY_RULES_FILE); remove it there if the devices need it",
			who, hostOf(t.URL), status, reason)
		if t.CRL {
			d += "; without the CRL/CTL hosts MpCmdRun -ValidateMapsConnection fails with hr=0x80072F8F (httpcore=451)"
		}
		return DiagServiceDisabled, d
	case rc == gwreason.ClientNotAllowed:
		return DiagGatewayRefused, fmt.Sprintf("the gateway refused this machine: %d %s; %s", status, reason, reasonAdvice(rc))
	case rc == gwreason.DNSFailure:
		return DiagDNSFailure, fmt.Sprintf("%s could not resolve %s (%d %s); check its DNS servers (GATEWAY_DNS_SERVERS)", who, hostOf(t.URL), status, reason)
	case rc == gwreason.UpstreamTimeout || (status == http.StatusGatewayTimeout && reason == ""):
		return DiagTimeout, fmt.Sprintf("%s timed out reaching %s (%d %s); check the gateway's outbound firewall", who, hostOf(t.URL), status, orText(reason, "Gateway Timeout"))
	case rc == gwreason.UpstreamUnreachable || (status == http.StatusBadGateway && reason == ""):
		return DiagConnRefused, fmt.Sprintf("%s could not connect to %s (%d %s); check the gateway's outbound firewall", who, hostOf(t.URL), status, orText(reason, "Bad Gateway"))
	case reason != "":
		// A refused CRL/CTL fetch is exactly what breaks
		// ValidateMapsConnection, whatever the gateway's reason.
		return crl(DiagGatewayRefused, fmt.Sprintf("the gateway refused %s: %d %s; %s", hostOf(t.URL), status, reason, reasonAdvice(rc)))
	}
	d := fmt.Sprintf("%s answered %d %s", who, status, http.StatusText(status))
	if t.CRL {
		return DiagCRLBlocked, d + "; " + crlHint
	}
	return DiagUnexpectedStatus, d + "; allow this URL on the proxy"
}

// reasonAdvice says what to change for a gateway refusal reason: the
// reason table's advice, shared with the gateway.
func reasonAdvice(rc gwreason.Code) string {
	if a := rc.Advice(); a != "" {
		return a
	}
	return "see the gateway's access log for this request"
}

// diagnoseError explains a transport error by its own cause, CRL/CTL
// targets included: a connection that failed is not yet a blocked CRL
// (blamePort80 decides that once every result is in).
func diagnoseError(t ProbeTarget, err error, via bool) (string, string) {
	return classifyError(t, err, via)
}

func classifyError(t ProbeTarget, err error, via bool) (string, string) {
	host := hostOf(t.URL)
	var (
		cve  *tls.CertificateVerificationError
		uae  x509.UnknownAuthorityError
		he   x509.HostnameError
		cie  x509.CertificateInvalidError
		dnse *net.DNSError
		ne   net.Error
	)
	switch {
	case errors.As(err, &cve) || errors.As(err, &uae) || errors.As(err, &he) || errors.As(err, &cie):
		issuer := ""
		if cve != nil && len(cve.UnverifiedCertificates) > 0 {
			c := cve.UnverifiedCertificates[0]
			issuer = fmt.Sprintf(" (certificate for %q issued by %q)", c.Subject.CommonName, c.Issuer.String())
		} else if uae.Cert != nil {
			issuer = fmt.Sprintf(" (issued by %q)", uae.Cert.Issuer.String())
		} else if he.Certificate != nil {
			issuer = fmt.Sprintf(" (certificate for %v issued by %q)", he.Certificate.DNSNames, he.Certificate.Issuer.String())
		}
		return DiagTLSInspection, fmt.Sprintf("the certificate presented for %s does not verify%s: TLS inspection in the path breaks Defender's certificate pinning; exclude the Defender URLs from HTTPS scanning",
			host, issuer)
	case errors.As(err, &dnse):
		return DiagDNSFailure, fmt.Sprintf("%s could not be resolved (%v); check the DNS servers", dnse.Name, dnse.Err)
	case errors.Is(err, resolver.ErrDNSFailure):
		// Dialled through the gateway's own resolver (the upstream check).
		return DiagDNSFailure, fmt.Sprintf("%s could not be resolved (%v); check the DNS servers (GATEWAY_DNS_SERVERS)", host, rootErr(err))
	case errors.Is(err, resolver.ErrUpstreamUnreachable):
		return DiagConnRefused, fmt.Sprintf("could not connect to %s (%v); check the outbound firewall", host, rootErr(err))
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) ||
		(errors.As(err, &ne) && ne.Timeout()):
		where := host
		if via {
			where = "the gateway or " + host
		}
		return DiagTimeout, fmt.Sprintf("no answer from %s in time; check firewalls between this machine and %s", where, where)
	case errors.Is(err, context.Canceled):
		return DiagTimeout, "probe cancelled before " + host + " answered"
	case errors.Is(err, syscall.ECONNREFUSED):
		if via {
			return DiagConnRefused, "the gateway refused the connection: check the --via address and that the gateway is running"
		}
		return DiagConnRefused, fmt.Sprintf("%s refused the connection: a firewall rejects it or nothing listens there", host)
	}
	return DiagConnFailed, fmt.Sprintf("the connection to %s failed (%v); a middlebox may have closed it", host, rootErr(err))
}

func rootErr(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

func orText(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func hostOf(raw string) string {
	if u, err := url.Parse(raw); err == nil {
		return u.Host
	}
	return raw
}

// Failed reports whether any required target failed.
func Failed(results []ProbeResult) bool {
	for _, r := range results {
		if r.Target.Required && !r.OK {
			return true
		}
	}
	return false
}

// diagAdvice is the summary paragraph per diagnosis.
var diagAdvice = map[string]string{
	DiagProxyAuth: "The proxy demanded authentication (407). Anonymous traffic must be permitted for the listed URLs: " +
		"the Defender sensor runs as LocalSystem and cannot authenticate to a proxy. Mark these destinations anonymous " +
		"(the catalog rows are; check operator rules and any upstream proxy).",
	DiagTLSInspection: "The certificate presented was not issued for the host, or by an issuer not among the trusted roots: " +
		"TLS inspection in the path breaks Defender's certificate pinning. Exclude the Defender URLs from HTTPS scanning " +
		"(SSL inspection) on every proxy and firewall between the devices and the Internet.",
	DiagCRLBlocked: "A CRL/CTL URL on port 80 is refused or failing. Windows cannot check the revocation of Microsoft's " +
		"certificates, and MpCmdRun -ValidateMapsConnection fails with hr=0x80072F8F (httpcore=451). Allow plain HTTP on " +
		"port 80 to crl.microsoft.com, ctldl.windowsupdate.com and www.microsoft.com/pkiops without authentication or inspection.",
	DiagAuthRateLimited: "The gateway refused further attempts (429 auth-rate-limited) after too many failed " +
		"authentications from this address (GATEWAY_AUTH_FAILURES_PER_MINUTE). Check the --proxy-user password, wait a " +
		"minute and probe again.",
	DiagServiceDisabled: "The gateway refused a service an operator switched off (403 service-disabled). If the devices " +
		"need it, remove it from GATEWAY_DISABLED_SERVICES (or from disable_services in GATEWAY_RULES_FILE).",
	DiagGatewayRefused: "The gateway refused the request (403 with X-Gateway-Reason). For reason geography, check " +
		"GATEWAY_GEOGRAPHIES against the tenant's data location; for not-listed, check GATEWAY_DISABLED_SERVICES, deny rules " +
		"and GATEWAY_BLOB_SCOPE; for client-not-allowed, GATEWAY_CLIENT_CIDRS.",
	DiagDNSFailure: "The name could not be resolved (directly, or by the gateway: 502 dns-failure). Check the DNS servers " +
		"(GATEWAY_DNS_SERVERS on the gateway) and that nothing filters Microsoft's names.",
	DiagTimeout: "No answer in time. A firewall silently drops the traffic, or the path is too slow; check outbound " +
		"rules for port 443 (and 80 for CRLs) from the gateway (or this machine).",
	DiagConnRefused: "The connection was refused. Check that the gateway listens at the --via address, or that outbound " +
		"connections are allowed by the firewall.",
	DiagConnFailed: "The connection failed without a clear cause (reset or closed). A middlebox may interfere with the " +
		"traffic; compare a direct probe with one via the gateway.",
	DiagUnexpectedStatus: "The URL answered with a status the real service does not give. Something in the path (a block " +
		"page, captive portal or redirecting proxy) answers instead of the service.",
}

// WriteText writes the results in the Windows client analyzer's style, then
// a summary with advice per diagnosis.
func WriteText(w io.Writer, results []ProbeResult, via *url.URL, notProbed []string) {
	label := "Direct"
	if via != nil {
		label = "Via gateway " + redact(via)
	}
	for i, r := range results {
		if i > 0 {
			fmt.Fprintln(w)
		}
		fmt.Fprintf(w, "Testing URL : %s\n", r.Target.URL)
		if r.OK {
			fmt.Fprintf(w, "1 - %s: Succeeded (%d)\n", label, r.Status)
			continue
		}
		what := r.Diagnosis
		if r.Status != 0 {
			what = strconv.Itoa(r.Status) + " " + what
		}
		if r.Detail != "" {
			what += ": " + r.Detail
		}
		fmt.Fprintf(w, "1 - %s: Failed (%s)\n", label, what)
	}
	s := summarize(results, notProbed)
	fmt.Fprintf(w, "\nSummary: %d URLs tested, %d succeeded, %d failed (%d required)\n",
		s.Total, s.Succeeded, s.Failed, s.RequiredFailed)
	if len(notProbed) > 0 {
		fmt.Fprintf(w, "\nNot probed (%d wildcard patterns name no host to test):\n", len(notProbed))
		for _, p := range notProbed {
			fmt.Fprintf(w, "  %s - not probed: wildcard\n", p)
		}
	}
	for _, d := range s.Diagnoses {
		fmt.Fprintf(w, "\n%s (%d URLs): %s\n", d.Code, d.Count, d.Advice)
		for _, u := range d.URLs {
			fmt.Fprintf(w, "  %s\n", u)
		}
	}
}

func redact(u *url.URL) string {
	c := *u
	c.User = nil
	return c.String()
}

type diagSummary struct {
	Code   string   `json:"code"`
	Count  int      `json:"count"`
	Advice string   `json:"advice"`
	URLs   []string `json:"urls"`
}

type summary struct {
	Total          int           `json:"total"`
	Succeeded      int           `json:"succeeded"`
	Failed         int           `json:"failed"`
	RequiredFailed int           `json:"required_failed"`
	NotProbed      []string      `json:"not_probed"`
	Diagnoses      []diagSummary `json:"diagnoses"`
}

func summarize(results []ProbeResult, notProbed []string) summary {
	s := summary{Total: len(results), NotProbed: notProbed, Diagnoses: []diagSummary{}}
	if s.NotProbed == nil {
		s.NotProbed = []string{}
	}
	byCode := map[string]*diagSummary{}
	for _, r := range results {
		if r.OK {
			s.Succeeded++
			continue
		}
		s.Failed++
		if r.Target.Required {
			s.RequiredFailed++
		}
		d := byCode[r.Diagnosis]
		if d == nil {
			d = &diagSummary{Code: r.Diagnosis, Advice: diagAdvice[r.Diagnosis]}
			byCode[r.Diagnosis] = d
		}
		d.Count++
		d.URLs = append(d.URLs, r.Target.URL)
	}
	for _, c := range diagOrder {
		if d := byCode[c]; d != nil {
			s.Diagnoses = append(s.Diagnoses, *d)
			delete(byCode, c)
		}
	}
	rest := make([]string, 0, len(byCode))
	for c := range byCode {
		rest = append(rest, c)
	}
	slices.Sort(rest)
	for _, c := range rest {
		s.Diagnoses = append(s.Diagnoses, *byCode[c])
	}
	return s
}

type jsonResult struct {
	ProbeTarget
	OK         bool    `json:"ok"`
	Status     int     `json:"status"`
	Error      string  `json:"error,omitempty"`
	Diagnosis  string  `json:"diagnosis,omitempty"`
	Detail     string  `json:"detail,omitempty"`
	DurationMS float64 `json:"duration_ms"`
}

// WriteJSON writes {"results":[...],"summary":{...}}.
func WriteJSON(w io.Writer, results []ProbeResult, notProbed []string) error {
	out := struct {
		Results []jsonResult `json:"results"`
		Summary summary      `json:"summary"`
	}{Results: make([]jsonResult, 0, len(results)), Summary: summarize(results, notProbed)}
	for _, r := range results {
		out.Results = append(out.Results, jsonResult{ProbeTarget: r.Target, OK: r.OK, Status: r.Status, Error: r.Error,
			Diagnosis: r.Diagnosis, Detail: r.Detail, DurationMS: float64(r.Duration.Microseconds()) / 1000})
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}
