package proxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/defendergw/gateway/internal/allowlist"
	"github.com/defendergw/gateway/internal/auth"
	"github.com/defendergw/gateway/internal/reason"
	"github.com/defendergw/gateway/internal/telemetry"
	"github.com/defendergw/gateway/internal/tlsbypass"
)

// Protocols as metrics name them.
const (
	protoConnect   = "connect"
	protoHTTP      = "http"
	protoInspected = "inspected"
)

// How a request ended, when it did not become a tunnel (a tunnel ends with
// the relay's End: closed, idle-timeout, half-close-timeout, error).
const (
	endRefused   = telemetry.OutcomeRefused
	endFailed    = telemetry.OutcomeFailed
	endCompleted = telemetry.OutcomeCompleted
)

// reqState is the one record of a request (or of the tunnel it became):
// what the front door decided, and how it ended. It is built once, at the
// front door, passed along as an argument, completed as the request goes,
// and read by every report: the decision metric when the decision is made,
// and at the end the access-log event (both formats, and the status page,
// through the event sinks), the tunnel and forwarding metrics and the
// debug log line. Nothing re-derives an outcome from an error: classify
// runs once, in fail.
type reqState struct {
	// What the front door decided.
	proto string // protoConnect, protoHTTP, protoInspected or protoTransparent
	// intercepted marks a connection the transparent listener took: no
	// proxy authentication can be asked of it.
	intercepted bool
	method      string         // the request method
	clientAP    netip.AddrPort // the client's address and port
	client      netip.Addr     // clientAP's address, unmapped
	policy      *allowlist.Policy
	raw         string // request target as sent
	target      allowlist.Target
	decision    allowlist.Decision
	user        string
	mode        tlsbypass.Mode
	addrs       []netip.AddrPort // CONNECT: resolved and checked before answering
	// deadline bounds the gateway's own work for this request: resolving
	// and connecting (and, for a verified tunnel, the wait for its
	// ClientHello in between). It is computed once, at the front door.
	deadline time.Time

	// How it ended.
	reason reason.Code // why it was refused or failed; None if it was not
	status int         // the status answered to the client (200 for a tunnel)
	err    error       // the refusal or failure, for the debug log
	end    string      // endRefused, endFailed, endCompleted, or the relay's End
	url    string      // plain HTTP: the URL as forwarded (events only)
	remote netip.Addr  // the upstream address dialed (invalid if none)
	sni    string
	up     int64 // bytes client to upstream
	down   int64 // bytes upstream to client
	dur    time.Duration
}

// targetString names the request's target: normalised if it parsed, as
// sent otherwise.
func (st *reqState) targetString() string {
	if st.target.Host != "" {
		return st.target.HostPort()
	}
	return st.raw
}

// fail records err as the request's end: its reason, status and end, by
// classify (the only place an error becomes a reason).
func (st *reqState) fail(err error) {
	st.err = err
	st.reason, st.status = classify(err)
	st.end = endRefused
	if st.reason.Failure() {
		st.end = endFailed
	}
}

// verdict is the decision that logs, metrics and events name: allow, deny,
// or audit (allowed only by audit mode). A request the policy allowed whose
// destination could not be resolved or reached was not denied: its
// decision stays allow (or audit).
func (st *reqState) verdict() string {
	switch {
	case st.reason.Refusal():
		return telemetry.DecisionDeny
	case st.decision.Audited:
		return telemetry.DecisionAudit
	}
	return telemetry.DecisionAllow
}

// eventReason is the event's reason: why it was refused or failed, or,
// audited, why enforce mode would refuse it; empty for a clean success.
func (st *reqState) eventReason() string {
	switch {
	case st.reason.Refusal() || st.reason.Failure():
		return st.reason.String()
	case st.decision.Audited:
		return st.decision.Reason.String()
	}
	return st.reason.String() // max-forwards, or ""
}

// metricReason labels gateway_decisions_total: a refusal or failure's
// reason, else the decision's own (allowed, unlisted, or what audit mode
// let through).
func (st *reqState) metricReason() string {
	if st.reason.Refusal() || st.reason.Failure() {
		return st.reason.Label()
	}
	return st.decision.Reason.Label()
}

// actionType is the event's ActionType.
func (st *reqState) actionType() string {
	if st.reason.Kind() == reason.Success && st.decision.Audited {
		return telemetry.ConnectionAudited
	}
	return st.reason.ActionType()
}

// decided counts the request's decision, once, when it is made.
func (s *Server) decided(st *reqState) {
	m := s.opts.Metrics
	if m == nil {
		return
	}
	d := &st.decision
	m.Decision(st.proto, st.verdict(), st.metricReason(), d.Service(), d.Geography())
}

// refused reports a request that ended with err before anything was
// relayed: it counts the decision and records the outcome.
func (s *Server) refused(st *reqState, err error) {
	st.fail(err)
	s.decided(st)
	s.record(st)
}

// record reports how the request ended: the access-log event (read by
// every event sink) and, at debug level, the same fields in the
// operational log. It is called once per request or tunnel.
func (s *Server) record(st *reqState) {
	if !s.recording() {
		return
	}
	e := st.event()
	if s.opts.Events != nil {
		s.opts.Events.Log(e)
	}
	if s.log.Enabled(context.Background(), slog.LevelDebug) {
		s.log.LogAttrs(context.Background(), slog.LevelDebug, "outcome", debugAttrs(&e, st.clientAP, st.err)...)
	}
}

// recording reports whether anyone reads the records: an event sink, or
// the operational log at debug level.
func (s *Server) recording() bool {
	return s.opts.Events != nil || s.log.Enabled(context.Background(), slog.LevelDebug)
}

