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
	"net/netip"
	"time"

	"github.com/elazarl/goproxy"

	"github.com/defendergw/gateway/internal/allowlist"
	"github.com/defendergw/gateway/internal/tlsbypass"
)

// connectState carries a CONNECT's decision from handleConnect to the
// tunnel (and, for inspected tunnels, to every inner request).
type connectState struct {
	raw      string // request target as sent
	target   allowlist.Target
	decision allowlist.Decision
	policy   *allowlist.Policy
	addrs    []netip.AddrPort // resolved and checked, dialed only after the ClientHello passed
	err      error            // why the CONNECT is refused, if it is
	mode     tlsbypass.Mode
}

// handleConnect decides a CONNECT and resolves its destination before
// anything is answered, so refusals and DNS failures get a proper status.
// Allowed tunnels to TLS-exempt destinations (and every allowed tunnel when
// no inspection CA is configured) are taken over by serveConnect; the rest
// are inspected through goproxy's MITM.
func (s *Server) handleConnect(_ string, ctx *goproxy.ProxyCtx) (*goproxy.ConnectAction, string) {
	req := ctx.Req
	st := &connectState{raw: req.RequestURI, policy: s.opts.Policy()}
	if st.raw == "" {
		st.raw = req.URL.Host
	}
	ctx.UserData = st
	st.target, st.err = allowlist.ParseAuthority(st.raw)
	if st.err != nil {
		s.logDecision(req, st.raw, nil, st.err, "")
		return s.connect, st.raw
	}
	st.decision = st.policy.Decide(st.target)
	st.err = st.decision.Err
	if st.err == nil {
		st.mode = tlsbypass.Choose(&st.decision, s.opts.Inspector != nil)
	}
	s.logDecision(req, st.target.HostPort(), &st.decision, st.err, st.mode.String())
	if st.err != nil {
		return s.connect, st.raw
	}
	lctx, cancel := context.WithTimeout(req.Context(), s.opts.DialTimeout)
	st.addrs, st.err = s.opts.Dialer.Lookup(lctx, st.target.Host, st.target.Port)
	cancel()
	if st.err != nil {
		s.log.Warn("connect failed", "client", clientAddr(req), "target", st.target.HostPort(),
			"rule", st.decision.RuleID(), "service", st.decision.Service(), "error", st.err.Error())
		return s.connect, st.raw
	}
	if st.mode == tlsbypass.Inspect {
		return s.mitm, st.target.HostPort()
	}
	return s.connect, st.raw
}

// mitmTLSConfig serves the inspection certificate for the CONNECT's host.
func (s *Server) mitmTLSConfig(_ string, ctx *goproxy.ProxyCtx) (*tls.Config, error) {
	st, ok := ctx.UserData.(*connectState)
	if !ok {
		return nil, errors.New("proxy: inspected tunnel without state")
	}
	return s.opts.Inspector.TLSConfig(st.target.Host), nil
}

// serveConnect runs on the connection's own goroutine after goproxy
// hijacked it: it answers refusals, or verifies and relays a raw tunnel.
func (s *Server) serveConnect(req *http.Request, client net.Conn, gctx *goproxy.ProxyCtx) {
	var pending []byte
	if hc, ok := client.(*hijackedConn); ok {
		client, pending = hc.Conn, hc.pending
	}
	// The HTTP server may have left a header-read deadline on the
	// connection; the relay manages deadlines from here on.
	client.SetDeadline(time.Time{})
	proto := fmt.Sprintf("HTTP/%d.%d", req.ProtoMajor, req.ProtoMinor)
	if req.ProtoMajor != 1 {
		proto = "HTTP/1.1"
	}
	st, _ := gctx.UserData.(*connectState)
	if st == nil {
		st = &connectState{err: fmt.Errorf("connect: no decision: %w", allowlist.ErrBadTarget)}
	}
	if st.err != nil {
		target := st.raw
		if st.target.Host != "" {
			target = st.target.HostPort()
		}
		s.refuseConn(client, proto, newRefusal(st.err, target, &st.decision, st.policy))
		return
	}
	ev := tunnelEvent{req: req, st: st}
	var upstream net.Conn
	if st.decision.NoSNICheck {
		// Nothing to verify: connect first, so a failure still gets a
		// proper 502/504 instead of a closed tunnel.
		var err error
		if upstream, err = s.dialChecked(req, st); err != nil {
			s.refuseConn(client, proto, newRefusal(err, st.target.HostPort(), &st.decision, st.policy))
			return
		}
	}
	client.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(client, proto+" 200 Connection established\r\n\r\n"); err != nil {
		client.Close()
		if upstream != nil {
			upstream.Close()
		}
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
			return
		}
		pending = seen
		if upstream, err = s.dialChecked(req, st); err != nil {
			client.Close()
			return
		}
	}
	ev.remote = upstream.RemoteAddr().String()
	ev.stats = tlsbypass.Relay(client, upstream, pending, s.opts.Tunnel)
	s.logTunnelClosed(ev)
}

