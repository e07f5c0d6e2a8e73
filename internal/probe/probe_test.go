package probe

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/defendergw/gateway/internal/allowlist"
	"github.com/defendergw/gateway/internal/resolver"
	"github.com/defendergw/gateway/internal/testutil"
)

// --- fixtures -------------------------------------------------------------

func probePolicy(t *testing.T, opts allowlist.Options) *allowlist.Policy {
	t.Helper()
	cat, err := allowlist.Embedded()
	if err != nil {
		t.Fatal(err)
	}
	p, err := allowlist.NewPolicy(cat, opts)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func euPolicy(t *testing.T) *allowlist.Policy {
	return probePolicy(t, allowlist.Options{Geographies: []allowlist.Geography{allowlist.EU}})
}

func hostsOf(targets []Target) []string {
	var hs []string
	for _, tg := range targets {
		u, _ := url.Parse(tg.URL)
		if !slices.Contains(hs, u.Hostname()) {
			hs = append(hs, u.Hostname())
		}
	}
	return hs
}

// serviceHandler answers each target's URL as the real service does; if
// status is non-zero it answers that status everywhere.
func serviceHandler(targets []Target, status int) http.Handler {
	byURL := map[string]Target{}
	for _, tg := range targets {
		u, _ := url.Parse(tg.URL)
		byURL[u.Hostname()+u.Path] = tg
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if status != 0 {
			w.WriteHeader(status)
			return
		}
		host, _, err := net.SplitHostPort(r.Host)
		if err != nil {
			host = r.Host
		}
		tg, ok := byURL[host+r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		code := tg.Expect
		if code == 0 {
			code = http.StatusOK
		}
		w.WriteHeader(code)
		if tg.Body != "" {
			io.WriteString(w, tg.Body+"\r\n")
		}
	})
}

var quietLog = log.New(io.Discard, "", 0)

func startTLS(t *testing.T, h http.Handler, cert tls.Certificate) string {
	t.Helper()
	s := httptest.NewUnstartedServer(h)
	s.Config.ErrorLog = quietLog
	s.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	s.StartTLS()
	t.Cleanup(s.Close)
	return s.Listener.Addr().String()
}

func startHTTP(t *testing.T, h http.Handler) string {
	t.Helper()
	s := httptest.NewUnstartedServer(h)
	s.Config.ErrorLog = quietLog
	s.Start()
	t.Cleanup(s.Close)
	return s.Listener.Addr().String()
}

// closedAddr returns a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// silentAddr accepts connections and never answers.
func silentAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return l.Addr().String()
}

// loopbackDialer maps every name to a loopback server by port ("443", "80");
// names in dnsFail fail as unresolvable. 127.0.0.1 is dialed as is. Nothing
// is ever resolved.
func loopbackDialer(ports map[string]string, dnsFail map[string]bool) func(context.Context, string, string) (net.Conn, error) {
	var d net.Dialer
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		if host == "127.0.0.1" {
			return d.DialContext(ctx, "tcp", addr)
		}
		if dnsFail[host] {
			return nil, &net.OpError{Op: "dial", Net: network, Err: &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}}
		}
		to, ok := ports[port]
		if !ok {
			return nil, fmt.Errorf("test dialer: no mapping for %s", addr)
		}
		return d.DialContext(ctx, "tcp", to)
	}
}

// testProxy is a tiny forward proxy: decide may refuse a request (status,
// X-Gateway-Reason); otherwise CONNECT is tunnelled and absolute-form
// requests are forwarded, both through dial.
type testProxy struct {
	decide func(r *http.Request) (int, string)
	dial   func(context.Context, string, string) (net.Conn, error)
	wg     sync.WaitGroup
}

func (p *testProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if status, reason := p.decide(r); status != 0 {
		if reason != "" {
			w.Header().Set(gatewayReasonHeader, reason)
		}
		if status == http.StatusProxyAuthRequired {
			w.Header().Set("Proxy-Authenticate", `Basic realm="test"`)
		}
		http.Error(w, "refused", status)
		return
	}
	if r.Method == http.MethodConnect {
		up, err := p.dial(r.Context(), "tcp", r.Host)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		c, brw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			up.Close()
			return
		}
		io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n")
		p.wg.Add(2)
		go func() {
			defer p.wg.Done()
			io.Copy(up, brw)
			up.Close()
		}()
		go func() {
			defer p.wg.Done()
			io.Copy(c, up)
			c.Close()
		}()
		return
	}
	tr := &http.Transport{DialContext: p.dial, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	out := r.Clone(r.Context())
	out.RequestURI = ""
	out.Header.Del("Proxy-Authorization")
	resp, err := tr.RoundTrip(out)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	for k, vs := range resp.Header {
		w.Header()[k] = vs
	}
	w.WriteHeader(resp.StatusCode)
	io.Copy(w, resp.Body)
}

