// Package proxy wires the gateway's forward proxy: goproxy for HTTP/1.1
// CONNECT and absolute-form requests, the allowlist decision for every
// request, the checked dialer for every upstream connection, and the mapping
// of refusals and failures to status codes with an X-Gateway-Reason header.
//
// goproxy's defaults are unsuitable for an egress gateway and are all
// replaced: its transport reads HTTPS_PROXY/HTTP_PROXY and skips certificate
// verification, its CONNECT dialer follows HTTPS_PROXY, and it appends ":80" to
// a CONNECT target without a port. Here every CONNECT is taken over by the
// gateway (ConnectHijack) and every upstream connection goes through the
// resolver's checked dialer.
package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/elazarl/goproxy"

	"github.com/defendergw/gateway/internal/allowlist"
	"github.com/defendergw/gateway/internal/bufpool"
	"github.com/defendergw/gateway/internal/telemetry"
	"github.com/defendergw/gateway/internal/tlsbypass"
	"github.com/defendergw/gateway/internal/upstream"
)

// EventSink receives connection events; *telemetry.EventLog is one. Log
// must not block.
type EventSink interface {
	Log(telemetry.Event)
}

// Dialer reaches destinations, dialing only addresses it has checked
// (resolver.Dialer).
type Dialer interface {
	// Lookup resolves and checks host's addresses for port.
	Lookup(ctx context.Context, host string, port uint16) ([]netip.AddrPort, error)
	// DialChecked connects to one of the addresses Lookup returned.
	DialChecked(ctx context.Context, addrs []netip.AddrPort) (net.Conn, error)
	// DialContext does both, for the HTTP transport.
	DialContext(ctx context.Context, network, addr string) (net.Conn, error)
}

// Parent sends allowed traffic through parent proxies (parent.Chain): the
// gateway decides, resolves and checks the destination as always, then
// dials the parent where it would have dialed the destination.
type Parent interface {
	// Bypass reports whether host goes direct.
	Bypass(host string) bool
	// DialTunnel opens a tunnel to host:port through a parent; addrs are
	// the addresses Lookup checked.
	DialTunnel(ctx context.Context, host string, port uint16, addrs []netip.AddrPort) (net.Conn, error)
	// RoundTrip sends a plain-HTTP request through a parent, in absolute
	// form, once Lookup has checked its host's addresses.
	RoundTrip(r *http.Request) (*http.Response, error)
	// CloseIdleConnections closes idle connections to parents.
	CloseIdleConnections()
}

// Authenticator checks a Proxy-Authorization header (auth.Authenticator).
type Authenticator interface {
	Authenticate(header string, client netip.Addr) (user string, err error)
}

// Inspector provides the TLS configuration that terminates an inspected
// tunnel (inspect.Minter).
type Inspector interface {
	TLSConfig(host string) *tls.Config
}

