package proxy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"strconv"
	"strings"

	"github.com/defendergw/gateway/internal/allowlist"
	"github.com/defendergw/gateway/internal/telemetry"
	"github.com/defendergw/gateway/internal/tlsbypass"
)

// ErrClientNotAllowed refuses clients outside the configured client networks.
var ErrClientNotAllowed = errors.New("client address is not allowed to use the gateway")

// errAuthInsideTunnel refuses an inner request of an inspected tunnel that
// needs authentication the CONNECT did not carry: clients do not send
// Proxy-Authorization inside TLS.
var errAuthInsideTunnel = errors.New("authentication required for this path, but the tunnel was opened anonymously")

// reqState is one request's decision, made once at the front door and read
// by the goproxy handlers (from the request context) and, for inspected
// tunnels, by every inner request (from the goproxy context).
type reqState struct {
	client   netip.Addr
	policy   *allowlist.Policy
	raw      string // request target as sent
	target   allowlist.Target
	decision allowlist.Decision
	user     string
	mode     tlsbypass.Mode
	addrs    []netip.AddrPort // CONNECT: resolved and checked before answering
}

// targetString names the request's target: normalised if it parsed, as
// sent otherwise.
func (st *reqState) targetString() string {
	if st.target.Host != "" {
		return st.target.HostPort()
	}
	return st.raw
}

type stateKey struct{}

func stateFrom(ctx context.Context) *reqState {
	st, _ := ctx.Value(stateKey{}).(*reqState)
	return st
}

// ServeHTTP is the gateway's front door: client networks, target, allowlist,
// authentication and (for CONNECT) the destination's addresses are all
// decided here, so every refusal is an ordinary HTTP response (a 407 to a
// CONNECT can be retried on the same connection). Only allowed requests
// reach goproxy.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	st := &reqState{policy: s.opts.Policy(), raw: r.RequestURI}
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		st.client = ap.Addr().Unmap()
	}
	if !s.clientAllowed(st.client) {
		s.refuse(w, r, st, ErrClientNotAllowed)
		return
	}
	if r.Method != http.MethodConnect && !r.URL.IsAbs() {
		s.serveSelf(w, r)
		return
	}
	if err := s.decide(r, st); err != nil {
		s.refuse(w, r, st, err)
		return
	}
	if answered, err := maxForwards(r); err != nil {
		s.refuse(w, r, st, err)
		return
	} else if answered {
		s.logDecision(r, st, nil)
		s.observeDecision(protocolOf(r), st, nil)
		answerOptions(w.Header())
		w.WriteHeader(http.StatusOK)
		return
	}
	if r.Method == http.MethodConnect {
		ctx, cancel := context.WithTimeout(r.Context(), s.opts.DialTimeout)
		addrs, err := s.opts.Dialer.Lookup(ctx, st.target.Host, st.target.Port)
		cancel()
		if err != nil {
			s.refuse(w, r, st, err)
			return
		}
		st.addrs = addrs
	}
	s.logDecision(r, st, nil)
	s.observeDecision(protocolOf(r), st, nil)
	if r.Method == http.MethodConnect && st.mode != tlsbypass.Inspect {
		s.takeOver(w, r, st)
		return
	}
	keeper := &hijackKeeper{ResponseWriter: w, connDone: s.opts.ConnDone, writeTimeout: cmp.Or(s.opts.WriteTimeout, s.opts.Tunnel.IdleTimeout),
		closeAfter: mustClose(r)}
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = &bodyReader{ReadCloser: r.Body}
	}
	if st.mode == tlsbypass.Inspect {
		keeper.onHijack = s.observeInspectedTunnel(r, st)
	}
	s.gp.ServeHTTP(keeper, r.WithContext(context.WithValue(r.Context(), stateKey{}, st)))
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
	if s.opts.Auth != nil && (!st.decision.Anonymous || st.decision.Unlisted || s.opts.NoAnonymous) {
		// System-context Defender traffic (anonymous rows) is never
		// challenged, with or without credentials: "make sure anonymous
		// traffic is permitted in your proxy or firewall for the
		// previously listed URLs" (Configure device proxy and Internet
		// connectivity settings).
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

// answerOptions sets the headers of the gateway's own answer to an OPTIONS
// whose Max-Forwards reached 0: what it would forward, and why it answered.
func answerOptions(h http.Header) {
	h.Set("Allow", allowedMethods)
	h.Set(ReasonHeader, ReasonMaxForwards)
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

// refuse answers a request the gateway will not serve, and logs, counts and
// records it.
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, st *reqState, err error) {
	target := st.targetString()
	f := newRefusal(err, target, &st.decision, st.policy)
	s.logDecision(r, st, err)
	s.observeDecision(protocolOf(r), st, err)
	s.eventRefused(r, st, err, f.status)
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set(ReasonHeader, f.reason)
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

func (s *Server) logDecision(r *http.Request, st *reqState, err error, extra ...slog.Attr) {
	d := &st.decision
	level := slog.LevelInfo
	if d.Audited {
		level = slog.LevelWarn
	}
	if !s.log.Enabled(context.Background(), level) {
		return // build no attributes for a line nobody keeps
	}
	target := st.targetString()
	attrs := []slog.Attr{
		slog.String("client", r.RemoteAddr),
		slog.String("method", r.Method),
		slog.String("target", target),
	}
	decision, reason := verdict(st, err)
	if err == nil && !d.Audited {
		reason = string(d.Reason) // allowed, or unlisted: allowed to an authenticated user
	}
	attrs = append(attrs, slog.String("decision", decision), slog.String("reason", reason))
	if err != nil && failure(reason) {
		attrs = append(attrs, slog.String("outcome", telemetry.OutcomeFailed))
	}
	if d.Rule != nil {
		attrs = append(attrs, slog.String("rule", d.RuleID()), slog.String("service", d.Service()),
			slog.String("geography", d.Geography()))
	}
	if st.user != "" {
		attrs = append(attrs, slog.String("user", st.user))
	}
	if err == nil && r.Method == http.MethodConnect {
		attrs = append(attrs, slog.String("tls", st.mode.String()))
	}
	if d.PathUnchecked {
		attrs = append(attrs, slog.Bool("path_unchecked", true))
	}
	attrs = append(attrs, extra...)
	s.log.LogAttrs(context.Background(), level, "decision", attrs...)
}
