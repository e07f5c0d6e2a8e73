package proxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"strings"
	"time"

	"github.com/elazarl/goproxy"

	"github.com/defendergw/gateway/internal/allowlist"
	"github.com/defendergw/gateway/internal/reason"
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
// or trailer field ... listed in the Connection header field"), and returns
// the names Connection listed, for the message's trailers.
func removeHopByHop(h http.Header) (connNamed []string) {
	for _, v := range h.Values("Connection") {
		for _, name := range strings.Split(v, ",") {
			if name = strings.TrimSpace(name); name != "" {
				connNamed = append(connNamed, name)
			}
		}
	}
	deleteFields(h, connNamed)
	return connNamed
}

// deleteFields removes the hop-by-hop fields and those in named from h.
func deleteFields(h http.Header, named []string) {
	for _, name := range named {
		h.Del(name)
	}
	for _, name := range hopByHop {
		h.Del(name)
	}
}

// filterTrailers removes from trailers what removeHopByHop removes from
// headers (RFC 9110 §7.6.1 covers "any header or trailer field"), and
// X-Gateway-Reason from upstream responses (reason is true).
func filterTrailers(t http.Header, connNamed []string, reason bool) {
	if len(t) == 0 {
		return
	}
	deleteFields(t, connNamed)
	if reason {
		t.Del(ReasonHeader)
	}
}

// trailerFilter filters a message's trailers when its body ends: net/http
// fills the Trailer map, announced fields or not, as the last read returns
// io.EOF, before whoever copies the body writes the trailers out.
type trailerFilter struct {
	io.ReadCloser
	trailer   *http.Header
	connNamed []string
	reason    bool
}

func (f *trailerFilter) Read(p []byte) (int, error) {
	n, err := f.ReadCloser.Read(p)
	if err == io.EOF {
		filterTrailers(*f.trailer, f.connNamed, f.reason)
	}
	return n, err
}

// chunked reports a chunked message: the only HTTP/1.1 framing that
// carries trailers (RFC 9112 §7.1.2).
func chunked(te []string) bool {
	for _, c := range te {
		if strings.EqualFold(c, "chunked") {
			return true
		}
	}
	return false
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
		st = &reqState{raw: r.URL.Host}
		st.fail(err)
		return r, newRefusal(st).response(r)
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
	if connNamed := removeHopByHop(r.Header); r.Trailer != nil {
		// The client's own trailers go on filtered like its headers.
		filterTrailers(r.Trailer, connNamed, false)
		if r.Body != nil && r.Body != http.NoBody {
			r.Body = &trailerFilter{ReadCloser: r.Body, trailer: &r.Trailer, connNamed: connNamed}
		}
	}
	s.addVia(r.Header, r.ProtoMajor, r.ProtoMinor)
	if s.recording() {
		st.url = r.URL.String() // as forwarded
	}
	ctx.UserData = st
	ctx.RoundTripper = goproxy.RoundTripperFunc(s.roundTrip)
	return r, nil
}

// decideInner decides a request inside an inspected tunnel. Only the
// CONNECT's own origin may be addressed, only over TLS, and each path is
// decided on its own, in a record of its own.
func (s *Server) decideInner(r *http.Request, tunnel *reqState) (*reqState, *http.Response) {
	st := &reqState{proto: protoInspected, method: r.Method, clientAP: tunnel.clientAP, client: tunnel.client,
		policy: tunnel.policy, raw: r.URL.Host, user: tunnel.user, mode: tunnel.mode}
	if s.opts.DialTimeout > 0 {
		st.deadline = time.Now().Add(s.opts.DialTimeout)
	}
	t, err := allowlist.ParseURL(r.URL)
	if err == nil && (!strings.EqualFold(r.URL.Scheme, "https") || t.Host != tunnel.target.Host || t.Port != tunnel.target.Port) {
		err = fmt.Errorf("request for %s inside a tunnel to %s: %w", r.URL.Host, tunnel.target.HostPort(), allowlist.ErrBadTarget)
	}
	answered := false
	if err == nil {
		st.target = t
		st.decision = st.policy.Decide(t)
		switch {
		case r.Method == http.MethodTrace:
			err = errMethodNotAllowed
		case !st.decision.Allowed:
			err = st.decision.Err
		case s.opts.Auth != nil && (!st.decision.Anonymous || st.decision.Unlisted || s.opts.AuthenticateAnonymous) && st.user == "":
			err = errAuthInsideTunnel
		case wantsWebSocket(r.Header):
			err = errUpgradeRefused
		default:
			answered, err = maxForwards(r)
		}
	}
	if err != nil {
		st.url = r.URL.String()
		s.refused(st, err)
		return nil, newRefusal(st).response(r)
	}
	if answered {
		st.reason, st.status, st.end, st.url = reason.MaxForwards, http.StatusOK, endCompleted, r.URL.String()
		s.decided(st)
		s.record(st)
		resp := &http.Response{StatusCode: http.StatusOK, Status: "200 OK", Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			Request: r, Header: make(http.Header, 4), Body: http.NoBody}
		answerOptions(resp.Header)
		return nil, resp
	}
	s.decided(st)
	return st, nil
}