// Options configure a Server.
type Options struct {
	// Policy returns the allowlist in force; it is called once per request,
	// so a reload takes effect for the next request.
	Policy func() *allowlist.Policy
	// Dialer reaches upstreams; it must refuse internal destinations.
	Dialer Dialer
	// Parent, if non-nil, carries allowed traffic to destinations it does
	// not bypass (GATEWAY_PARENT_PROXY); Dialer still resolves and checks
	// them first. If nil, every destination is dialed directly.
	Parent Parent
	// Logger receives one line per decision and one per closed tunnel.
	Logger *slog.Logger

	// DialTimeout is the request's one deadline for the gateway's own
	// work, counted from the front door: name resolution plus connection
	// set-up (a verified tunnel adds ClientHelloTimeout for the client's
	// ClientHello in between). Zero sets no deadline of the request's own
	// (the Dialer's bound still applies).
	DialTimeout time.Duration
	// ResponseHeaderTimeout bounds the wait for an upstream's response
	// headers on plain HTTP; zero means no limit.
	ResponseHeaderTimeout time.Duration
	// Tunnel tunes CONNECT relays (idle and half-close timeouts).
	Tunnel tlsbypass.Options
	// ClientHelloTimeout bounds the wait for a raw tunnel's ClientHello;
	// zero means no limit but the tunnel's idle timeout.
	ClientHelloTimeout time.Duration
	// WriteTimeout bounds each write of a forwarded response to the
	// client, so a client that stops reading (slow read) cannot hold an
	// upstream for ever; if zero, Tunnel.IdleTimeout is used (what a
	// tunnel may sit idle is also how long a write may wait).
	WriteTimeout time.Duration
	// ClientNetworks lists who may use the gateway; others get 403
	// client-not-allowed before anything else happens. Empty means anyone.
	ClientNetworks []netip.Prefix
	// Auth, if non-nil, authenticates requests to destinations that are not
	// anonymous (and to unlisted destinations); if nil, nothing is
	// authenticated.
	Auth Authenticator
	// Challenge is the Proxy-Authenticate value sent with 407; required
	// with Auth.
	Challenge string
	// AuthenticateAnonymous makes Auth apply to anonymous rows too
	// (GATEWAY_ANONYMOUS=none). It reproduces a proxy that breaks
	// Defender's system-context traffic, for labs and the connectivity
	// probe; never use it in production.
	AuthenticateAnonymous bool
	// ConnDone, if non-nil, is called with a hijacked client connection
	// (a tunnel, or a CONNECT refused after hijacking) once it has ended,
	// for connection accounting; if nil, nothing is called. Connections
	// that are not hijacked end through http.Server's ConnState.
	ConnDone func(net.Conn)
	// PAC, if non-nil, renders the proxy auto-config file served at
	// /proxy.pac and /wpad.dat (origin-form requests to the gateway);
	// requestHost is the Host the client used and local the address its
	// connection reached (nil if unknown). If nil, those paths are 404.
	PAC func(p *allowlist.Policy, requestHost string, local net.Addr) ([]byte, error)
	// Metrics, if non-nil, counts decisions, tunnels and forwarded
	// responses; if nil, nothing is counted.
	Metrics *telemetry.Metrics
	// Events, if non-nil, receives one connection event per connection
	// outcome; if nil, no events are recorded.
	Events EventSink
	// Inspector, if non-nil, terminates allowed tunnels that are not
	// TLS-exempt and decides each inner request with its path; if nil,
	// every allowed tunnel is a verified raw tunnel.
	Inspector Inspector
	// UpstreamTLS configures TLS towards upstreams for requests the gateway
	// originates over TLS; nil means the system roots.
	UpstreamTLS *tls.Config
	// Via is the pseudonym added to Via headers (RFC 9110 §7.6.3).
	Via string
}

// Server is the forward proxy. It implements http.Handler.
type Server struct {
	opts Options
	gp   *goproxy.ProxyHttpServer
	tr   *http.Transport
	h1   *upstream.Client // bodiless plain-HTTP requests (upstream.Handles)
	// ptls carries inspected tunnels' inner requests through a parent
	// (nil without one): TLS to the origin over a parent's CONNECT.
	ptls    *http.Transport
	log     *slog.Logger
	tunnels tunnels
	// mitm inspects a CONNECT (raw tunnels never reach goproxy).
	mitm *goproxy.ConnectAction
}