func startProxy(t *testing.T, p *testProxy) *url.URL {
	t.Helper()
	s := httptest.NewUnstartedServer(p)
	s.Config.ErrorLog = quietLog
	s.Start()
	t.Cleanup(func() {
		s.Close()
		p.wg.Wait()
	})
	u, _ := url.Parse(s.URL)
	return u
}

// --- Targets ---------------------------------------------------------

func TestProbeTargetsEU(t *testing.T) {
	p := euPolicy(t)
	targets := Targets(p)
	byURL := map[string]Target{}
	for _, tg := range targets {
		byURL[tg.URL] = tg
	}
	tests := []struct {
		url    string
		method string
		expect int
		crl    bool
		body   string
	}{
		{"https://winatp-gw-weu.microsoft.com/test", "GET", 200, false, ""},
		{"https://winatp-gw-weu.microsoft.com/commands/test", "GET", 200, false, ""},
		{"https://winatp-gw-neu3.microsoft.com/test", "GET", 200, false, ""},
		{"https://edr-weu.eu.endpoint.security.microsoft.com/edr/commands/test", "GET", 200, false, ""},
		{"https://mdav.eu.endpoint.security.microsoft.com/mdav/test", "GET", 404, false, ""},
		{"https://eu-v20.events.data.microsoft.com/ping", "GET", 200, false, "OK"},
		{"https://eu.vortex-win.data.microsoft.com/health/keepalive", "GET", 200, false, ""},
		{"https://europe.x.cp.wd.microsoft.com/api/report", "GET", 200, false, ""},
		{"https://automatedirstrprdweu.blob.core.windows.net/", "GET", 400, false, ""},
		{"https://usseu1northprod.blob.core.windows.net/", "GET", 400, false, ""},
		{"https://wseu1westprod.blob.core.windows.net/", "GET", 400, false, ""},
		{"https://crl.microsoft.com/", "GET", 400, false, ""},
		{"https://go.microsoft.com/fwlink/?linkid=2120136", "HEAD", 200, false, ""},
		{"https://packages.microsoft.com/", "GET", 0, false, ""},
		{crlMicrosoftURL, "GET", 200, true, ""},
		{ctlURL, "GET", 200, true, ""},
		{wwwCRLURL, "GET", 200, true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.url, func(t *testing.T) {
			tg, ok := byURL[tt.url]
			if !ok {
				t.Fatalf("missing target %s", tt.url)
			}
			if tg.Method != tt.method || tg.Expect != tt.expect || tg.CRL != tt.crl || tg.Body != tt.body {
				t.Errorf("got %+v, want method %s expect %d crl %v body %q", tg, tt.method, tt.expect, tt.crl, tt.body)
			}
		})
	}
	t.Run("no US hosts", func(t *testing.T) {
		for _, tg := range targets {
			if tg.Geography == "US" || strings.Contains(tg.URL, ".us.") || strings.Contains(tg.URL, "us-v20") ||
				strings.Contains(tg.URL, "-cus") || strings.Contains(tg.URL, "-eus") || strings.Contains(tg.URL, "unitedstates") ||
				strings.Contains(tg.URL, "ussus") || strings.Contains(tg.URL, "wsus") {
				t.Errorf("US target in EU probe: %+v", tg)
			}
		}
	})
	t.Run("no wildcards, sorted, deterministic", func(t *testing.T) {
		for _, tg := range targets {
			if strings.Contains(tg.URL, "*") {
				t.Errorf("wildcard target %s", tg.URL)
			}
		}
		if !slices.IsSortedFunc(targets, func(a, b Target) int { return strings.Compare(a.URL, b.URL) }) {
			t.Error("targets not sorted by URL")
		}
		if again := Targets(p); !slices.Equal(again, targets) {
			t.Error("Targets not deterministic")
		}
		np := NotProbed(p)
		for _, w := range []string{"*.wdcp.microsoft.com", "*.endpoint.security.microsoft.com", "*.ecs.office.com"} {
			if !slices.Contains(np, w) {
				t.Errorf("NotProbed lacks %s: %v", w, np)
			}
		}
	})
	t.Run("shared URL merges services", func(t *testing.T) {
		tg := byURL["https://login.microsoftonline.com/"]
		if tg.Service != "admin-portal,live-response" || !tg.Required {
			t.Errorf("login.microsoftonline.com: %+v", tg)
		}
	})
}

