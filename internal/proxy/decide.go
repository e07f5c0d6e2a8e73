package proxy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/defendergw/gateway/internal/allowlist"
	"github.com/defendergw/gateway/internal/reason"
	"github.com/defendergw/gateway/internal/tlsbypass"
)

// ErrClientNotAllowed refuses clients outside the configured client networks.
var ErrClientNotAllowed = errors.New("client address is not allowed to use the gateway")

// errAuthInsideTunnel refuses an inner request of an inspected tunnel that
// needs authentication the CONNECT did not carry: clients do not send
// Proxy-Authorization inside TLS.
var errAuthInsideTunnel = errors.New("authentication required for this path, but the tunnel was opened anonymously")

// stateKey carries the decided request into goproxy, for the two paths
// goproxy serves (absolute-form HTTP and inspected tunnels): its handlers
// receive only the request and goproxy's own context, so the request's
// context is the one way in. Raw tunnels, most of the traffic, never take
// it: they get the state as an argument.
type stateKey struct{}

func stateFrom(ctx context.Context) *reqState {
	st, _ := ctx.Value(stateKey{}).(*reqState)
	return st
}

// ServeHTTP is the gateway's front door, and the request path reads top to
// bottom here: admit the client, serve the gateway's own pages, decide the
// target, authenticate, resolve (CONNECT), then answer and relay (raw
// tunnels) or forward (goproxy: absolute-form HTTP and inspected tunnels).
// Every refusal is an ordinary HTTP response (a 407 to a CONNECT can be
// retried on the same connection), and every request is recorded once, in
// the record st that this function builds.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.serveRequest(w, r, nil) }

// serveRequest is ServeHTTP; ic is non-nil for a plain-HTTP request the
// transparent listener intercepted (rewritten to absolute form).
func (s *Server) serveRequest(w http.ResponseWriter, r *http.Request, ic *intercept) {
	now := time.Now()
	st := &reqState{proto: protoHTTP, method: r.Method, policy: s.opts.Policy(), raw: r.RequestURI}
	switch {
	case ic != nil:
		st.proto, st.intercepted = protoTransparent, true
	case r.Method == http.MethodConnect:
		st.proto = protoConnect
	}
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		st.clientAP, st.client = ap, ap.Addr().Unmap()
	}
	// Admit: client networks before anything else.
	if !s.clientAllowed(st.client) {
		s.refuse(w, r, st, ErrClientNotAllowed)
		return
	}
	if r.Method != http.MethodConnect && !r.URL.IsAbs() {
		s.serveSelf(w, r)
		return
	}
	// Decide and authenticate.
	if err := s.decide(r, st); err != nil {
		s.refuse(w, r, st, err)
		return
	}
	if answered, err := maxForwards(r); err != nil {
		s.refuse(w, r, st, err)
		return
	} else if answered {
		st.reason, st.status, st.end, st.url = reason.MaxForwards, http.StatusOK, endCompleted, r.URL.String()
		s.decided(st)
		s.record(st)
		answerOptions(w.Header())
		w.WriteHeader(http.StatusOK)
		return
	}
	// One deadline for the gateway's own work on this request, from the
	// settings: resolving and connecting, plus the client's ClientHello in
	// between for a verified tunnel.
	if s.opts.DialTimeout > 0 {
		st.deadline = now.Add(s.opts.DialTimeout)
		if r.Method == http.MethodConnect && st.mode != tlsbypass.Inspect && !st.decision.NoSNICheck {
			st.deadline = st.deadline.Add(s.opts.ClientHelloTimeout)
		}
	}
	if ic != nil && ic.strict {
		// Strict destination checking: the address the client was going
		// to must be one of the Host's.
		ctx, cancel := withDeadline(r.Context(), st.deadline)
		_, err := checkOriginal(ctx, s.opts.Dialer, st, ic.orig)
		cancel()
		if err != nil {
			s.refuse(w, r, st, err)
			return
		}
	}
	if r.Method == http.MethodConnect {
		// Resolve and check the destination before answering, so that a
		// refusal or failure is still an HTTP answer.
		ctx, cancel := withDeadline(r.Context(), st.deadline)
		addrs, err := s.opts.Dialer.Lookup(ctx, st.target.Host, st.target.Port)
		cancel()
		if err != nil {
			s.refuse(w, r, st, err)
			return
		}
		st.addrs = addrs
	}
	s.decided(st)
	// Answer and relay a raw tunnel here; goproxy forwards the rest.
	if r.Method == http.MethodConnect && st.mode != tlsbypass.Inspect {
		s.takeOver(w, r, st)
		return
	}
	keeper := &hijackKeeper{ResponseWriter: w, connDone: s.opts.ConnDone, writeTimeout: s.writeTimeout(),
		closeAfter: mustClose(r)}
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = &bodyReader{ReadCloser: r.Body}
	}
	if st.mode == tlsbypass.Inspect {
		keeper.onHijack = s.observeInspectedTunnel(st)
	}
	s.gp.ServeHTTP(keeper, r.WithContext(context.WithValue(r.Context(), stateKey{}, st)))
}

// writeTimeout bounds each write of a forwarded response to the client.
func (s *Server) writeTimeout() time.Duration {
	return cmp.Or(s.opts.WriteTimeout, s.opts.Tunnel.IdleTimeout)
}

// mustClose reports whether the connection must be closed after answering
// r: a request framed by Transfer-Encoding may also have carried a
// Content-Length (net/http drops it), and "the server MUST close the
// connection after responding to such a request" (RFC 9112 §6.1); a
// transfer-coded body is never worth the smuggling risk of reusing it.
func mustClose(r *http.Request) bool { return len(r.TransferEncoding) > 0 }

