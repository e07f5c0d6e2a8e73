package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/defendergw/gateway/internal/allowlist"
	"github.com/defendergw/gateway/internal/reason"
	"github.com/defendergw/gateway/internal/tlsbypass"
)

// protoTransparent names connections the transparent listener took, in
// metrics and in the access log's protocol field.
const protoTransparent = "transparent"

var (
	// ErrNoSNI refuses an intercepted TLS connection whose ClientHello
	// names no server: the transparent listener decides by name only.
	ErrNoSNI = errors.New("client hello names no server")
	// ErrDestinationMismatch refuses an intercepted connection whose
	// original destination is none of the named host's addresses (strict
	// destination checking, as Squid's host_verify_strict).
	ErrDestinationMismatch = errors.New("original destination is not an address of the named host")
	// errNotRedirected refuses a connection made to the transparent
	// listener itself rather than redirected to it: it has no original
	// destination to serve.
	errNotRedirected = fmt.Errorf("connection was not redirected: %w", allowlist.ErrBadTarget)
	// errNoProxyAuth refuses, on the transparent listener, a destination
	// that needs proxy authentication: a client that does not know it is
	// proxied never sends Proxy-Authorization.
	errNoProxyAuth = errors.New("destination needs proxy authentication, which intercepted connections cannot give")
)

// TransparentOptions configure a Transparent server.
type TransparentOptions struct {
	// OriginalDst returns where the kernel says a connection was going
	// (transparent.OriginalDst). Required.
	OriginalDst func(net.Conn) (netip.AddrPort, error)
	// StrictDestination refuses a connection whose original destination is
	// not one of the addresses the gateway resolves its SNI (or Host) to,
	// and then dials that destination itself. If false, the original
	// destination's address is ignored (its port is kept) and the
	// gateway dials the addresses it resolved and checked.
	StrictDestination bool
	// HTTP is the template of the server that reads intercepted plain
	// HTTP: its timeouts, header limit and error log. Its Handler and
	// ConnState are the Transparent's own.
	HTTP *http.Server
}

// Transparent serves connections the kernel redirected to the gateway
// (netfilter REDIRECT): TLS decided by its ClientHello's SNI and the
// original port, plain HTTP by its Host header and path. Decisions,
// records, metrics and limits are the proxy port's; what differs is that
// nothing can be answered in HTTP to a TLS client, and that no proxy
// authentication can be asked for.
type Transparent struct {
	s    *Server
	opts TransparentOptions
	hs   *http.Server
	http *connQueue // intercepted plain HTTP, served by hs
}

// NewTransparent returns the transparent server of s.
func (s *Server) NewTransparent(o TransparentOptions) (*Transparent, error) {
	if o.OriginalDst == nil {
		return nil, errors.New("proxy: TransparentOptions.OriginalDst is required")
	}
	t := &Transparent{s: s, opts: o, http: newConnQueue()}
	hs := &http.Server{}
	if o.HTTP != nil {
		hs.ReadHeaderTimeout, hs.ReadTimeout = o.HTTP.ReadHeaderTimeout, o.HTTP.ReadTimeout
		hs.IdleTimeout, hs.MaxHeaderBytes, hs.ErrorLog = o.HTTP.IdleTimeout, o.HTTP.MaxHeaderBytes, o.HTTP.ErrorLog
	}
	hs.Handler = http.HandlerFunc(t.serveHTTP)
	hs.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		if ic, ok := c.(*interceptedConn); ok {
			return context.WithValue(ctx, interceptedKey{}, ic)
		}
		return ctx
	}
	hs.ConnState = func(c net.Conn, st http.ConnState) {
		if st == http.StateClosed {
			t.done(c)
		}
	}
	t.hs = hs
	go hs.Serve(t.http)
	return t, nil
}

// Serve accepts redirected connections from ln until it is closed.
func (t *Transparent) Serve(ln net.Listener) error {
	self := listenerSelf(ln.Addr())
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go t.serveConn(c, self)
	}
}

