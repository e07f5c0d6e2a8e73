package proxy

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"strings"
	"time"

	"github.com/elazarl/goproxy"

	"github.com/defendergw/gateway/internal/allowlist"
	"github.com/defendergw/gateway/internal/tlsbypass"
	"github.com/defendergw/gateway/internal/upstream"
)

// hopByHop are the header fields a proxy must not forward (RFC 9110 §7.6.1),
// plus the proxy-authentication pair, which is addressed to this hop only
// (RFC 9110 §11.7).
var hopByHop = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
	"Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// removeHopByHop deletes hop-by-hop fields, including every field named in
// Connection (RFC 9110 §7.6.1: "a proxy or gateway MUST ... remove any header
// or trailer field ... listed in the Connection header field").
func removeHopByHop(h http.Header) {
	for _, v := range h.Values("Connection") {
		for _, name := range strings.Split(v, ",") {
			if name = strings.TrimSpace(name); name != "" {
				h.Del(name)
			}
		}
	}
	for _, name := range hopByHop {
		h.Del(name)
	}
}

// addVia appends this hop to Via (RFC 9110 §7.6.3).
func (s *Server) addVia(h http.Header, major, minor int) {
	v := strconv.Itoa(major) + "." + strconv.Itoa(minor) + " " + s.opts.Via
	if prior := h.Get("Via"); prior != "" {
		v = prior + ", " + v
	}
	h.Set("Via", v)
}

// handleRequest forwards an absolute-form request that ServeHTTP allowed, or
// decides a request inside an inspected tunnel with its path.
func (s *Server) handleRequest(r *http.Request, ctx *goproxy.ProxyCtx) (*http.Request, *http.Response) {
	st := stateFrom(r.Context())
	if tunnel, ok := ctx.UserData.(*reqState); ok && tunnel != nil && tunnel.mode == tlsbypass.Inspect {
		var resp *http.Response
		if st, resp = s.decideInner(r, tunnel); resp != nil {
			return r, resp
		}
	}
	if st == nil {
		err := fmt.Errorf("request reached the forwarder undecided: %w", allowlist.ErrBadTarget)
		return r, newRefusal(err, r.URL.Host, nil, nil).response(r)
	}
	// Forward to exactly the normalised name that was decided: the
	// absolute URI wins over any Host header (RFC 9112 §3.2.2).
	t := st.target
	host := t.Host
	if t.IP.Is6() {
		host = "[" + host + "]"
	}
	defPort := uint16(80)
	if strings.EqualFold(r.URL.Scheme, "https") {
		defPort = 443
	}
	if t.Port != defPort {
		host = net.JoinHostPort(t.Host, strconv.Itoa(int(t.Port)))
	}
	r.URL.Host, r.Host = host, host
	removeHopByHop(r.Header)
	s.addVia(r.Header, r.ProtoMajor, r.ProtoMinor)
	ctx.UserData = st
	ctx.RoundTripper = goproxy.RoundTripperFunc(s.roundTrip)
	return r, nil
}

// decideInner decides a request inside an inspected tunnel. Only the
// CONNECT's own origin may be addressed, only over TLS, and each path is
// decided on its own.
func (s *Server) decideInner(r *http.Request, tunnel *reqState) (*reqState, *http.Response) {
	st := &reqState{client: tunnel.client, policy: tunnel.policy, raw: r.URL.Host, user: tunnel.user, mode: tunnel.mode}
	t, err := allowlist.ParseURL(r.URL)
	if err == nil && (!strings.EqualFold(r.URL.Scheme, "https") || t.Host != tunnel.target.Host || t.Port != tunnel.target.Port) {
		err = fmt.Errorf("request for %s inside a tunnel to %s: %w", r.URL.Host, tunnel.target.HostPort(), allowlist.ErrBadTarget)
	}
	if err == nil {
		st.target = t
		st.decision = st.policy.Decide(t)
		switch {
		case !st.decision.Allowed:
			err = st.decision.Err
		case s.opts.Auth != nil && (!st.decision.Anonymous || st.decision.Unlisted || s.opts.NoAnonymous) && st.user == "":
			err = errAuthInsideTunnel
		}
	}
	extra := []slog.Attr{slog.String("tls", tlsbypass.Inspect.String()), slog.String("path", t.Path)}
	s.logDecision(r, st, err, extra...)
	s.observeDecision(protoInspected, st, err)
	if err != nil {
		f := newRefusal(err, st.raw, &st.decision, st.policy)
		s.eventRefused(r, st, err, f.status)
		return nil, f.response(r)
	}
	return st, nil
}

// roundTrip forwards a request through the checked dialer and turns failures
// into refusals with a reason, so goproxy never answers with its own 500.
func (s *Server) roundTrip(r *http.Request, ctx *goproxy.ProxyCtx) (*http.Response, error) {
	st, _ := ctx.UserData.(*reqState)
	start := time.Now()
	var remote string
	if s.opts.Events != nil {
		// Only the connection event needs the address actually dialed.
		trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
			remote = addrOnly(info.Conn.RemoteAddr().String())
		}}
		r = r.WithContext(httptrace.WithClientTrace(r.Context(), trace))
	}
	var resp *http.Response
	var err error
	if upstream.Handles(r) {
		resp, err = s.h1.RoundTrip(r)
	} else {
		resp, err = s.tr.RoundTrip(r)
	}
	if br, ok := r.Body.(*bodyReader); ok && err != nil && br.err != nil {
		// The client's body was malformed, not the upstream unreachable.
		err = fmt.Errorf("%w: %w", errBadBody, br.err)
	}
	if err != nil {
		target := r.URL.Host
		var d *allowlist.Decision
		var p *allowlist.Policy
		if st != nil {
			target, d, p = st.target.HostPort(), &st.decision, st.policy
		}
		s.log.Warn("forward failed", "client", clientAddr(r), "target", target, "error", err.Error())
		f := newRefusal(err, target, d, p)
		if st != nil {
			s.eventRefused(r, st, err, f.status)
		}
		return f.response(r), nil
	}
	if st != nil {
		s.observeForwarded(r, st, resp, remote, start)
	}
	removeHopByHop(resp.Header)
	// Only the gateway speaks with X-Gateway-Reason; an upstream must not be
	// able to make its answer look like a gateway refusal.
	resp.Header.Del(ReasonHeader)
	s.addVia(resp.Header, resp.ProtoMajor, resp.ProtoMinor)
	return resp, nil
}