// New builds a Server.
func New(opts Options) (*Server, error) {
	if opts.Policy == nil || opts.Dialer == nil {
		return nil, errors.New("proxy: Policy and Dialer are required")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	// Timeouts have no defaults here: the settings' defaults are stated
	// once, in internal/config, and the gateway passes every one. A zero
	// timeout means no limit of its own (see each option).
	if opts.Auth != nil && opts.Challenge == "" {
		return nil, errors.New("proxy: Challenge is required with Auth")
	}
	if opts.Via == "" {
		opts.Via = "defender-gateway"
	}
	s := &Server{opts: opts, log: opts.Logger}
	s.tr = PlainTransport(opts)
	s.h1 = upstream.New(upstream.Options{
		DialContext:            opts.Dialer.DialContext,
		ResponseHeaderTimeout:  opts.ResponseHeaderTimeout,
		MaxResponseHeaderBytes: int(s.tr.MaxResponseHeaderBytes),
		IdleTimeout:            s.tr.IdleConnTimeout,
		MaxIdle:                s.tr.MaxIdleConns,
		MaxIdlePerHost:         s.tr.MaxIdleConnsPerHost,
	})
	if opts.Parent != nil {
		s.ptls = s.tr.Clone()
		s.ptls.DialContext = s.dialParent
	}
	gp := goproxy.NewProxyHttpServer()
	gp.Verbose = false
	gp.Logger = log.New(io.Discard, "", 0)
	gp.Tr = s.tr
	gp.KeepAcceptEncoding = true
	// Raw tunnels never reach goproxy and inspected ones end at the
	// gateway, so goproxy never dials; should it ever try, it gets a
	// refusal instead of following HTTPS_PROXY.
	gp.ConnectDial = func(string, string) (net.Conn, error) { return nil, errors.New("proxy: goproxy dialer disabled") }
	gp.ConnectDialWithReq = nil
	gp.NonproxyHandler = http.HandlerFunc(s.serveSelf)
	s.mitm = &goproxy.ConnectAction{Action: goproxy.ConnectMitm, TLSConfig: s.mitmTLSConfig}
	gp.OnRequest().HandleConnectFunc(s.handleConnect)
	gp.OnRequest().DoFunc(s.handleRequest)
	s.gp = gp
	return s, nil
}

// PlainTransport is the transport the Server forwards with (plain HTTP with
// a body, inspected tunnels' requests), for a parent proxy's transport to
// share its settings.
func PlainTransport(opts Options) *http.Transport {
	tlsConf := opts.UpstreamTLS
	if tlsConf == nil {
		tlsConf = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	return &http.Transport{
		Proxy:             nil, // never chain to HTTP(S)_PROXY from the environment
		DialContext:       opts.Dialer.DialContext,
		TLSClientConfig:   tlsConf,
		ForceAttemptHTTP2: false,
		// Endpoints fetch CRLs and updates from a handful of hosts with
		// many concurrent clients: keep enough idle upstream connections
		// that they are reused rather than redialed.
		MaxIdleConns:           1024,
		MaxIdleConnsPerHost:    256,
		IdleConnTimeout:        90 * time.Second,
		ResponseHeaderTimeout:  opts.ResponseHeaderTimeout,
		ExpectContinueTimeout:  time.Second,
		DisableCompression:     true, // relay bodies as the origin sent them
		MaxResponseHeaderBytes: 64 << 10,
	}
}

// Close releases idle upstream connections.
func (s *Server) Close() {
	s.tr.CloseIdleConnections()
	s.h1.CloseIdleConnections()
	if s.ptls != nil {
		s.ptls.CloseIdleConnections()
		s.opts.Parent.CloseIdleConnections()
	}
}

// dialParent reaches host:port through a parent for the inspected
// tunnels' transport, after checking the destination's addresses.
func (s *Server) dialParent(ctx context.Context, _, addr string) (net.Conn, error) {
	host, ps, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	port, err := strconv.ParseUint(ps, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("dial %s: bad port", addr)
	}
	addrs, err := s.opts.Dialer.Lookup(ctx, host, uint16(port))
	if err != nil {
		return nil, err
	}
	return s.opts.Parent.DialTunnel(ctx, host, uint16(port), addrs)
}

// viaParent reports whether traffic to host goes through a parent.
func (s *Server) viaParent(host string) bool {
	return s.opts.Parent != nil && !s.opts.Parent.Bypass(host)
}

// serveSelf answers origin-form requests addressed to the gateway itself:
// the PAC/WPAD file and a short page.
func (s *Server) serveSelf(w http.ResponseWriter, r *http.Request) {
	p := s.opts.Policy()
	switch {
	case (r.URL.Path == "/proxy.pac" || r.URL.Path == "/wpad.dat") && s.opts.PAC != nil &&
		(r.Method == http.MethodGet || r.Method == http.MethodHead):
		local, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
		body, err := s.opts.PAC(p, r.Host, local)
		if err != nil {
			s.log.Error("rendering the PAC file failed", "error", err.Error())
			http.Error(w, "PAC file unavailable", http.StatusInternalServerError)
			return
		}
		// The media type WPAD and the browsers' "automatic proxy
		// configuration URL" expect.
		w.Header().Set("Content-Type", "application/x-ns-proxy-autoconfig")
		w.Header().Set("Cache-Control", "max-age=300")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.Write(body)
	case r.URL.Path == "/":
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintf(w, "Microsoft Defender egress gateway (catalog %s, geographies %s).\n"+
			"This is a forward proxy: point endpoints at it (netsh winhttp set proxy <host:port>, TelemetryProxyServer, "+
			"Defender Antivirus ProxyServer) rather than browsing to it. Proxy auto-config: /proxy.pac, /wpad.dat.\n",
			p.Version(), geoList(p))
	default:
		http.NotFound(w, r)
	}
}

// hijackKeeper hands goproxy a connection that still carries the bytes the
// HTTP server had buffered past the CONNECT request. goproxy's own hijack
// discards that buffer, which would drop a ClientHello sent in the same
// segment as the CONNECT.
type hijackKeeper struct {
	http.ResponseWriter
	// onHijack, if non-nil, is called with the hijacked connection (for
	// inspected tunnels, which goproxy carries); if nil, nothing is called.
	onHijack func(*hijackedConn)
	// connDone, if non-nil, reports the end of the hijacked connection.
	connDone func(net.Conn)
	// writeTimeout bounds each write of a forwarded response: a client that
	// stops reading (slow read) cannot hold the connection for ever.
	writeTimeout time.Duration
	rc           *http.ResponseController
	// closeAfter makes the server close the connection after this
	// response (the request's framing cannot be trusted for a next one).
	closeAfter bool
}

// WriteHeader adds Connection: close when the connection must not be
// reused; goproxy replaces the header map before this point, so it is done
// here rather than up front.
func (h *hijackKeeper) WriteHeader(code int) {
	if h.closeAfter {
		h.Header().Set("Connection", "close")
	}
	h.ResponseWriter.WriteHeader(code)
}

// Write writes part of a forwarded response within writeTimeout.
func (h *hijackKeeper) Write(p []byte) (int, error) {
	if h.writeTimeout > 0 {
		if h.rc == nil {
			h.rc = http.NewResponseController(h.ResponseWriter)
		}
		h.rc.SetWriteDeadline(time.Now().Add(h.writeTimeout))
	}
	return h.ResponseWriter.Write(p)
}

// ReadFrom copies a forwarded body through Write (keeping the per-write
// deadline) with a pooled buffer.
func (h *hijackKeeper) ReadFrom(src io.Reader) (int64, error) {
	// goproxy copies every forwarded body with io.Copy, which would
	// allocate 32 KiB per response, since this wrapper hides the server's
	// own ReaderFrom.
	bp := bufpool.Get()
	defer bufpool.Put(bp)
	return io.CopyBuffer(struct{ io.Writer }{h}, src, *bp)
}

// Flush lets goproxy stream (server-sent events, chunked responses).
func (h *hijackKeeper) Flush() {
	if h.rc == nil {
		h.rc = http.NewResponseController(h.ResponseWriter)
	}
	h.rc.Flush()
}

func (h *hijackKeeper) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	hj, ok := h.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("proxy: connection cannot be hijacked")
	}
	conn, rw, err := hj.Hijack()
	if err != nil {
		return nil, nil, err
	}
	var pending []byte
	if n := rw.Reader.Buffered(); n > 0 {
		b, _ := rw.Reader.Peek(n)
		pending = append([]byte(nil), b...)
	}
	hc := &hijackedConn{Conn: conn, pending: pending}
	if h.onHijack != nil {
		h.onHijack(hc)
	}
	if h.connDone != nil {
		// Raw tunnels report their end from serveConnect; a connection
		// goproxy keeps (inspection) reports it when goproxy closes it.
		prev, done := hc.onClose, h.connDone
		hc.onClose = func() {
			if prev != nil {
				prev()
			}
			done(conn)
		}
	}
	return hc, rw, nil
}

// hijackedConn is the hijacked client connection plus the bytes read ahead
// of the handler. It is unwrapped before any tunnel copy: the relay works on
// the bare connection and writes pending upstream first.
type hijackedConn struct {
	net.Conn
	pending []byte
	// onClose, if non-nil, is called once when goproxy closes an
	// inspected tunnel; if nil, nothing is called.
	onClose   func()
	closeOnce sync.Once
}

// Close closes the connection and reports the end of an inspected tunnel.
func (c *hijackedConn) Close() error {
	c.closeOnce.Do(func() {
		if c.onClose != nil {
			c.onClose()
		}
	})
	return c.Conn.Close()
}

// Read serves buffered bytes first, for goproxy code paths (WebSocket) that
// use the connection as is.
func (c *hijackedConn) Read(p []byte) (int, error) {
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}