// listenerSelf reports whether an original destination is the listener
// itself: a connection no rule redirected (with REDIRECT its original
// destination is what it was sent to; with TPROXY, its local address).
// Serving one would loop into the gateway. For a listener on a wildcard
// address, every address of the host's interfaces is the listener's.
func listenerSelf(a net.Addr) func(netip.AddrPort) bool {
	la, _ := netip.ParseAddrPort(a.String())
	addrs := []netip.Addr{la.Addr().Unmap()}
	if la.Addr().IsUnspecified() {
		if ifas, err := net.InterfaceAddrs(); err == nil {
			for _, ifa := range ifas {
				if p, err := netip.ParsePrefix(ifa.String()); err == nil {
					addrs = append(addrs, p.Addr().Unmap())
				}
			}
		}
	}
	return func(orig netip.AddrPort) bool {
		return orig.Port() == la.Port() && (orig.Addr().IsLoopback() && la.Addr().IsUnspecified() || slices.Contains(addrs, orig.Addr().Unmap()))
	}
}

// Shutdown stops the intercepted-HTTP server gracefully (tunnels end with
// the proxy's Shutdown).
func (t *Transparent) Shutdown(ctx context.Context) error {
	t.http.Close()
	return t.hs.Shutdown(ctx)
}

// done reports the end of a connection the listener admitted.
func (t *Transparent) done(c net.Conn) {
	if ic, ok := c.(*interceptedConn); ok {
		c = ic.Conn
	}
	if t.s.opts.ConnDone != nil {
		t.s.opts.ConnDone(c)
	}
}

// serveConn tells TLS from plain HTTP by the first bytes and serves each.
func (t *Transparent) serveConn(c net.Conn, self func(netip.AddrPort) bool) {
	s := t.s
	orig, origErr := t.opts.OriginalDst(c)
	if origErr == nil {
		if self(orig) {
			origErr = errNotRedirected
		}
	} else {
		origErr = fmt.Errorf("original destination: %w", errors.Join(origErr, errNotRedirected))
	}
	// The first bytes decide: a TLS handshake record, or anything else,
	// which is read as HTTP. The peek returns every byte it read, to be
	// replayed to whichever side serves the connection.
	start := time.Now()
	hello, seen, err := tlsbypass.PeekClientHello(c, nil, s.opts.ClientHelloTimeout, 0)
	if errors.Is(err, tlsbypass.ErrNotTLS) && len(seen) > 0 && seen[0] != 0x16 {
		if !t.http.push(&interceptedConn{Conn: c, pending: seen, orig: orig, err: origErr}) {
			c.Close()
			t.done(c)
		}
		return
	}
	st := &reqState{proto: protoTransparent, method: http.MethodConnect, policy: s.opts.Policy(), raw: orig.String(), intercepted: true}
	if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
		st.clientAP, st.client = ap, ap.Addr().Unmap()
	}
	switch {
	case !s.clientAllowed(st.client):
		err = ErrClientNotAllowed
	case origErr != nil:
		st.raw, err = c.LocalAddr().String(), origErr
	}
	if err != nil {
		t.refuseTLS(c, st, err)
		return
	}
	t.serveTLS(c, st, orig, hello, seen, start)
}