// roundTrip forwards a request through the checked dialer and turns failures
// into refusals with a reason, so goproxy never answers with its own 500.
func (s *Server) roundTrip(r *http.Request, ctx *goproxy.ProxyCtx) (*http.Response, error) {
	st, _ := ctx.UserData.(*reqState)
	if st == nil {
		return nil, errors.New("proxy: request reached the round trip undecided")
	}
	start := time.Now()
	if s.recording() {
		// Only the record needs the address actually dialed.
		trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
			st.remote = remoteAddr(info.Conn)
		}}
		r = r.WithContext(httptrace.WithClientTrace(r.Context(), trace))
	}
	var resp *http.Response
	var err error
	switch {
	case s.viaParent(st.target.Host) && r.URL.Scheme == "https":
		resp, err = s.ptls.RoundTrip(r) // an inspected tunnel's request
	case s.viaParent(st.target.Host):
		resp, err = s.parentRoundTrip(r, st)
	case upstream.Handles(r):
		resp, err = s.h1.RoundTripBy(r, st.deadline)
	default:
		resp, err = s.tr.RoundTrip(r)
	}
	if err == nil && resp.StatusCode == http.StatusSwitchingProtocols {
		// Upgrade is hop-by-hop and never forwarded, so a 101 answers a
		// switch nobody asked for, and the connection is out of step:
		// answer as the gateway's own client does.
		resp.Body.Close()
		resp, err = nil, fmt.Errorf("%s: %w", r.URL.Host, upstream.ErrUnexpected101)
	}
	var br *bodyReader
	if tf, ok := r.Body.(*trailerFilter); ok {
		br, _ = tf.ReadCloser.(*bodyReader)
	} else {
		br, _ = r.Body.(*bodyReader)
	}
	if br != nil && err != nil && br.err != nil {
		// The client's body was malformed, not the upstream unreachable.
		err = fmt.Errorf("%w: %w", errBadBody, br.err)
	}
	if err != nil {
		st.fail(err)
		s.record(st)
		return newRefusal(st).response(r), nil
	}
	s.forwarded(r, st, resp, start)
	connNamed := removeHopByHop(resp.Header)
	// Only the gateway speaks with X-Gateway-Reason; an upstream must not be
	// able to make its answer look like a gateway refusal, in a header or in
	// a trailer. The announced trailers are filtered now (goproxy announces
	// them before the body), the values at the body's end.
	resp.Header.Del(ReasonHeader)
	filterTrailers(resp.Trailer, connNamed, true)
	if chunked(resp.TransferEncoding) && resp.Body != nil && resp.Body != http.NoBody {
		resp.Body = &trailerFilter{ReadCloser: resp.Body, trailer: &resp.Trailer, connNamed: connNamed, reason: true}
	}
	s.addVia(resp.Header, resp.ProtoMajor, resp.ProtoMinor)
	return resp, nil
}

// parentRoundTrip checks the destination's addresses as a direct request
// would, then sends the request through a parent (which is asked for the
// name: absolute form cannot name an address without changing the Host the
// origin sees).
func (s *Server) parentRoundTrip(r *http.Request, st *reqState) (*http.Response, error) {
	ctx, cancel := withDeadline(r.Context(), st.deadline)
	_, err := s.opts.Dialer.Lookup(ctx, st.target.Host, st.target.Port)
	cancel()
	if err != nil {
		return nil, err
	}
	return s.opts.Parent.RoundTrip(r)
}
