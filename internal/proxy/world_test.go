package proxy

import (
	"cmp"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/defendergw/gateway/internal/allowlist"
	"github.com/defendergw/gateway/internal/auth"
	"github.com/defendergw/gateway/internal/inspect"
	"github.com/defendergw/gateway/internal/lab"
	"github.com/defendergw/gateway/internal/parent"
	"github.com/defendergw/gateway/internal/resolver"
	"github.com/defendergw/gateway/internal/telemetry"
	"github.com/defendergw/gateway/internal/testutil"
	"github.com/defendergw/gateway/internal/tlsbypass"
)

// Names the test zone serves. Catalog hosts keep their real ports (443, 80)
// in requests; the test dialer maps those ports to the OS-chosen ports of the
// loopback upstreams after the gateway has decided and resolved.
var tlsNames = []string{
	"winatp-gw-weu.microsoft.com", "winatp-gw-cus.microsoft.com", "eu.wdcp.microsoft.com",
	"unlisted.example.com", "edr-cus.us.endpoint.security.microsoft.com", "winatp-gw-neu3.microsoft.com",
	"raw.lab.test", "inspected.lab.test",
}

// rawRule allows raw.lab.test:443 without ClientHello verification, for
// tests that push plain bytes through a tunnel.
const rawRule = "rules:\n  - action: allow\n    host: raw.lab.test\n    verify_sni: false\n" +
	"  - action: allow\n    host: inspected.lab.test\n    paths: [/allowed/]\n"

type worldOptions struct {
	geos   []allowlist.Geography
	rules  string
	tunnel tlsbypass.Options
	// writeTimeout is Options.WriteTimeout.
	writeTimeout time.Duration
	// responseHeaderTimeout for plain HTTP; default 5s.
	responseHeaderTimeout time.Duration
	// inspect configures an inspection CA (world.inspectCA).
	inspect            bool
	clientHelloTimeout time.Duration
	blobScope          allowlist.BlobScope
	// htpasswd, if set, is the content of an htpasswd file.
	htpasswd       string
	unlisted       bool // GATEWAY_UNLISTED=authenticated
	audit          bool
	clientNetworks []netip.Prefix
	// readHeaderTimeout of the gateway's HTTP server; default 5s.
	readHeaderTimeout time.Duration
	// telemetry wires a metrics registry (world.reg) and an event log
	// (world.eventFile, JSON).
	telemetry bool
	// logLevel of the operational log; default debug, so that tests can
	// wait for a request's outcome line.
	logLevel *slog.Level
	// parent, if non-nil, configures parent proxies (Options.Parent), their
	// metrics wired to the world's.
	parent *parent.Options
}

type world struct {
	t   testing.TB
	dns *testutil.DNS
	ca  *testutil.CA
	// inspectCA signs the gateway's leaf certificates when inspecting.
	inspectCA *testutil.CA
	tlsUp     *httptest.Server // TLS upstream on 127.0.0.1
	httpUp    *httptest.Server // plain HTTP upstream on 127.0.0.1
	tlsConns  atomic.Int64
	httpReqs  chan *http.Request
	proxyURL  *url.URL
	srv       *Server
	reg       *prometheus.Registry
	events    *telemetry.EventLog
	eventFile string
	logs      *testutil.Buffer
	portMap   map[uint16]uint16
	// dials records the context deadline of every Lookup, DialChecked and
	// DialContext the gateway made (zero: none), in order.
	dials []dialCall
	mu    sync.Mutex
}

type dialCall struct {
	op       string // lookup, dial-checked, dial
	deadline time.Time
}

func (w *world) recordDial(ctx context.Context, op string) {
	d, _ := ctx.Deadline()
	w.mu.Lock()
	defer w.mu.Unlock()
	w.dials = append(w.dials, dialCall{op, d})
}

// dialCalls returns the dials recorded so far and forgets them.
func (w *world) dialCalls() []dialCall {
	w.mu.Lock()
	defer w.mu.Unlock()
	c := w.dials
	w.dials = nil
	return c
}