func TestProbeTargetsPolicyOptions(t *testing.T) {
	tests := []struct {
		name    string
		opts    allowlist.Options
		absent  string
		present string
	}{
		{"deny rule removes host", allowlist.Options{Geographies: []allowlist.Geography{allowlist.EU},
			Rules: []allowlist.Rule{{ID: "t:1", Action: allowlist.Deny, Host: "login.live.com"}}},
			"https://login.live.com/", "https://winatp-gw-weu.microsoft.com/test"},
		{"disabled service", allowlist.Options{Geographies: []allowlist.Geography{allowlist.EU},
			DisabledServices: []string{"edr-cnc"}}, "https://winatp-gw-weu.microsoft.com/test", crlMicrosoftURL},
		{"US only", allowlist.Options{Geographies: []allowlist.Geography{allowlist.US}},
			"https://winatp-gw-weu.microsoft.com/test", "https://mdav.us.endpoint.security.microsoft.com/mdav/test"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var urls []string
			for _, tg := range Targets(probePolicy(t, tt.opts)) {
				urls = append(urls, tg.URL)
			}
			if slices.Contains(urls, tt.absent) {
				t.Errorf("%s present", tt.absent)
			}
			if !slices.Contains(urls, tt.present) {
				t.Errorf("%s absent", tt.present)
			}
		})
	}
	t.Run("blob scope listed drops the wildcard", func(t *testing.T) {
		p := probePolicy(t, allowlist.Options{Geographies: []allowlist.Geography{allowlist.EU}, BlobScope: allowlist.BlobListed})
		if slices.Contains(NotProbed(p), allowlist.BlobWildcardHost) {
			t.Error("NotProbed lists *.blob.core.windows.net under BlobListed")
		}
	})
}

// --- Probe, direct ----------------------------------------------------------

