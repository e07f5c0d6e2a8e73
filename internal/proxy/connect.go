package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/elazarl/goproxy"

	"github.com/defendergw/gateway/internal/telemetry"
	"github.com/defendergw/gateway/internal/tlsbypass"
)

// handleConnect hands goproxy the CONNECTs it carries: the inspected ones
// (ServeHTTP takes every raw tunnel over itself). Anything else reaching it
// is refused: it would be a CONNECT the front door did not decide.
func (s *Server) handleConnect(host string, ctx *goproxy.ProxyCtx) (*goproxy.ConnectAction, string) {
	st := stateFrom(ctx.Req.Context())
	ctx.UserData = st
	if st != nil && st.mode == tlsbypass.Inspect {
		return s.mitm, st.target.HostPort()
	}
	return goproxy.RejectConnect, host
}

// takeOver carries an allowed raw tunnel from the front door: it takes the
// connection from net/http (whose Hijacker returns the bytes it read past
// the CONNECT, so a ClientHello sent in the same segment is not lost) and
// serves it on this goroutine, with the decided state as an argument.
func (s *Server) takeOver(w http.ResponseWriter, r *http.Request, st *reqState) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		// Only HTTP/1 connections reach the proxy port (no TLS, no h2c).
		http.Error(w, "CONNECT needs HTTP/1.1", http.StatusHTTPVersionNotSupported)
		return
	}
	client, rw, err := hj.Hijack()
	if err != nil {
		return
	}
	var pending []byte
	if n := rw.Reader.Buffered(); n > 0 {
		b, _ := rw.Reader.Peek(n)
		pending = append([]byte(nil), b...) // the reader's 4 KiB buffer is not kept
	}
	s.serveConnect(r, client, pending, st)
}

// mitmTLSConfig serves the inspection certificate for the CONNECT's host.
func (s *Server) mitmTLSConfig(_ string, ctx *goproxy.ProxyCtx) (*tls.Config, error) {
	st, ok := ctx.UserData.(*reqState)
	if !ok || st == nil {
		return nil, errors.New("proxy: inspected tunnel without state")
	}
	return s.opts.Inspector.TLSConfig(st.target.Host), nil
}

// serveConnect runs on the connection's own goroutine: it answers a
// failure to connect, or verifies and relays a raw tunnel. pending holds
// what the client sent after the CONNECT request.
func (s *Server) serveConnect(req *http.Request, client net.Conn, pending []byte, st *reqState) {
	// Every path out of here either ends the connection (and reports it
	// with connDone) or hands it to the relay, which reports it at the end.
	connDone := func() {
		if s.opts.ConnDone != nil {
			s.opts.ConnDone(client)
		}
	}
	// The HTTP server may have left a header-read deadline on the
	// connection; the relay manages deadlines from here on.
	client.SetDeadline(time.Time{})
	proto := fmt.Sprintf("HTTP/%d.%d", req.ProtoMajor, req.ProtoMinor)
	if req.ProtoMajor != 1 {
		proto = "HTTP/1.1"
	}
	ev := tunnelEvent{method: req.Method, client: clientAddr(req), st: st}
	var upstream net.Conn
	if st.decision.NoSNICheck {
		// Nothing to verify: connect first, so a failure still gets a
		// proper 502/504 instead of a closed tunnel.
		var err error
		if upstream, err = s.dialChecked(req, st); err != nil {
			f := newRefusal(err, st.target.HostPort(), &st.decision, st.policy)
			s.eventRefused(req, st, err, f.status)
			f.closeWith(client, proto)
			connDone()
			return
		}
	}
	client.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(client, proto+" 200 Connection established\r\n\r\n"); err != nil {
		client.Close()
		if upstream != nil {
			upstream.Close()
		}
		connDone()
		return
	}
	if upstream == nil {
		// Verify before contacting the destination: the tunnel must carry
		// TLS whose ClientHello names the CONNECT host (no domain
		// fronting). Clients send the ClientHello only after the 200, so
		// a connection failure from here on closes the tunnel (logged).
		hello, seen, err := tlsbypass.PeekClientHello(client, pending, s.opts.ClientHelloTimeout, 0)
		ev.sni = hello.ServerName
		switch {
		case err == nil:
			err = tlsbypass.CheckSNI(hello, st.target)
		case errors.Is(err, io.EOF):
			// Closed before sending anything: still no TLS.
			err = fmt.Errorf("%w: %w", tlsbypass.ErrNotTLS, err)
		}
		if err != nil {
			client.Close()
			ev.err = err
			s.logTunnelRefused(ev)
			_, reason := classify(err)
			if s.opts.Metrics != nil {
				s.opts.Metrics.TunnelRefused(reason)
			}
			s.eventTunnelRefused(req, st, reason, hello.ServerName)
			connDone()
			return
		}
		pending = seen
		if upstream, err = s.dialChecked(req, st); err != nil {
			client.Close()
			s.eventRefused(req, st, err, http.StatusOK)
			connDone()
			return
		}
	}
	ev.remote = upstream.RemoteAddr().String()
	s.tunnels.add(client, upstream, st)
	if s.opts.Metrics != nil {
		s.opts.Metrics.TunnelOpened(st.mode.String())
	}
	ended := func(stats tlsbypass.Stats) {
		ev.stats = stats
		// Report before the tunnel leaves the active set: whoever waits
		// for it to end finds its metrics, log line and event in place.
		s.tunnelEnded(ev)
		s.tunnels.remove(client)
		connDone()
	}
	if st.decision.NoSNICheck {
		tlsbypass.Start(client, upstream, pending, s.opts.Tunnel, ended)
	} else {
		// Every ClientHello the client sends in the clear (a retry after a
		// HelloRetryRequest) must name the CONNECT host as the first did.
		target := st.target
		tlsbypass.StartVerified(client, upstream, pending, s.opts.Tunnel,
			func(h tlsbypass.Hello) error { return tlsbypass.CheckSNI(h, target) }, ended)
	}
	// Returning lets net/http drop this connection's goroutine, buffers and
	// state: an idle tunnel keeps only the relay's two goroutines.
}