// serveTLS decides an intercepted TLS connection by its SNI and original
// port, resolves the name itself and relays to an address it checked.
func (t *Transparent) serveTLS(c net.Conn, st *reqState, orig netip.AddrPort, hello tlsbypass.Hello, seen []byte, start time.Time) {
	s := t.s
	st.sni = hello.ServerName
	if hello.ServerName == "" {
		t.refuseTLS(c, st, ErrNoSNI)
		return
	}
	// The SNI is normalised like a CONNECT host (allowlist.ParseAuthority:
	// case, trailing dot, IDNA), on the port the client was going to.
	st.raw = net.JoinHostPort(hello.ServerName, fmt.Sprint(orig.Port()))
	var err error
	if st.target, err = allowlist.ParseAuthority(st.raw); err != nil {
		t.refuseTLS(c, st, err)
		return
	}
	if err := t.decideTarget(st); err != nil {
		t.refuseTLS(c, st, err)
		return
	}
	// Intercepted TLS is never inspected: the client did not choose a
	// proxy, so it trusts no gateway CA for this connection.
	st.mode = tlsbypass.Bypass
	if s.opts.DialTimeout > 0 {
		st.deadline = start.Add(s.opts.DialTimeout)
	}
	ctx, cancel := withDeadline(context.Background(), st.deadline)
	defer cancel()
	addrs, err := t.lookup(ctx, st, orig)
	if err != nil {
		t.refuseTLS(c, st, err)
		return
	}
	s.decided(st)
	st.addrs = addrs
	upstream, err := s.dialTarget(ctx, st) // a parent proxy's, if one is configured
	st.addrs = nil
	if err != nil {
		st.fail(err)
		s.record(st)
		sendAlert(c, alertFor(st.reason))
		t.done(c)
		return
	}
	st.status = http.StatusOK
	st.remote = remoteAddr(upstream)
	s.tunnels.add(c, upstream, st)
	if s.opts.Metrics != nil {
		s.opts.Metrics.TunnelOpened(st.mode.String())
	}
	target := st.target
	tlsbypass.StartVerified(c, upstream, seen, s.opts.Tunnel,
		func(h tlsbypass.Hello) error { return tlsbypass.CheckSNI(h, target) },
		func(stats tlsbypass.Stats) {
			s.tunnelEnded(st, stats)
			s.tunnels.remove(c)
			t.done(c)
		})
}

// decideTarget decides st.target as the proxy port does, except that no
// proxy authentication can be asked for: with authentication configured,
// only what an anonymous client may reach is served (the anonymous
// rows, Defender's system-context URLs).
func (t *Transparent) decideTarget(st *reqState) error {
	st.decision = st.policy.Decide(st.target)
	if !st.decision.Allowed {
		return st.decision.Err
	}
	if t.s.needsAuth(st) {
		return errNoProxyAuth
	}
	return nil
}

// lookup resolves and checks the target's addresses; with strict
// destination checking, the original destination must be one of them and
// is the only one dialed.
func (t *Transparent) lookup(ctx context.Context, st *reqState, orig netip.AddrPort) ([]netip.AddrPort, error) {
	if t.opts.StrictDestination {
		return checkOriginal(ctx, t.s.opts.Dialer, st, orig)
	}
	return t.s.opts.Dialer.Lookup(ctx, st.target.Host, st.target.Port)
}

// checkOriginal resolves and checks the target's addresses and returns the
// original destination if it is one of them, ErrDestinationMismatch if it
// is not. Squid's host_verify_strict does the same; unlike Squid without
// it, the gateway never dials an unverified original destination.
func checkOriginal(ctx context.Context, d Dialer, st *reqState, orig netip.AddrPort) ([]netip.AddrPort, error) {
	addrs, err := d.Lookup(ctx, st.target.Host, st.target.Port)
	if err != nil {
		return nil, err
	}
	want := netip.AddrPortFrom(orig.Addr().Unmap(), st.target.Port)
	if !slices.ContainsFunc(addrs, func(a netip.AddrPort) bool { return a.Addr().Unmap() == want.Addr() }) {
		return nil, fmt.Errorf("%s is not an address of %s: %w", orig.Addr(), st.target.Host, ErrDestinationMismatch)
	}
	return []netip.AddrPort{want}, nil
}

// refuseTLS records a refused intercepted connection and closes it with a
// TLS alert: nothing else can be said to a TLS client.
func (t *Transparent) refuseTLS(c net.Conn, st *reqState, err error) {
	t.s.refused(st, err)
	sendAlert(c, alertFor(st.reason))
	t.done(c)
}

// TLS alert descriptions (RFC 8446 §6.2).
const (
	alertHandshakeFailure = 40
	alertAccessDenied     = 49
	alertInternalError    = 80
	alertUnrecognizedName = 112
)

// alertFor chooses the alert that tells a TLS client why it was refused:
// access_denied for the policy's refusals ("a valid certificate or PSK was
// received, but when access control was applied, the sender decided not to
// proceed with negotiation"), unrecognized_name without SNI (RFC 6066 §3),
// internal_error when the destination could not be reached.
func alertFor(rc reason.Code) byte {
	switch {
	case rc == reason.NoSNI:
		return alertUnrecognizedName
	case rc == reason.NotTLS || rc == reason.BadRequest:
		return alertHandshakeFailure
	case rc.Failure():
		return alertInternalError
	}
	return alertAccessDenied
}