func TestProbeDirect(t *testing.T) {
	targets := Targets(euPolicy(t))
	hosts := hostsOf(targets)
	ca := testutil.NewCA(t)
	otherCA := testutil.NewCA(t)

	good := startTLS(t, serviceHandler(targets, 0), ca.Leaf(t, hosts...))
	inspected := startTLS(t, serviceHandler(targets, 0), otherCA.Leaf(t, hosts...))
	wrongName := startTLS(t, serviceHandler(targets, 0), ca.Leaf(t, "proxy.example.test"))
	allOK := startTLS(t, serviceHandler(targets, 200), ca.Leaf(t, hosts...))
	crlSrv := startHTTP(t, serviceHandler(targets, 0))
	closed := closedAddr(t)
	// A server answering 200 everywhere fails every target expecting
	// another status or a body (the /ping "OK").
	wrongAnswers := map[string]string{}
	for _, tg := range targets {
		if (tg.Expect != 0 && tg.Expect != 200) || tg.Body != "" {
			wrongAnswers[tg.URL] = DiagUnexpectedStatus
		}
	}
	for _, u := range []string{"https://mdav.eu.endpoint.security.microsoft.com/mdav/test",
		"https://automatedirstrprdweu.blob.core.windows.net/", "https://eu-v20.events.data.microsoft.com/ping"} {
		if wrongAnswers[u] == "" {
			t.Fatalf("%s should expect a non-200 answer", u)
		}
	}

	tests := []struct {
		name    string
		targets []Target
		ports   map[string]string
		dnsFail map[string]bool
		timeout time.Duration
		// want maps a URL to the diagnosis expected; others must be OK,
		// unless wantHTTPS/wantCRL set the diagnosis of every HTTPS/CRL target.
		want       map[string]string
		wantHTTPS  string
		wantCRL    string
		wantFailed bool
	}{
		{name: "all succeed", targets: targets, ports: map[string]string{"443": good, "80": crlSrv}},
		{name: "tls inspection by another CA", targets: targets, ports: map[string]string{"443": inspected, "80": crlSrv},
			wantHTTPS: DiagTLSInspection, wantFailed: true},
		{name: "certificate for another name", targets: targets, ports: map[string]string{"443": wrongName, "80": crlSrv},
			wantHTTPS: DiagTLSInspection, wantFailed: true},
		{name: "port 80 refused", targets: targets, ports: map[string]string{"443": good, "80": closed},
			wantCRL: DiagCRLBlocked, wantFailed: true},
		{name: "dns failure", targets: targets, ports: map[string]string{"443": good, "80": crlSrv},
			dnsFail: map[string]bool{"winatp-gw-weu.microsoft.com": true, "login.live.com": true},
			want: map[string]string{
				"https://winatp-gw-weu.microsoft.com/test":          DiagDNSFailure,
				"https://winatp-gw-weu.microsoft.com/commands/test": DiagDNSFailure,
				"https://login.live.com/":                           DiagDNSFailure,
			}, wantFailed: true},
		{name: "unexpected status", targets: targets, ports: map[string]string{"443": allOK, "80": crlSrv},
			want: wrongAnswers, wantFailed: true},
		// Nothing reachable: the CRL targets fail for the same reason as
		// the rest, and that reason is what they report.
		{name: "connection refused", targets: targets[:4], ports: map[string]string{"443": closed, "80": closed},
			wantHTTPS: DiagConnRefused, wantCRL: DiagConnRefused, wantFailed: true},
		{name: "timeout", targets: []Target{targets[0], byURL(t, targets, "https://winatp-gw-weu.microsoft.com/test")},
			ports: map[string]string{"443": silentAddr(t), "80": silentAddr(t)}, timeout: 300 * time.Millisecond,
			wantHTTPS: DiagTimeout, wantCRL: DiagTimeout, wantFailed: true},
		{name: "dns failure everywhere", targets: []Target{targets[0], byURL(t, targets, "https://winatp-gw-weu.microsoft.com/test")},
			ports:   map[string]string{"443": good, "80": crlSrv},
			dnsFail: map[string]bool{"crl.microsoft.com": true, "winatp-gw-weu.microsoft.com": true},
			want: map[string]string{
				crlMicrosoftURL: DiagDNSFailure, "https://winatp-gw-weu.microsoft.com/test": DiagDNSFailure,
			}, wantFailed: true},
		// Port 80 dropped while 443 answers: the CRL fetch is what is blocked.
		{name: "port 80 silent", targets: []Target{targets[0], byURL(t, targets, "https://winatp-gw-weu.microsoft.com/test")},
			ports: map[string]string{"443": good, "80": silentAddr(t)}, timeout: 300 * time.Millisecond,
			wantCRL: DiagCRLBlocked, wantFailed: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var calls []int
			res := Run(context.Background(), tt.targets, Options{
				RootCAs:     ca.Pool,
				Timeout:     tt.timeout,
				DialContext: loopbackDialer(tt.ports, tt.dnsFail),
				Progress:    func(done, total int) { calls = append(calls, done) },
			})
			if len(res) != len(tt.targets) {
				t.Fatalf("%d results for %d targets", len(res), len(tt.targets))
			}
			if len(calls) != len(tt.targets) || calls[len(calls)-1] != len(tt.targets) {
				t.Errorf("progress calls %v", calls)
			}
			for i, r := range res {
				if r.Target != tt.targets[i] {
					t.Fatalf("result %d is for %s, want %s", i, r.Target.URL, tt.targets[i].URL)
				}
				want := tt.want[r.Target.URL]
				switch {
				case r.Target.CRL && tt.wantCRL != "":
					want = tt.wantCRL
				case !r.Target.CRL && tt.wantHTTPS != "":
					want = tt.wantHTTPS
				}
				if r.Diagnosis != want || r.OK != (want == "") {
					t.Errorf("%s: ok=%v diagnosis %q (status %d, error %q, detail %q), want %q",
						r.Target.URL, r.OK, r.Diagnosis, r.Status, r.Error, r.Detail, want)
				}
				if !r.OK && r.Detail == "" {
					t.Errorf("%s: failure without detail", r.Target.URL)
				}
			}
			if got := Failed(res); got != tt.wantFailed {
				t.Errorf("Failed() = %v, want %v", got, tt.wantFailed)
			}
		})
	}
}

func byURL(t *testing.T, targets []Target, u string) Target {
	t.Helper()
	for _, tg := range targets {
		if tg.URL == u {
			return tg
		}
	}
	t.Fatalf("no target %s", u)
	return Target{}
}

// --- Probe, via a proxy -----------------------------------------------------

