package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// tunnel opens a byte stream to host:port (one of the upstreams), through the
// target's CONNECT or directly.
func (h *harness) tunnel(ctx context.Context, t *target, useTLS bool) (net.Conn, error) {
	host, port, addr := plainHost, h.up.tcpPort, h.up.tcpAddr()
	if useTLS {
		host, port, addr = tlsHost, h.up.tlsPort, h.up.tlsAddr()
	}
	var c net.Conn
	var err error
	if t.direct() {
		if c, err = dialLoopback(ctx, addr); err != nil {
			return nil, err
		}
	} else {
		if c, err = dialLoopback(ctx, t.proxyAddr); err != nil {
			return nil, err
		}
		if dl, ok := ctx.Deadline(); ok {
			_ = c.SetDeadline(dl)
		}
		hp := net.JoinHostPort(host, strconv.Itoa(port))
		if _, err := io.WriteString(c, "CONNECT "+hp+" HTTP/1.1\r\nHost: "+hp+"\r\n\r\n"); err != nil {
			c.Close()
			return nil, err
		}
		br := bufio.NewReaderSize(c, 4096)
		status, err := br.ReadString('\n')
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("CONNECT: %w", err)
		}
		if f := strings.Fields(status); len(f) < 2 || f[1] != "200" {
			c.Close()
			return nil, fmt.Errorf("CONNECT answered %q", strings.TrimSpace(status))
		}
		for i := 0; ; i++ {
			line, err := br.ReadString('\n')
			if err != nil || i > 100 {
				c.Close()
				return nil, fmt.Errorf("CONNECT headers: %v", err)
			}
			if line == "\r\n" || line == "\n" {
				break
			}
		}
		_ = c.SetDeadline(time.Time{})
		c = &bufConn{Conn: c, r: br}
	}
	if !useTLS {
		return c, nil
	}
	tc := tls.Client(c, h.up.clientTLS) // SNI = tlsHost, a full handshake every time (no session cache)
	hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("TLS handshake: %w", err)
	}
	return tc, nil
}

// requestResponse opens a tunnel, exchanges 64 bytes each way and waits for
// the upstream's close.
func (h *harness) requestResponse(ctx context.Context, t *target, useTLS bool) error {
	c, err := h.tunnel(ctx, t, useTLS)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	var b [1 + msgSize]byte
	b[0] = 'R'
	if _, err := c.Write(b[:]); err != nil {
		return err
	}
	if _, err := io.ReadFull(c, b[:msgSize]); err != nil {
		return fmt.Errorf("response: %w", err)
	}
	var one [1]byte
	if n, err := c.Read(one[:]); n != 0 || (err != io.EOF && !isClosed(err)) {
		return fmt.Errorf("expected the upstream's close, got %d bytes, %v", n, err)
	}
	return nil
}

func isClosed(err error) bool {
	return err != nil && (errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET) || strings.Contains(err.Error(), "close_notify"))
}

func (h *harness) objURL() string {
	return fmt.Sprintf("http://%s:%d/obj", plainHost, h.up.httpPort)
}

// transport sends absolute-form requests through the target (or straight to
// the HTTP upstream for direct), keeping up to conns connections alive.
func (h *harness) transport(t *target, conns int) *http.Transport {
	addr := t.proxyAddr
	var proxy func(*http.Request) (*url.URL, error)
	if t.direct() {
		addr = h.up.httpAddr()
	} else {
		pu := &url.URL{Scheme: "http", Host: t.proxyAddr}
		proxy = http.ProxyURL(pu)
	}
	return &http.Transport{
		Proxy:               proxy,
		DialContext:         func(ctx context.Context, _, _ string) (net.Conn, error) { return dialLoopback(ctx, addr) },
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		IdleConnTimeout:     30 * time.Second,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
	}
}

func getOnce(ctx context.Context, c *http.Client, u string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return err
	}
	if resp.StatusCode != 200 || n != objSize {
		return fmt.Errorf("GET answered %s with %d bytes", resp.Status, n)
	}
	return nil
}