// worldDialer is the lab's port map (the checked address goes to the
// upstream's real port) recording each call's deadline.
type worldDialer struct {
	lab.PortMap
	w *world
}

// mapPort maps a decided port to the upstream's, as the test set it.
func (w *world) mapPort(port uint16) uint16 {
	w.mu.Lock()
	defer w.mu.Unlock()
	if m, ok := w.portMap[port]; ok {
		return m
	}
	return port
}

func (d worldDialer) Lookup(ctx context.Context, host string, port uint16) ([]netip.AddrPort, error) {
	d.w.recordDial(ctx, "lookup")
	return d.PortMap.Lookup(ctx, host, port)
}

func (d worldDialer) DialChecked(ctx context.Context, addrs []netip.AddrPort) (net.Conn, error) {
	d.w.recordDial(ctx, "dial-checked")
	return d.PortMap.DialChecked(ctx, addrs)
}

func (d worldDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	d.w.recordDial(ctx, "dial")
	return d.PortMap.DialContext(ctx, network, addr)
}

var debugLevel = slog.LevelDebug

func newWorld(t testing.TB, o worldOptions) *world {
	t.Helper()
	w := &world{t: t, dns: testutil.NewDNS(t), ca: testutil.NewCA(t), logs: &testutil.Buffer{},
		httpReqs: make(chan *http.Request, 16), portMap: map[uint16]uint16{}}

	w.tlsUp = httptest.NewUnstartedServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if special(rw, r) {
			return
		}
		fmt.Fprintf(rw, "tls upstream %s %s", r.Host, r.URL.Path)
	}))
	w.tlsUp.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			w.tlsConns.Add(1)
		}
	}
	w.tlsUp.TLS = &tls.Config{Certificates: []tls.Certificate{w.ca.Leaf(t, tlsNames...)}}
	w.tlsUp.StartTLS()
	t.Cleanup(w.tlsUp.Close)

	w.httpUp = httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		select {
		case w.httpReqs <- r.Clone(context.Background()):
		default:
		}
		if special(rw, r) {
			return
		}
		if r.URL.Path == "/pki/crl/products/hop" {
			// Raw answer: net/http would rewrite a Connection header.
			c, bw, _ := rw.(http.Hijacker).Hijack()
			defer c.Close()
			fmt.Fprintf(bw, "HTTP/1.1 200 OK\r\nConnection: X-Upstream-Hop\r\nX-Upstream-Hop: secret\r\n"+
				"%s: spoofed\r\nContent-Length: 2\r\n\r\nok", ReasonHeader)
			bw.Flush()
			return
		}
		fmt.Fprintf(rw, "http upstream %s %s", r.Host, r.URL.Path)
	}))
	t.Cleanup(w.httpUp.Close)
	w.portMap[443] = port(w.tlsUp.Listener.Addr())
	w.portMap[80] = port(w.httpUp.Listener.Addr())
	w.portMap[8443] = port(w.tlsUp.Listener.Addr())

	for _, n := range tlsNames {
		w.dns.Set(n, "127.0.0.1")
	}
	for _, n := range []string{"crl.microsoft.com", "www.microsoft.com", "unlisted-http.example.com"} {
		w.dns.Set(n, "127.0.0.1")
	}

	res, err := resolver.New(resolver.Options{Servers: []string{w.dns.Addr}, Timeout: time.Second, CacheSize: 1000, MaxTTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	self := netip.MustParseAddrPort(ln.Addr().String())
	cat, err := allowlist.Embedded()
	if err != nil {
		t.Fatal(err)
	}
	popts := allowlist.Options{Geographies: o.geos, BlobScope: o.blobScope, Audit: o.audit, UnlistedAuthenticated: o.unlisted}
	if o.rules == "" {
		o.rules = rawRule
	}
	{
		rs, err := allowlist.ParseRules([]byte(o.rules), "rules.yaml")
		if err != nil {
			t.Fatal(err)
		}
		popts.Rules = rs.Rules
	}
	policy, err := allowlist.NewPolicy(cat, popts)
	if err != nil {
		t.Fatal(err)
	}
	if o.responseHeaderTimeout == 0 {
		o.responseHeaderTimeout = 5 * time.Second
	}
	d := &resolver.Dialer{Resolver: res, Timeout: 2 * time.Second, Policy: &resolver.Policy{
		AllowPrivate: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")},
		Self:         []netip.AddrPort{self},
	}}
	var inspector Inspector
	if o.inspect {
		w.inspectCA = testutil.NewCA(t)
		m, err := inspect.NewMinter(w.inspectCA.Cert, w.inspectCA.Key, inspect.MinterOptions{Validity: 24 * time.Hour, CacheSize: 1024})
		if err != nil {
			t.Fatal(err)
		}
		inspector = m
	}
	var authn Authenticator
	if o.htpasswd != "" {
		f := filepath.Join(t.TempDir(), "htpasswd")
		if err := os.WriteFile(f, []byte(o.htpasswd), 0o600); err != nil {
			t.Fatal(err)
		}
		a, err := auth.New(auth.Options{File: f, FailuresPerMinute: 10, FailureBurst: 5})
		if err != nil {
			t.Fatal(err)
		}
		authn = a
	}
	var metrics *telemetry.Metrics
	if o.telemetry {
		w.reg = prometheus.NewRegistry()
		metrics = telemetry.NewMetrics(w.reg, telemetry.BuildInfo{Version: "test"})
		w.eventFile = filepath.Join(t.TempDir(), "events.json")
		if w.events, err = telemetry.NewEventLog(telemetry.EventLogOptions{Path: w.eventFile, Format: "json"}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { w.events.Close() })
	}
	if o.tunnel.Splice == nil {
		// As in production (GATEWAY_TUNNEL_COPY=splice).
		o.tunnel.Splice = tlsbypass.NewPipes(32)
	}
	var events EventSink // a nil *EventLog in the interface would not be nil
	if w.events != nil {
		events = w.events
	}
	var par Parent
	if o.parent != nil {
		po := *o.parent
		po.Observe, po.Up = metrics.ParentRequest, metrics.ParentUp
		chain, err := parent.New(po)
		if err != nil {
			t.Fatal(err)
		}
		par = chain
	}
	srv, err := New(Options{
		Parent:                par,
		Metrics:               metrics,
		Events:                events,
		Auth:                  authn,
		Challenge:             auth.Challenge("test realm"),
		ClientNetworks:        o.clientNetworks,
		Inspector:             inspector,
		ClientHelloTimeout:    o.clientHelloTimeout,
		UpstreamTLS:           &tls.Config{RootCAs: w.ca.Pool},
		Policy:                func() *allowlist.Policy { return policy },
		Dialer:                worldDialer{PortMap: lab.PortMap{Dialer: d, Map: w.mapPort}, w: w},
		Logger:                slog.New(slog.NewJSONHandler(w.logs, &slog.HandlerOptions{Level: cmp.Or(o.logLevel, &debugLevel)})),
		DialTimeout:           3 * time.Second,
		ResponseHeaderTimeout: o.responseHeaderTimeout,
		Tunnel:                o.tunnel,
		WriteTimeout:          o.writeTimeout,
	})
	if err != nil {
		t.Fatal(err)
	}
	w.srv = srv
	if o.readHeaderTimeout == 0 {
		o.readHeaderTimeout = 5 * time.Second
	}
	hs := &http.Server{Handler: srv, ReadHeaderTimeout: o.readHeaderTimeout}
	go hs.Serve(ln)
	t.Cleanup(func() {
		hs.Close()
		srv.Close()
		if t.Failed() {
			t.Logf("gateway log:\n%s", w.logs.String())
		}
	})
	w.proxyURL = &url.URL{Scheme: "http", Host: ln.Addr().String()}
	return w
}

func port(a net.Addr) uint16 { return uint16(a.(*net.TCPAddr).Port) }

// client returns an HTTP client that uses the gateway and trusts the test CA.
func (w *world) client() *http.Client {
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			Proxy:           http.ProxyURL(w.proxyURL),
			TLSClientConfig: &tls.Config{RootCAs: w.ca.Pool},
			// A fresh connection per request, so connection counts are exact.
			DisableKeepAlives: true,
		},
	}
}