func TestProbeViaProxy(t *testing.T) {
	targets := Targets(euPolicy(t))
	ca := testutil.NewCA(t)
	good := startTLS(t, serviceHandler(targets, 0), ca.Leaf(t, hostsOf(targets)...))
	crlSrv := startHTTP(t, serviceHandler(targets, 0))
	upstream := loopbackDialer(map[string]string{"443": good, "80": crlSrv}, nil)

	tests := []struct {
		name       string
		decide     func(r *http.Request) (int, string)
		user       *url.Userinfo
		want       string // diagnosis of every target; "" = all OK
		crl        string // diagnosis of the CRL/CTL targets, if not want
		detail     string // substring of every detail
		crlDetail  string // substring of the CRL/CTL targets' details
		status     int
		crlStatus  int // status of the CRL/CTL targets, if not status
		wantFailed bool
	}{
		{name: "tunnel and forward", decide: func(*http.Request) (int, string) { return 0, "" }},
		{name: "407 for everything", decide: func(*http.Request) (int, string) { return http.StatusProxyAuthRequired, "auth-required" },
			want: DiagProxyAuth, detail: "LocalSystem", status: 407, wantFailed: true},
		{name: "407 without gateway header", decide: func(*http.Request) (int, string) { return http.StatusProxyAuthRequired, "" },
			want: DiagProxyAuth, status: 407, wantFailed: true},
		{name: "credentials accepted", user: url.UserPassword("probe", "s3cret"),
			decide: func(r *http.Request) (int, string) {
				if r.Header.Get("Proxy-Authorization") == "Basic cHJvYmU6czNjcmV0" {
					return 0, ""
				}
				return http.StatusProxyAuthRequired, "auth-required"
			}},
		// A refused CRL/CTL fetch is diagnosed as the ValidateMapsConnection
		// cause it is.
		{name: "403 geography", decide: func(*http.Request) (int, string) { return http.StatusForbidden, "geography" },
			want: DiagGatewayRefused, crl: DiagCRLBlocked, detail: "geography", crlDetail: "0x80072F8F", status: 403, wantFailed: true},
		{name: "502 dns-failure", decide: func(*http.Request) (int, string) { return http.StatusBadGateway, "dns-failure" },
			want: DiagDNSFailure, detail: "could not resolve", status: 502, wantFailed: true},
		{name: "429 auth-rate-limited", user: url.UserPassword("probe", "wrong"),
			decide: func(*http.Request) (int, string) { return http.StatusTooManyRequests, "auth-rate-limited" },
			want:   DiagAuthRateLimited, detail: "GATEWAY_AUTH_FAILURES_PER_MINUTE", status: 429, wantFailed: true},
		{name: "403 service-disabled", decide: func(*http.Request) (int, string) { return http.StatusForbidden, "service-disabled" },
			want: DiagServiceDisabled, detail: "GATEWAY_DISABLED_SERVICES", crlDetail: "0x80072F8F", status: 403, wantFailed: true},
		{name: "403 client-not-allowed", decide: func(*http.Request) (int, string) { return http.StatusForbidden, "client-not-allowed" },
			want: DiagGatewayRefused, detail: "GATEWAY_CLIENT_CIDRS", status: 403, wantFailed: true},
		// The gateway reaches nothing: every target says so, CRL/CTL included.
		{name: "502 upstream-unreachable everywhere", decide: func(*http.Request) (int, string) { return http.StatusBadGateway, "upstream-unreachable" },
			want: DiagConnRefused, detail: "outbound firewall", status: 502, wantFailed: true},
		{name: "504 upstream-timeout everywhere", decide: func(*http.Request) (int, string) { return http.StatusGatewayTimeout, "upstream-timeout" },
			want: DiagTimeout, detail: "timed out", status: 504, wantFailed: true},
		// Only the gateway's plain-HTTP fetches fail: port 80 is blocked
		// behind it.
		{name: "502 for port 80 only", decide: func(r *http.Request) (int, string) {
			if r.Method != http.MethodConnect {
				return http.StatusBadGateway, "upstream-unreachable"
			}
			return 0, ""
		}, crl: DiagCRLBlocked, crlDetail: "HTTPS targets got through", crlStatus: 502, wantFailed: true},
		{name: "504 for port 80 only", decide: func(r *http.Request) (int, string) {
			if r.Method != http.MethodConnect {
				return http.StatusGatewayTimeout, "upstream-timeout"
			}
			return 0, ""
		}, crl: DiagCRLBlocked, crlDetail: "0x80072F8F", crlStatus: 504, wantFailed: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			via := startProxy(t, &testProxy{decide: tt.decide, dial: upstream})
			res := Run(context.Background(), targets, Options{
				Via:       via,
				ProxyUser: tt.user,
				RootCAs:   ca.Pool,
				Timeout:   5 * time.Second,
				// Only the proxy is dialed: any other address fails the test.
				DialContext: loopbackDialer(nil, nil),
			})
			for _, r := range res {
				want, detail, status := tt.want, tt.detail, tt.status
				if r.Target.CRL {
					if tt.crl != "" {
						want = tt.crl
					}
					if tt.crlDetail != "" {
						detail = tt.crlDetail
					}
					if tt.crlStatus != 0 {
						status = tt.crlStatus
					}
				} else if tt.crl != "" && tt.want == "" {
					status = 0
				}
				if r.OK != (want == "") || r.Diagnosis != want {
					t.Errorf("%s: ok=%v diagnosis %q (status %d, error %q, detail %q), want %q",
						r.Target.URL, r.OK, r.Diagnosis, r.Status, r.Error, r.Detail, want)
					continue
				}
				if status != 0 && r.Status != status {
					t.Errorf("%s: status %d, want %d", r.Target.URL, r.Status, status)
				}
				if !strings.Contains(r.Detail, detail) {
					t.Errorf("%s: detail %q lacks %q", r.Target.URL, r.Detail, detail)
				}
			}
			if got := Failed(res); got != tt.wantFailed {
				t.Errorf("Failed() = %v, want %v", got, tt.wantFailed)
			}
		})
	}
}

