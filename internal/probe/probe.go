// Package probe is the connectivity probe (gateway probe): it requests
// every required Defender URL of the effective allowlist through a proxy,
// the way the sensor and Defender Antivirus do, and diagnoses each failure
// by its first cause (proxy authentication, TLS inspection, a blocked CRL,
// a gateway refusal, DNS, timeouts).
package probe

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/term"
)

// Options configure Run.
type Options struct {
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

// ParseProxyUser parses "user:password" for Options.ProxyUser. Both
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

// TerminalProgress returns a Options.Progress that redraws
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

// Result is the outcome of one target.
type Result struct {
	Target    Target
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

// Run requests every target, Concurrency at a time, and returns one result
// per target in the targets' order. The environment's proxy settings are
// never used: Via says whether the probe goes through the gateway.
func Run(ctx context.Context, targets []Target, opts Options) []Result {
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

	results := make([]Result, len(targets))
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
func blamePort80(results []Result) {
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

func probeOne(ctx context.Context, client *http.Client, t Target, opts Options) (res Result) {
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