// sendAlert answers a ClientHello with a fatal alert and closes c. Before
// any keys exist, alerts travel in plaintext records (RFC 8446 §5.1, §6); a
// TLS 1.2 or 1.3 client reads this one as "remote error".
func sendAlert(c net.Conn, desc byte) {
	c.SetWriteDeadline(time.Now().Add(time.Second))
	c.Write([]byte{21, 3, 3, 0, 2, 2, desc}) // alert record: level fatal (2)
	c.Close()
}

// interceptedKey marks, in a request's context, a request read from an
// intercepted connection; the value is the *interceptedConn.
type interceptedKey struct{}

// intercept is what the request path knows of an intercepted request.
type intercept struct {
	orig   netip.AddrPort
	strict bool
}

// serveHTTP serves an intercepted plain-HTTP request: its Host header and
// the original port name the target, and from there it is an absolute-form
// request on the proxy port (decided, forwarded and recorded the same way).
func (t *Transparent) serveHTTP(w http.ResponseWriter, r *http.Request) {
	ic, _ := r.Context().Value(interceptedKey{}).(*interceptedConn)
	if ic == nil {
		t.refuseHTTP(w, r, errNotRedirected)
		return
	}
	if ic.err != nil {
		t.refuseHTTP(w, r, ic.err)
		return
	}
	if r.Method == http.MethodConnect || r.URL.IsAbs() || r.Host == "" {
		// A redirected client speaks to an origin: it sends origin-form
		// requests with a Host (RFC 9112 §3.2).
		t.refuseHTTP(w, r, fmt.Errorf("intercepted request %s %q: %w", r.Method, r.RequestURI, allowlist.ErrBadTarget))
		return
	}
	// The port is the one the client connected to, whatever Host says.
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	r.URL.Scheme, r.URL.Host = "http", net.JoinHostPort(strings.Trim(host, "[]"), strconv.Itoa(int(ic.orig.Port())))
	if ic.orig.Port() == 80 {
		r.URL.Host = host // the default port goes unsaid (RFC 9110 §4.2.1)
	}
	t.s.serveRequest(w, r, &intercept{orig: ic.orig, strict: t.opts.StrictDestination})
}

// refuseHTTP answers a malformed intercepted request.
func (t *Transparent) refuseHTTP(w http.ResponseWriter, r *http.Request, err error) {
	st := &reqState{proto: protoTransparent, method: r.Method, policy: t.s.opts.Policy(), raw: r.RequestURI, intercepted: true}
	if ap, perr := netip.ParseAddrPort(r.RemoteAddr); perr == nil {
		st.clientAP, st.client = ap, ap.Addr().Unmap()
	}
	r.Header.Set("Connection", "close")
	t.s.refuse(w, r, st, err)
}

// interceptedConn is an intercepted plain-HTTP connection: the bytes the
// TLS peek read come first. (Tunnels never use it.)
type interceptedConn struct {
	net.Conn
	pending []byte
	orig    netip.AddrPort
	err     error // why orig is unusable (not redirected), or nil
}

func (c *interceptedConn) Read(p []byte) (int, error) {
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// connQueue is a net.Listener fed by push: it hands connections the
// transparent listener classified as plain HTTP to an http.Server.
type connQueue struct {
	ch     chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newConnQueue() *connQueue {
	return &connQueue{ch: make(chan net.Conn), closed: make(chan struct{})}
}

// push hands c to the server; false if the queue is closed.
func (q *connQueue) push(c net.Conn) bool {
	select {
	case q.ch <- c:
		return true
	case <-q.closed:
		return false
	}
}

func (q *connQueue) Accept() (net.Conn, error) {
	select {
	case c := <-q.ch:
		return c, nil
	case <-q.closed:
		return nil, net.ErrClosed
	}
}

func (q *connQueue) Close() error {
	q.once.Do(func() { close(q.closed) })
	return nil
}

func (q *connQueue) Addr() net.Addr { return &net.TCPAddr{} }