func TestProbeConnectRefusalOddStatusText(t *testing.T) {
	// The CONNECT refusal is recognised by its status code, not by Go's
	// "Proxy Authentication Required" error text.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if _, err := http.ReadRequest(bufio.NewReader(c)); err == nil {
					io.WriteString(c, "HTTP/1.1 407 Go Away\r\nX-Gateway-Reason: auth-required\r\nContent-Length: 0\r\n\r\n")
				}
			}()
		}
	}()
	via := &url.URL{Scheme: "http", Host: l.Addr().String()}
	targets := []Target{{URL: "https://winatp-gw-weu.microsoft.com/test", Method: "GET", Expect: 200, Required: true}}
	res := Run(context.Background(), targets, Options{Via: via, DialContext: loopbackDialer(nil, nil)})
	if r := res[0]; r.Diagnosis != DiagProxyAuth || r.Status != 407 || r.OK {
		t.Errorf("got %+v", r)
	}
}

// --- output -----------------------------------------------------------------

func sampleResults() []Result {
	return []Result{
		{Target: Target{URL: "https://winatp-gw-weu.microsoft.com/test", Method: "GET", Expect: 200, Required: true},
			OK: true, Status: 200, Duration: 12 * time.Millisecond},
		{Target: Target{URL: "https://login.live.com/", Method: "GET", Required: false},
			Status: 407, Diagnosis: DiagProxyAuth, Detail: "the gateway answered 407"},
		{Target: Target{URL: crlMicrosoftURL, Method: "GET", Expect: 200, Required: true, CRL: true},
			Error: "connection refused", Diagnosis: DiagCRLBlocked, Detail: "refused"},
	}
}

func TestProbeWriteText(t *testing.T) {
	via, _ := url.Parse("http://user:pw@127.0.0.1:3128")
	tests := []struct {
		name string
		via  *url.URL
		want []string
		not  []string
	}{
		{name: "via gateway", via: via, want: []string{
			"Testing URL : https://winatp-gw-weu.microsoft.com/test\n1 - Via gateway http://127.0.0.1:3128: Succeeded (200)\n",
			"Testing URL : https://login.live.com/\n1 - Via gateway http://127.0.0.1:3128: Failed (407 proxy-auth-required: the gateway answered 407)\n",
			"1 - Via gateway http://127.0.0.1:3128: Failed (crl-blocked: refused)\n",
			"Summary: 3 URLs tested, 1 succeeded, 2 failed (1 required)\n",
			"  *.wdcp.microsoft.com - not probed: wildcard\n",
			"\nproxy-auth-required (1 URLs): The proxy demanded authentication (407). Anonymous traffic must be permitted",
			"\ncrl-blocked (1 URLs): ",
			"hr=0x80072F8F",
		}, not: []string{"pw", "user"}},
		{name: "direct", want: []string{
			"1 - Direct: Succeeded (200)\n",
			"1 - Direct: Failed (407 proxy-auth-required: ",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			WriteText(&b, sampleResults(), tt.via, []string{"*.wdcp.microsoft.com"})
			out := b.String()
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			for _, n := range tt.not {
				if strings.Contains(out, n) {
					t.Errorf("output contains %q:\n%s", n, out)
				}
			}
			if strings.Index(out, "proxy-auth-required (") > strings.Index(out, "crl-blocked (") {
				t.Error("advice not in fixed order")
			}
		})
	}
}

