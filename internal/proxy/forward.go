package proxy

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"

	"github.com/elazarl/goproxy"

	"github.com/defendergw/gateway/internal/allowlist"
	"github.com/defendergw/gateway/internal/tlsbypass"
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

// requestState travels with a forwarded request through goproxy.
type requestState struct {
	target   allowlist.Target
	decision allowlist.Decision
	policy   *allowlist.Policy
}

// handleRequest decides an absolute-form request, or a request inside an
// inspected tunnel, and prepares it for forwarding, or answers it with a
// refusal.
func (s *Server) handleRequest(r *http.Request, ctx *goproxy.ProxyCtx) (*http.Request, *http.Response) {
	tunnel, inspected := ctx.UserData.(*connectState)
	policy := s.opts.Policy()
	tlsMode := ""
	if inspected {
		policy, tlsMode = tunnel.policy, tlsbypass.Inspect.String()
	}
	t, err := allowlist.ParseURL(r.URL)
	switch {
	case err != nil:
	case !inspected && strings.EqualFold(r.URL.Scheme, "https"):
		// https:// in absolute form would make the gateway originate TLS
		// on the client's behalf; clients must use CONNECT.
		err = fmt.Errorf("absolute-form https: use CONNECT: %w", allowlist.ErrBadTarget)
	case inspected && (!strings.EqualFold(r.URL.Scheme, "https") || t.Host != tunnel.target.Host || t.Port != tunnel.target.Port):
		// Inside a tunnel only the CONNECT's own origin may be addressed,
		// and only over TLS.
		err = fmt.Errorf("request for %s inside a tunnel to %s: %w", r.URL.Host, tunnel.target.HostPort(), allowlist.ErrBadTarget)
	}
	if err != nil {
		s.logDecision(r, r.URL.Host, nil, err, tlsMode)
		return r, newRefusal(err, r.URL.Host, nil, policy).response(r)
	}
	d := policy.Decide(t)
	var extra []slog.Attr
	if inspected {
		extra = []slog.Attr{slog.String("path", t.Path)}
	}
	s.logDecision(r, t.HostPort(), &d, d.Err, tlsMode, extra...)
	if !d.Allowed {
		return r, newRefusal(d.Err, t.HostPort(), &d, policy).response(r)
	}
	// Forward to exactly the normalised name that was decided: the
	// absolute URI wins over any Host header (RFC 9112 §3.2.2).
	host := t.Host
	if t.IP.Is6() {
		host = "[" + host + "]"
	}
	if (t.Port != 80 || inspected) && (t.Port != 443 || !inspected) {
		host = net.JoinHostPort(t.Host, strconv.Itoa(int(t.Port)))
	}
	r.URL.Host, r.Host = host, host
	removeHopByHop(r.Header)
	s.addVia(r.Header, r.ProtoMajor, r.ProtoMinor)
	ctx.UserData = &requestState{target: t, decision: d, policy: policy}
	ctx.RoundTripper = goproxy.RoundTripperFunc(s.roundTrip)
	return r, nil
}

// roundTrip forwards a request through the checked dialer and turns failures
// into refusals with a reason, so goproxy never answers with its own 500.
func (s *Server) roundTrip(r *http.Request, ctx *goproxy.ProxyCtx) (*http.Response, error) {
	resp, err := s.tr.RoundTrip(r)
	if err != nil {
		target := r.URL.Host
		var d *allowlist.Decision
		var p *allowlist.Policy
		if st, ok := ctx.UserData.(*requestState); ok {
			target, d, p = st.target.HostPort(), &st.decision, st.policy
		}
		s.log.Warn("forward failed", "client", clientAddr(r), "target", target, "error", err.Error())
		return newRefusal(err, target, d, p).response(r), nil
	}
	removeHopByHop(resp.Header)
	// Only the gateway speaks with X-Gateway-Reason; an upstream must not be
	// able to make its answer look like a gateway refusal.
	resp.Header.Del(ReasonHeader)
	s.addVia(resp.Header, resp.ProtoMajor, resp.ProtoMinor)
	return resp, nil
}