// connect sends a raw CONNECT and returns the connection and the response.
func (w *world) connect(target string, extra []byte) (net.Conn, *http.Response) {
	w.t.Helper()
	c, err := net.Dial("tcp", w.proxyURL.Host)
	if err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	msg := append([]byte("CONNECT "+target+" HTTP/1.1\r\nHost: "+target+"\r\n\r\n"), extra...)
	if _, err := c.Write(msg); err != nil {
		w.t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufioReader(c), &http.Request{Method: http.MethodConnect})
	if err != nil {
		w.t.Fatalf("CONNECT %s: reading response: %v", target, err)
	}
	return c, resp
}

func readAll(t *testing.T, r io.Reader) string {
	t.Helper()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// upstreamOnce makes port (as the gateway dials it) reach a loopback
// upstream that accepts one connection and hands it to serve.
func (w *world) upstreamOnce(t *testing.T, port uint16, serve func(c net.Conn)) {
	t.Helper()
	up := testutil.Listen(t, "127.0.0.1:0")
	go func() {
		c, err := up.Accept()
		if err != nil {
			return
		}
		serve(c)
	}()
	w.mu.Lock()
	w.portMap[port] = up.Port()
	w.mu.Unlock()
}

// Raw upstream answers for hostile-origin tests, on any path ending so.
const (
	// trailersUnannounced: a chunked answer announcing only X-Legit, then
	// trailers the gateway must not pass on: its own reason field, a
	// hop-by-hop field and one the Connection header names.
	trailersUnannounced = "HTTP/1.1 200 OK\r\nConnection: X-Hop-Trailer\r\nTrailer: X-Legit\r\n" +
		"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-Legit: yes\r\n" + ReasonHeader + ": spoofed\r\n" +
		"Keep-Alive: timeout=5\r\nX-Hop-Trailer: secret\r\n\r\n"
	// trailersAnnounced announces every one of them in Trailer.
	trailersAnnounced = "HTTP/1.1 200 OK\r\nConnection: X-Hop-Trailer\r\nTrailer: X-Legit, " + ReasonHeader +
		", Keep-Alive, X-Hop-Trailer\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-Legit: yes\r\n" +
		ReasonHeader + ": spoofed\r\nKeep-Alive: timeout=5\r\nX-Hop-Trailer: secret\r\n\r\n"
	// switchUnasked is a 101 to a request that asked for no upgrade.
	switchUnasked = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
)

// special writes a raw answer for the paths above; it reports whether it did.
func special(rw http.ResponseWriter, r *http.Request) bool {
	var raw string
	switch {
	case strings.HasSuffix(r.URL.Path, "/trailers-unannounced"):
		raw = trailersUnannounced
	case strings.HasSuffix(r.URL.Path, "/trailers-announced"):
		raw = trailersAnnounced
	case strings.HasSuffix(r.URL.Path, "/switch"):
		raw = switchUnasked
	default:
		return false
	}
	io.Copy(io.Discard, r.Body)
	c, bw, err := rw.(http.Hijacker).Hijack()
	if err != nil {
		return true
	}
	defer c.Close()
	bw.WriteString(raw)
	bw.Flush()
	if strings.HasSuffix(r.URL.Path, "/switch") {
		time.Sleep(200 * time.Millisecond) // hold the "switched" connection open a moment
	}
	return true
}

// tlsConnsSince returns how many connections reached the TLS upstream since
// its count was before (testutil.CountedSince: a probe, not a sleep).
func (w *world) tlsConnsSince(t *testing.T, before int64) int64 {
	t.Helper()
	return testutil.CountedSince(t, w.tlsUp.Listener.Addr().String(), w.tlsConns.Load, before)
}