func TestProbeWriteJSON(t *testing.T) {
	var b bytes.Buffer
	if err := WriteJSON(&b, sampleResults(), []string{"*.wdcp.microsoft.com"}); err != nil {
		t.Fatal(err)
	}
	var got struct {
		Results []struct {
			URL       string  `json:"url"`
			OK        bool    `json:"ok"`
			Status    int     `json:"status"`
			Diagnosis string  `json:"diagnosis"`
			Required  bool    `json:"required"`
			CRL       bool    `json:"crl"`
			Duration  float64 `json:"duration_ms"`
		} `json:"results"`
		Summary struct {
			Total, Succeeded, Failed int
			RequiredFailed           int      `json:"required_failed"`
			NotProbed                []string `json:"not_probed"`
			Diagnoses                []struct {
				Code  string   `json:"code"`
				Count int      `json:"count"`
				URLs  []string `json:"urls"`
			} `json:"diagnoses"`
		} `json:"summary"`
	}
	if err := json.Unmarshal(b.Bytes(), &got); err != nil {
		t.Fatalf("%v\n%s", err, b.String())
	}
	if len(got.Results) != 3 || !got.Results[0].OK || got.Results[0].Duration != 12 || got.Results[1].Status != 407 ||
		got.Results[1].Diagnosis != DiagProxyAuth || !got.Results[2].CRL {
		t.Errorf("results: %+v", got.Results)
	}
	s := got.Summary
	if s.Total != 3 || s.Succeeded != 1 || s.Failed != 2 || s.RequiredFailed != 1 ||
		!slices.Equal(s.NotProbed, []string{"*.wdcp.microsoft.com"}) || len(s.Diagnoses) != 2 ||
		s.Diagnoses[0].Code != DiagProxyAuth || s.Diagnoses[1].URLs[0] != crlMicrosoftURL {
		t.Errorf("summary: %+v", s)
	}
}

func TestProbeFailed(t *testing.T) {
	req := Target{URL: "https://a/", Required: true}
	opt := Target{URL: "https://b/"}
	tests := []struct {
		name string
		res  []Result
		want bool
	}{
		{"empty", nil, false},
		{"all ok", []Result{{Target: req, OK: true}, {Target: opt, OK: true}}, false},
		{"optional failed", []Result{{Target: req, OK: true}, {Target: opt}}, false},
		{"required failed", []Result{{Target: req}, {Target: opt, OK: true}}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Failed(tt.res); got != tt.want {
				t.Errorf("Failed() = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestProbeNothingReachable: with the gateway down, every target, CRL/CTL
// included, reports the one real cause, and the summary gives no other.
func TestProbeNothingReachable(t *testing.T) {
	targets := Targets(euPolicy(t))
	via := &url.URL{Scheme: "http", Host: closedAddr(t)}
	res := Run(context.Background(), targets, Options{Via: via, Timeout: 5 * time.Second, DialContext: loopbackDialer(nil, nil)})
	crl := 0
	for _, r := range res {
		if r.Target.CRL {
			crl++
		}
		if r.OK || r.Diagnosis != DiagConnRefused {
			t.Errorf("%s: ok=%v diagnosis %q (detail %q), want %q", r.Target.URL, r.OK, r.Diagnosis, r.Detail, DiagConnRefused)
		}
	}
	if crl == 0 {
		t.Fatal("no CRL/CTL target among the probe targets")
	}
	var codes []string
	for _, d := range summarize(res, nil).Diagnoses {
		codes = append(codes, d.Code)
	}
	if want := []string{DiagConnRefused}; !slices.Equal(codes, want) {
		t.Errorf("summary causes %v, want %v", codes, want)
	}
	var b bytes.Buffer
	WriteText(&b, res, via, nil)
	if strings.Contains(b.String(), DiagCRLBlocked) {
		t.Errorf("text output names %s with nothing reachable:\n%s", DiagCRLBlocked, b.String())
	}
}

func TestProbeSummaryOrderNewCauses(t *testing.T) {
	mk := func(u, diag string) Result {
		return Result{Target: Target{URL: u, Required: true}, Diagnosis: diag, Detail: "x"}
	}
	res := []Result{
		mk("https://a/", DiagGatewayRefused), mk("http://crl/", DiagCRLBlocked), mk("https://b/", DiagServiceDisabled),
		mk("https://c/", DiagAuthRateLimited), mk("https://d/", DiagProxyAuth),
	}
	var codes []string
	for _, d := range summarize(res, nil).Diagnoses {
		codes = append(codes, d.Code)
		if d.Advice == "" {
			t.Errorf("%s: no advice", d.Code)
		}
	}
	want := []string{DiagProxyAuth, DiagAuthRateLimited, DiagServiceDisabled, DiagCRLBlocked, DiagGatewayRefused}
	if !slices.Equal(codes, want) {
		t.Errorf("summary order %v, want %v", codes, want)
	}
}

func TestParseProxyUser(t *testing.T) {
	tests := []struct {
		in       string
		wantUser string
		wantPass string
		wantErr  string
	}{
		{"alice:pw", "alice", "pw", ""},
		{"alice:p:w", "alice", "p:w", ""},
		{"alice", "", "", "without a password"},
		{"alice:", "", "", "password"},
		{":pw", "", "", "user name is empty"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			u, err := ParseProxyUser(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseProxyUser(%q) = %v, %v; want an error containing %q", tt.in, u, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseProxyUser(%q): %v", tt.in, err)
			}
			if pass, _ := u.Password(); u.Username() != tt.wantUser || pass != tt.wantPass {
				t.Errorf("ParseProxyUser(%q) = %q:%q, want %q:%q", tt.in, u.Username(), pass, tt.wantUser, tt.wantPass)
			}
		})
	}
}

// TestTerminalProgressNotOnFilesOrPipes: the redrawn progress line is for
// terminals only (see terminal_linux_test.go for a real one).
func TestTerminalProgressNotOnFilesOrPipes(t *testing.T) {
	file, err := os.Create(filepath.Join(t.TempDir(), "probe.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	defer pw.Close()
	null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	for _, tt := range []struct {
		name string
		w    io.Writer
	}{
		{"file", file}, {"pipe", pw}, {"null device", null}, {"buffer", &bytes.Buffer{}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if p := TerminalProgress(tt.w); p != nil {
				t.Errorf("TerminalProgress(%s) is not nil", tt.name)
			}
		})
	}
}

// TestProbeResolverErrors: a probe dialled through the gateway's own
// resolver (the upstream check) names its errors like the system's.
func TestProbeResolverErrors(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"nxdomain", fmt.Errorf("resolve winatp-gw-weu.microsoft.com: %w: NXDOMAIN", resolver.ErrDNSFailure), DiagDNSFailure},
		{"unreachable", fmt.Errorf("dial 192.0.2.1:443: %w: connection refused", resolver.ErrUpstreamUnreachable), DiagConnRefused},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			targets := []Target{
				{URL: "https://winatp-gw-weu.microsoft.com/test", Method: "GET", Expect: 200, Required: true},
				{URL: crlMicrosoftURL, Method: "GET", Expect: 200, Required: true, CRL: true},
			}
			dial := func(context.Context, string, string) (net.Conn, error) { return nil, tt.err }
			for _, r := range Run(context.Background(), targets, Options{DialContext: dial}) {
				if r.OK || r.Diagnosis != tt.want {
					t.Errorf("%s: ok=%v diagnosis %q (detail %q), want %q", r.Target.URL, r.OK, r.Diagnosis, r.Detail, tt.want)
				}
			}
		})
	}
}

