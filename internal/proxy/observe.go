package proxy

import (
	"errors"
	"io"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/defendergw/gateway/internal/auth"
	"github.com/defendergw/gateway/internal/telemetry"
	"github.com/defendergw/gateway/internal/tlsbypass"
)

// Protocols as metrics and events name them.
const (
	protoConnect   = "connect"
	protoHTTP      = "http"
	protoInspected = "inspected"
)

func protocolOf(r *http.Request) string {
	if r.Method == http.MethodConnect {
		return protoConnect
	}
	return protoHTTP
}

// observeDecision counts a decision (err non-nil: refused).
func (s *Server) observeDecision(protocol string, st *reqState, err error) {
	m := s.opts.Metrics
	if m == nil {
		return
	}
	d := &st.decision
	decision, reason := verdict(st, err)
	if err == nil {
		reason = string(d.Reason)
	}
	geo := ""
	if d.Rule != nil {
		geo = d.Rule.Geography.String()
	}
	m.Decision(protocol, decision, reason, d.Service(), geo)
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

// verdict is what the logs, metrics and events say of a request: the
// decision (allow, deny, audit) and, when it did not succeed, the reason.
// A request the policy allowed whose destination could not be resolved or
// reached was not denied: its decision stays allow (or audit), with the
// failure's reason.
func verdict(st *reqState, err error) (decision, reason string) {
	decision = telemetry.DecisionAllow
	if st.decision.Audited {
		decision, reason = telemetry.DecisionAudit, string(st.decision.Reason)
	}
	if err == nil {
		return decision, reason
	}
	_, reason = classify(err)
	if !failure(reason) {
		decision = telemetry.DecisionDeny
	}
	return decision, reason
}

// failure reports a reason that ends an allowed request without refusing
// it: the destination could not be resolved or reached.
func failure(reason string) bool {
	switch reason {
	case ReasonDNSFailure, ReasonUpstreamUnreachable, ReasonUpstreamTimeout:
		return true
	}
	return false
}

// newEvent starts a connection event for a request and its decision.
func newEvent(action string, r *http.Request, st *reqState) telemetry.Event {
	e := telemetry.Event{ActionType: action, Protocol: "Tcp", Method: r.Method}
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		e.LocalIP, e.LocalPort = ap.Addr().String(), int(ap.Port())
	}
	if st.target.Host != "" {
		e.RemoteURL, e.RemotePort = st.target.Host, int(st.target.Port)
		if r.Method != http.MethodConnect && r.URL != nil {
			e.RemoteURL = r.URL.String()
		}
	} else {
		e.RemoteURL = st.raw
	}
	d := &st.decision
	e.Fields.Decision, e.Fields.Reason = verdict(st, nil)
	e.Fields.Service, e.Fields.Rule, e.Fields.User = d.Service(), d.RuleID(), st.user
	if d.Rule != nil {
		e.Fields.Geography = d.Rule.Geography.String()
	}
	if st.target.HasPath {
		e.Fields.Path = st.target.Path
	}
	return e
}

// addrOnly returns the address part of "ip:port" ("" if it is not one).
func addrOnly(s string) string {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().String()
	}
	return ""
}

// logEvent emits an event, if an event log is configured.
func (s *Server) logEvent(e telemetry.Event) {
	if s.opts.Events != nil {
		s.opts.Events.Log(e)
	}
}

// eventRefused records a request refused at the front door or after the
// 200 of a verified tunnel: blocked by policy, or failed to connect.
func (s *Server) eventRefused(r *http.Request, st *reqState, err error, status int) {
	e := newEvent(telemetry.ConnectionBlocked, r, st)
	e.Fields.Outcome = telemetry.OutcomeRefused
	e.Fields.Decision, e.Fields.Reason = verdict(st, err)
	if failure(e.Fields.Reason) {
		e.ActionType, e.Fields.Outcome = telemetry.ConnectionFailed, telemetry.OutcomeFailed
	}
	e.Status = status
	s.logEvent(e)
}

// successAction is ConnectionAudited for what enforce mode would refuse.
func successAction(st *reqState) string {
	if st.decision.Audited {
		return telemetry.ConnectionAudited
	}
	return telemetry.ConnectionSuccess
}

// countingBody counts the bytes of a forwarded response body and records
// the connection event when goproxy closes it.
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

// observeForwarded wraps a forwarded response so that its event carries the
// body size and the whole duration.
func (s *Server) observeForwarded(r *http.Request, st *reqState, resp *http.Response, remote string, start time.Time) {
	if s.opts.Metrics != nil {
		s.opts.Metrics.Forwarded(resp.StatusCode)
	}
	if s.opts.Events == nil || resp.Body == nil {
		return
	}
	up := r.ContentLength
	if up < 0 {
		up = 0
	}
	resp.Body = &countingBody{ReadCloser: resp.Body, close: func(n int64) {
		e := newEvent(successAction(st), r, st)
		e.Fields.Outcome = telemetry.OutcomeCompleted
		e.Status = resp.StatusCode
		e.RemoteIP = remote
		e.Fields.BytesUp, e.Fields.BytesDown, e.Fields.Duration = up, n, time.Since(start)
		if st.mode == tlsbypass.Inspect && r.URL.Scheme == "https" {
			e.Fields.TLS = tlsbypass.Inspect.String()
		}
		s.logEvent(e)
	}}
}

// observeInspectedTunnel counts an inspected tunnel, which goproxy carries,
// from hijack to close.
func (s *Server) observeInspectedTunnel(r *http.Request, st *reqState) func(*hijackedConn) {
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
