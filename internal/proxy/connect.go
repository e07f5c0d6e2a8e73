package proxy

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/elazarl/goproxy"

	"github.com/defendergw/gateway/internal/allowlist"
	"github.com/defendergw/gateway/internal/tlsbypass"
)

// handleConnect takes every CONNECT over from goproxy: refusals get a proper
// response with a reason, and allowed tunnels are dialed by the checked
// dialer and relayed without wrappers.
func (s *Server) handleConnect(host string, _ *goproxy.ProxyCtx) (*goproxy.ConnectAction, string) {
	return s.connect, host
}

// serveConnect runs on the connection's own goroutine after goproxy
// hijacked it.
func (s *Server) serveConnect(req *http.Request, client net.Conn, _ *goproxy.ProxyCtx) {
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
	raw := req.RequestURI
	if raw == "" {
		raw = req.URL.Host
	}
	policy := s.opts.Policy()
	t, err := allowlist.ParseAuthority(raw)
	if err != nil {
		s.logDecision(req, raw, nil, err)
		s.refuseConn(client, proto, newRefusal(err, raw, nil, policy))
		return
	}
	d := policy.Decide(t)
	s.logDecision(req, t.HostPort(), &d, d.Err)
	if !d.Allowed {
		s.refuseConn(client, proto, newRefusal(d.Err, t.HostPort(), &d, policy))
		return
	}
	ctx, cancel := context.WithTimeout(req.Context(), s.opts.DialTimeout)
	upstream, err := s.opts.Dialer.DialContext(ctx, "tcp", t.HostPort())
	cancel()
	if err != nil {
		s.log.Warn("connect failed", "client", clientAddr(req), "target", t.HostPort(), "rule", d.RuleID(),
			"service", d.Service(), "error", err.Error())
		s.refuseConn(client, proto, newRefusal(err, t.HostPort(), &d, policy))
		return
	}
	client.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(client, proto+" 200 Connection established\r\n\r\n"); err != nil {
		client.Close()
		upstream.Close()
		return
	}
	st := tlsbypass.Relay(client, upstream, pending, s.opts.Tunnel)
	attrs := []any{"client", clientAddr(req), "target", t.HostPort(), "remote_ip", upstream.RemoteAddr().String(),
		"rule", d.RuleID(), "service", d.Service(), "geography", d.Geography(),
		"bytes_up", st.ClientToUpstream, "bytes_down", st.UpstreamToClient,
		"duration_s", st.Duration.Seconds(), "end", st.End}
	if st.Err != nil {
		attrs = append(attrs, "error", st.Err.Error())
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

func (s *Server) logDecision(req *http.Request, target string, d *allowlist.Decision, err error) {
	attrs := []slog.Attr{
		slog.String("client", clientAddr(req)),
		slog.String("method", req.Method),
		slog.String("target", target),
	}
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