// TestHostTests pins the host table's matching: one label per '*', the
// first entry wins, and unnamed hosts get the default request.
func TestHostTests(t *testing.T) {
	tests := []struct {
		name string
		rule allowlist.Rule
		want []string // method URL expect
	}{
		{"gateway host", allowlist.Rule{Host: "winatp-gw-weu.microsoft.com", Ports: []uint16{443}},
			[]string{"GET https://winatp-gw-weu.microsoft.com/test 200", "GET https://winatp-gw-weu.microsoft.com/commands/test 200"}},
		{"cloud protection", allowlist.Rule{Host: "unitedstates.x.cp.wd.microsoft.com", Ports: []uint16{443}},
			[]string{"GET https://unitedstates.x.cp.wd.microsoft.com/api/report 200"}},
		{"cloud protection CDN is not the service", allowlist.Rule{Host: "cdn.x.cp.wd.microsoft.com", Ports: []uint16{443}},
			[]string{"GET https://cdn.x.cp.wd.microsoft.com/ 0"}},
		{"a star stays in its label", allowlist.Rule{Host: "a.b.x.cp.wd.microsoft.com", Ports: []uint16{443}},
			[]string{"GET https://a.b.x.cp.wd.microsoft.com/ 0"}},
		{"www CRL path", allowlist.Rule{Host: "www.microsoft.com", Ports: []uint16{80}, Paths: []string{"/pkiops/crl/"}},
			[]string{"GET " + wwwCRLURL + " 200"}},
		{"www other path", allowlist.Rule{Host: "www.microsoft.com", Ports: []uint16{80}, Paths: []string{"/other/"}},
			[]string{"GET http://www.microsoft.com/other/ 0"}},
		{"go.microsoft.com: HTTPS only", allowlist.Rule{Host: "go.microsoft.com", Ports: []uint16{80, 443}},
			[]string{"HEAD " + goFwlinkURL + " 200"}},
		{"other port", allowlist.Rule{Host: "winatp-gw-weu.microsoft.com", Ports: []uint16{8443}},
			[]string{"GET https://winatp-gw-weu.microsoft.com:8443/ 0"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for _, tg := range targetsForRule(&tt.rule) {
				got = append(got, fmt.Sprintf("%s %s %d", tg.Method, tg.URL, tg.Expect))
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("targets:\n got %q\nwant %q", got, tt.want)
			}
		})
	}
}