// bodyReader remembers the error that ended reading a request body, so a
// malformed body (bad chunk framing) is told apart from an upstream failure.
type bodyReader struct {
	io.ReadCloser
	err error
}

func (b *bodyReader) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF && b.err == nil {
		b.err = err
	}
	return n, err
}

// errBadBody refuses a request whose body cannot be read as framed.
var errBadBody = errors.New("malformed request body")

func (s *Server) clientAllowed(a netip.Addr) bool {
	if len(s.opts.ClientNetworks) == 0 {
		return true
	}
	for _, p := range s.opts.ClientNetworks {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// decide parses the target, decides it and authenticates the client when
// the destination needs it.
func (s *Server) decide(r *http.Request, st *reqState) error {
	var err error
	if r.Method == http.MethodTrace {
		st.raw = r.URL.Host
		return errMethodNotAllowed
	}
	if r.Method == http.MethodConnect {
		if st.raw == "" {
			st.raw = r.URL.Host
		}
		st.target, err = allowlist.ParseAuthority(st.raw)
	} else {
		st.raw = r.URL.Host
		st.target, err = allowlist.ParseURL(r.URL)
		if err == nil && !strings.EqualFold(r.URL.Scheme, "http") {
			// https:// in absolute form would make the gateway originate
			// TLS on the client's behalf; clients must use CONNECT.
			err = fmt.Errorf("absolute-form %s: use CONNECT: %w", r.URL.Scheme, allowlist.ErrBadTarget)
		}
	}
	if err != nil {
		return err
	}
	st.decision = st.policy.Decide(st.target)
	if !st.decision.Allowed {
		return st.decision.Err
	}
	if st.intercepted && s.needsAuth(st) {
		return errNoProxyAuth
	}
	if s.needsAuth(st) {
		st.user, err = s.opts.Auth.Authenticate(r.Header.Get("Proxy-Authorization"), st.client)
		s.observeAuth(err)
		if err != nil {
			return err
		}
	}
	if wantsWebSocket(r.Header) {
		return errUpgradeRefused
	}
	st.mode = tlsbypass.Choose(&st.decision, s.opts.Inspector != nil)
	return nil
}

// needsAuth reports whether the decided request must authenticate.
// System-context Defender traffic (anonymous rows) is never challenged,
// with or without credentials: "make sure anonymous traffic is permitted in
// your proxy or firewall for the previously listed URLs" (Configure device
// proxy and Internet connectivity settings).
func (s *Server) needsAuth(st *reqState) bool {
	return s.opts.Auth != nil && (!st.decision.Anonymous || st.decision.Unlisted || s.opts.AuthenticateAnonymous)
}

// answerOptions sets the headers of the gateway's own answer to an OPTIONS
// whose Max-Forwards reached 0: what it would forward, and why it answered.
func answerOptions(h http.Header) {
	h.Set("Allow", allowedMethods)
	h.Set(ReasonHeader, reason.MaxForwards.String())
	h.Set("Content-Length", "0")
	h.Set("Cache-Control", "no-store")
}

// wantsWebSocket reports a request asking to upgrade to WebSocket (RFC
// 6455 §4.1: Upgrade: websocket; the Connection token is not required for
// the refusal, since the Upgrade field alone asks for it).
func wantsWebSocket(h http.Header) bool {
	for _, v := range h.Values("Upgrade") {
		for _, p := range strings.Split(v, ",") {
			name, _, _ := strings.Cut(strings.TrimSpace(p), "/")
			if strings.EqualFold(name, "websocket") {
				return true
			}
		}
	}
	return false
}

// maxForwards applies Max-Forwards to OPTIONS (RFC 9110 §7.6.2; TRACE, the
// other method it governs, is refused before): at 0 the gateway answers as
// the final recipient (answered is true), otherwise the value goes on one
// lower. Other methods keep the field as it is ("A recipient MAY ignore a
// Max-Forwards header field received with any other request methods").
func maxForwards(r *http.Request) (answered bool, err error) {
	v := r.Header.Get("Max-Forwards")
	if r.Method != http.MethodOptions || v == "" {
		return false, nil
	}
	n, perr := strconv.ParseUint(strings.TrimSpace(v), 10, 31)
	if perr != nil || strings.TrimSpace(v) != v {
		return false, errBadMaxForwards
	}
	if n == 0 {
		return true, nil
	}
	r.Header.Set("Max-Forwards", strconv.FormatUint(n-1, 10))
	return false, nil
}

// refuse answers a request the gateway will not serve, and counts and
// records it.
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, st *reqState, err error) {
	if r.Method != http.MethodConnect && st.target.Host != "" {
		st.url = r.URL.String()
	}
	s.refused(st, err)
	f := newRefusal(st)
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set(ReasonHeader, f.reason.String())
	if f.status == http.StatusMethodNotAllowed {
		h.Set("Allow", allowedMethods) // RFC 9110 §15.5.6
	}
	if f.status == http.StatusProxyAuthRequired {
		// Kept alive, so that the client retries on the same connection.
		h.Set("Proxy-Authenticate", s.opts.Challenge)
	}
	if (r.Method == http.MethodConnect && f.status != http.StatusProxyAuthRequired) || mustClose(r) {
		// A refused CONNECT may already be followed by tunnel bytes, and
		// a transfer-coded request by smuggled ones: neither may be read
		// as a next request.
		h.Set("Connection", "close")
	}
	w.WriteHeader(f.status)
	w.Write([]byte(f.body))
}

// withDeadline is context.WithDeadline, or ctx itself for a zero deadline
// (no deadline of the request's own).
func withDeadline(ctx context.Context, d time.Time) (context.Context, context.CancelFunc) {
	if d.IsZero() {
		return ctx, func() {}
	}
	return context.WithDeadline(ctx, d)
}
