package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/elazarl/goproxy"

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
	proto := "HTTP/1.1"
	if req.ProtoMajor == 1 && req.ProtoMinor == 0 {
		proto = "HTTP/1.0"
	}
	var upstream net.Conn
	if st.decision.NoSNICheck {
		// Nothing to verify: connect first, so a failure still gets a
		// proper 502/504 instead of a closed tunnel.
		var err error
		if upstream, err = s.dialChecked(req, st); err != nil {
			st.fail(err)
			s.record(st)
			newRefusal(st).closeWith(client, proto)
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
	st.status = http.StatusOK
	if upstream == nil {
		// Verify before contacting the destination: the tunnel must carry
		// TLS whose ClientHello names the CONNECT host (no domain
		// fronting). Clients send the ClientHello only after the 200, so
		// a connection failure from here on closes the tunnel (recorded).
		hello, seen, err := tlsbypass.PeekClientHello(client, pending, s.opts.ClientHelloTimeout, 0)
		st.sni = hello.ServerName
		switch {
		case err == nil:
			err = tlsbypass.CheckSNI(hello, st.target)
		case errors.Is(err, io.EOF):
			// Closed before sending anything: still no TLS.
			err = fmt.Errorf("%w: %w", tlsbypass.ErrNotTLS, err)
		}
		if err != nil {
			client.Close()
			s.tunnelRefused(st, err)
			connDone()
			return
		}
		pending = seen
		if upstream, err = s.dialChecked(req, st); err != nil {
			client.Close()
			st.fail(err)
			st.status = http.StatusOK // the 200 was sent
			s.record(st)
			connDone()
			return
		}
	}
	st.remote = remoteAddr(upstream)
	st.addrs = nil // dialed: an idle tunnel keeps nothing it no longer needs
	s.tunnels.add(client, upstream, st)
	if s.opts.Metrics != nil {
		s.opts.Metrics.TunnelOpened(st.mode.String())
	}
	ended := func(stats tlsbypass.Stats) {
		// Report before the tunnel leaves the active set: whoever waits
		// for it to end finds its metrics and record in place.
		s.tunnelEnded(st, stats)
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

// tunnelRefused records a verified tunnel closed by its ClientHello check
// (after the 200): denied, whatever the policy said of the host.
func (s *Server) tunnelRefused(st *reqState, err error) {
	st.fail(err)
	st.status = http.StatusOK // the 200 was sent
	if s.opts.Metrics != nil {
		s.opts.Metrics.TunnelRefused(st.reason.Label())
	}
	s.record(st)
}

// tunnelEnded counts and records a raw tunnel that has ended.
func (s *Server) tunnelEnded(st *reqState, stats tlsbypass.Stats) {
	st.up, st.down, st.dur = stats.ClientToUpstream, stats.UpstreamToClient, stats.Duration
	if s.opts.Metrics != nil {
		s.opts.Metrics.TunnelClosed(st.mode.String(), st.decision.Service(), stats.End,
			stats.ClientToUpstream, stats.UpstreamToClient, stats.Duration)
	}
	if stats.End == "refused" {
		// A later ClientHello failed the check (domain fronting in a
		// retried hello): a refusal, not a tunnel that closed.
		s.tunnelRefused(st, stats.Err)
		return
	}
	// How the tunnel ended is its outcome, not a reason: the connection
	// succeeded, whatever ended it later.
	st.end, st.err = stats.End, stats.Err
	s.record(st)
}

// dialChecked connects to the addresses the front door checked, within the
// request's deadline.
func (s *Server) dialChecked(req *http.Request, st *reqState) (net.Conn, error) {
	ctx, cancel := withDeadline(req.Context(), st.deadline)
	defer cancel()
	return s.dialTarget(ctx, st)
}

// dialTarget connects to the checked addresses of st's target, directly or
// through a parent proxy.
func (s *Server) dialTarget(ctx context.Context, st *reqState) (net.Conn, error) {
	if s.viaParent(st.target.Host) {
		return s.opts.Parent.DialTunnel(ctx, st.target.Host, st.target.Port, st.addrs)
	}
	return s.opts.Dialer.DialChecked(ctx, st.addrs)
}