// event builds the access-log event from the record.
func (st *reqState) event() telemetry.Event {
	e := telemetry.Event{ActionType: st.actionType(), Protocol: "Tcp", Method: st.method, Status: st.status}
	if st.clientAP.IsValid() {
		e.LocalIP, e.LocalPort = st.clientAP.Addr().String(), int(st.clientAP.Port())
	}
	switch {
	case st.target.Host == "":
		e.RemoteURL = st.raw
	case st.url != "":
		e.RemoteURL, e.RemotePort = st.url, int(st.target.Port)
	default:
		e.RemoteURL, e.RemotePort = st.target.Host, int(st.target.Port)
	}
	if st.remote.IsValid() {
		e.RemoteIP = st.remote.String()
	}
	d := &st.decision
	f := &e.Fields
	f.Decision, f.Reason, f.Outcome = st.verdict(), st.eventReason(), st.end
	f.Service, f.Rule, f.User = d.Service(), d.RuleID(), st.user
	if d.Rule != nil {
		f.Geography = d.Rule.Geography.String()
	}
	if st.target.HasPath {
		f.Path = st.target.Path
	}
	f.PathUnchecked = d.PathUnchecked
	if st.proto == protoTransparent {
		f.Protocol = protoTransparent
	}
	f.SNI, f.BytesUp, f.BytesDown, f.Duration = st.sni, st.up, st.down, st.dur
	if st.method == http.MethodConnect && st.status == http.StatusOK {
		f.TLS = st.mode.String() // an opened (or verified-then-refused) tunnel
	} else if st.proto == protoInspected && st.end == endCompleted {
		f.TLS = tlsbypass.Inspect.String()
	}
	return e
}

// debugAttrs is the debug line of an outcome: the event's fields, and the
// error that ended it.
func debugAttrs(e *telemetry.Event, client netip.AddrPort, err error) []slog.Attr {
	f := &e.Fields
	attrs := make([]slog.Attr, 0, 20)
	attrs = append(attrs, slog.String("action", e.ActionType), slog.String("client", client.String()),
		slog.String("method", e.Method), slog.String("target", e.RemoteURL), slog.Int("status", e.Status),
		slog.String("decision", f.Decision))
	if f.Reason != "" {
		attrs = append(attrs, slog.String("reason", f.Reason))
	}
	attrs = append(attrs, slog.String("outcome", f.Outcome))
	for _, kv := range [...][2]string{{"rule", f.Rule}, {"service", f.Service},
		{"geography", f.Geography}, {"user", f.User}, {"tls", f.TLS}, {"sni", f.SNI}, {"path", f.Path},
		{"remote_ip", e.RemoteIP}} {
		if kv[1] != "" {
			attrs = append(attrs, slog.String(kv[0], kv[1]))
		}
	}
	if f.PathUnchecked {
		attrs = append(attrs, slog.Bool("path_unchecked", true))
	}
	if f.BytesUp != 0 || f.BytesDown != 0 || f.Duration != 0 {
		attrs = append(attrs, slog.Int64("bytes_up", f.BytesUp), slog.Int64("bytes_down", f.BytesDown),
			slog.Float64("duration_s", f.Duration.Seconds()))
	}
	if err != nil {
		attrs = append(attrs, slog.String("error", err.Error()))
	}
	return attrs
}

// observeAuth counts an authentication outcome.
func (s *Server) observeAuth(err error) {
	m := s.opts.Metrics
	if m == nil {
		return
	}
	switch {
	case err == nil:
		m.Auth("success")
	case errors.Is(err, auth.ErrNoCredentials):
		m.Auth("no_credentials")
	case errors.Is(err, auth.ErrRateLimited):
		m.Auth("rate_limited")
	default:
		m.Auth("failure")
	}
}

// remoteAddr is the address c is connected to (invalid if c is not TCP).
func remoteAddr(c net.Conn) netip.Addr {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return a.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

// countingBody counts the bytes of a forwarded response body and records
// the request when goproxy closes it.
type countingBody struct {
	io.ReadCloser
	n     atomic.Int64
	once  sync.Once
	close func(n int64)
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

func (b *countingBody) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(func() { b.close(b.n.Load()) })
	return err
}

// forwarded counts a relayed response and records the request when its
// body ends, with the body size and the whole duration.
func (s *Server) forwarded(r *http.Request, st *reqState, resp *http.Response, start time.Time) {
	st.status, st.end = resp.StatusCode, endCompleted
	if s.opts.Metrics != nil {
		s.opts.Metrics.Forwarded(resp.StatusCode)
	}
	if resp.Body == nil || !s.recording() {
		s.record(st)
		return
	}
	st.up = max(r.ContentLength, 0)
	resp.Body = &countingBody{ReadCloser: resp.Body, close: func(n int64) {
		st.down, st.dur = n, time.Since(start)
		s.record(st)
	}}
}

// observeInspectedTunnel counts an inspected tunnel, which goproxy carries,
// from hijack to close (its inner requests are recorded one by one).
func (s *Server) observeInspectedTunnel(st *reqState) func(*hijackedConn) {
	return func(hc *hijackedConn) {
		start := time.Now()
		if m := s.opts.Metrics; m != nil {
			m.TunnelOpened(protoInspected)
		}
		hc.onClose = func() {
			if m := s.opts.Metrics; m != nil {
				m.TunnelClosed(protoInspected, st.decision.Service(), "closed", 0, 0, time.Since(start))
			}
		}
	}
}