// dialChecked connects to the addresses handleConnect checked.
func (s *Server) dialChecked(req *http.Request, st *connectState) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(req.Context(), s.opts.DialTimeout)
	defer cancel()
	c, err := s.opts.Dialer.DialChecked(ctx, st.addrs)
	if err != nil {
		s.log.Warn("connect failed", "client", clientAddr(req), "target", st.target.HostPort(),
			"rule", st.decision.RuleID(), "service", st.decision.Service(), "error", err.Error())
	}
	return c, err
}

// tunnelEvent is what the logs say about one tunnel.
type tunnelEvent struct {
	req    *http.Request
	st     *connectState
	sni    string
	remote string
	stats  tlsbypass.Stats
	err    error
}

func (e *tunnelEvent) attrs() []any {
	return []any{"client", clientAddr(e.req), "target", e.st.target.HostPort(), "rule", e.st.decision.RuleID(),
		"service", e.st.decision.Service(), "geography", e.st.decision.Geography(), "tls", e.st.mode.String(),
		"sni", e.sni}
}

func (s *Server) logTunnelRefused(e tunnelEvent) {
	_, reason := classify(e.err)
	s.log.Warn("tunnel refused", append(e.attrs(), "reason", reason, "error", e.err.Error())...)
}

func (s *Server) logTunnelClosed(e tunnelEvent) {
	attrs := append(e.attrs(), "remote_ip", e.remote,
		"bytes_up", e.stats.ClientToUpstream, "bytes_down", e.stats.UpstreamToClient,
		"duration_s", e.stats.Duration.Seconds(), "end", e.stats.End)
	if e.stats.Err != nil {
		attrs = append(attrs, "error", e.stats.Err.Error())
	}
	s.log.Info("tunnel closed", attrs...)
}

// refuseConn answers a CONNECT the gateway will not serve and closes the
// connection cleanly: the client may already have sent tunnel bytes, and
// closing with unread data would reset the connection and lose the answer.
func (s *Server) refuseConn(c net.Conn, proto string, f refusal) {
	c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if err := f.write(c, proto); err == nil {
		if cw, ok := c.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
		c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		io.Copy(io.Discard, io.LimitReader(c, 256<<10))
	}
	c.Close()
}

func (s *Server) logDecision(req *http.Request, target string, d *allowlist.Decision, err error, tlsMode string, extra ...slog.Attr) {
	attrs := []slog.Attr{
		slog.String("client", clientAddr(req)),
		slog.String("method", req.Method),
		slog.String("target", target),
	}
	if tlsMode != "" {
		attrs = append(attrs, slog.String("tls", tlsMode))
	}
	attrs = append(attrs, extra...)
	if d != nil && d.Allowed {
		attrs = append(attrs, slog.String("decision", "allow"), slog.String("reason", string(d.Reason)))
	} else {
		_, reason := classify(err)
		attrs = append(attrs, slog.String("decision", "deny"), slog.String("reason", reason))
	}
	if d != nil {
		attrs = append(attrs, slog.String("rule", d.RuleID()), slog.String("service", d.Service()),
			slog.String("geography", d.Geography()))
		if d.PathUnchecked {
			attrs = append(attrs, slog.Bool("path_unchecked", true))
		}
	}
	s.log.LogAttrs(context.Background(), slog.LevelInfo, "decision", attrs...)
}