// eventTunnelRefused records a verified tunnel closed by its ClientHello
// check (after the 200): denied, whatever the policy said of the host.
func (s *Server) eventTunnelRefused(req *http.Request, st *reqState, reason, sni string) {
	e := newEvent(telemetry.ConnectionBlocked, req, st)
	e.Status, e.Fields.SNI, e.Fields.TLS = http.StatusOK, sni, st.mode.String()
	e.Fields.Decision, e.Fields.Outcome, e.Fields.Reason = telemetry.DecisionDeny, telemetry.OutcomeRefused, reason
	s.logEvent(e)
}

// tunnelEnded logs, counts and records a raw tunnel that has ended.
func (s *Server) tunnelEnded(ev tunnelEvent) {
	st := ev.st
	if ev.stats.End == "refused" {
		// A later ClientHello failed the check (domain fronting in a
		// retried hello): a refusal, not a tunnel that closed.
		ev.err = ev.stats.Err
		s.logTunnelRefused(ev)
		_, reason := classify(ev.stats.Err)
		if s.opts.Metrics != nil {
			s.opts.Metrics.TunnelClosed(st.mode.String(), st.decision.Service(), ev.stats.End,
				ev.stats.ClientToUpstream, ev.stats.UpstreamToClient, ev.stats.Duration)
			s.opts.Metrics.TunnelRefused(reason)
		}
		s.eventTunnelRefused(&http.Request{Method: ev.method, RemoteAddr: ev.client}, st, reason, ev.sni)
		return
	}
	if s.opts.Metrics != nil {
		s.opts.Metrics.TunnelClosed(st.mode.String(), st.decision.Service(), ev.stats.End,
			ev.stats.ClientToUpstream, ev.stats.UpstreamToClient, ev.stats.Duration)
	}
	s.logTunnelClosed(ev)
	e := newEvent(successAction(st), &http.Request{Method: ev.method, RemoteAddr: ev.client}, st)
	e.Status, e.RemoteIP = http.StatusOK, addrOnly(ev.remote)
	e.Fields.TLS, e.Fields.SNI = st.mode.String(), ev.sni
	e.Fields.BytesUp, e.Fields.BytesDown, e.Fields.Duration = ev.stats.ClientToUpstream, ev.stats.UpstreamToClient, ev.stats.Duration
	// How the tunnel ended is its outcome, not a reason: the connection
	// succeeded, whatever ended it later.
	e.Fields.Outcome = ev.stats.End
	s.logEvent(e)
}

// dialChecked connects to the addresses handleConnect checked.
func (s *Server) dialChecked(req *http.Request, st *reqState) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(req.Context(), s.opts.DialTimeout)
	defer cancel()
	c, err := s.opts.Dialer.DialChecked(ctx, st.addrs)
	if err != nil {
		s.log.Warn("connect failed", "client", clientAddr(req), "target", st.target.HostPort(),
			"rule", st.decision.RuleID(), "service", st.decision.Service(), "error", err.Error())
	}
	return c, err
}

// tunnelEvent is what the logs say about one tunnel. The tunnel outlives
// its handler, so it keeps only what its end reports, not the request.
type tunnelEvent struct {
	method string
	client string // the client's address
	st     *reqState
	sni    string
	remote string
	stats  tlsbypass.Stats
	err    error
}

func (e *tunnelEvent) attrs() []any {
	return []any{"client", e.client, "target", e.st.target.HostPort(), "rule", e.st.decision.RuleID(),
		"service", e.st.decision.Service(), "geography", e.st.decision.Geography(), "tls", e.st.mode.String(),
		"sni", e.sni, "user", e.st.user}
}

func (s *Server) logTunnelRefused(e tunnelEvent) {
	_, reason := classify(e.err)
	s.log.Warn("tunnel refused", append(e.attrs(), "reason", reason, "error", e.err.Error())...)
}

func (s *Server) logTunnelClosed(e tunnelEvent) {
	if !s.log.Enabled(context.Background(), slog.LevelInfo) {
		return // build no attributes for a line nobody keeps
	}
	attrs := append(e.attrs(), "remote_ip", e.remote,
		"bytes_up", e.stats.ClientToUpstream, "bytes_down", e.stats.UpstreamToClient,
		"duration_s", e.stats.Duration.Seconds(), "end", e.stats.End)
	if e.stats.Err != nil {
		attrs = append(attrs, "error", e.stats.Err.Error())
	}
	s.log.Info("tunnel closed", attrs...)
}
