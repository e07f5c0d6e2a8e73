package upstream

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// FuzzResponse has an origin on loopback answer one request with arbitrary
// bytes and close. The client must agree with http.ReadResponse reading the
// same bytes (status, body, and whether either fails), never panic, and
// never keep a connection whose response failed.
func FuzzResponse(f *testing.F) {
	for _, seed := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n3\r\nabc\r\n0\r\nX-Sum: 5\r\n\r\n",
		"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
		"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
		"HTTP/1.0 200 OK\r\n\r\nuntil close",
		"HTTP/1.1 101 Switching Protocols\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
		"HTTP/1.1 200 OK\r\nX: a\r\n folded\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 999 Strange\r\n\r\n",
		"SSH-2.0-OpenSSH_9.6\r\n",
	} {
		f.Add([]byte(seed), false)
	}
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"), true)
	// One origin per fuzzing process, a connection per input: a listener
	// per input would run the machine out of ephemeral ports.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	defer ln.Close()
	inputs, served := make(chan []byte, 1), make(chan struct{}, 1)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := http.ReadRequest(bufio.NewReader(c)); err == nil {
				c.Write(<-inputs)
			}
			c.Close()
			served <- struct{}{}
		}
	}()
	f.Fuzz(func(t *testing.T, raw []byte, head bool) {
		if len(raw) > 16<<10 {
			return // well inside the 64 KiB header limit, so it never decides
		}
		method := http.MethodGet
		if head {
			method = http.MethodHead
		}
		inputs <- raw
		c := New(Options{DialContext: dialNoLinger, ResponseHeaderTimeout: 5 * time.Second})
		defer c.CloseIdleConnections()
		req, _ := http.NewRequest(method, "http://"+ln.Addr().String()+"/", nil)
		resp, err := c.RoundTrip(req)
		var body []byte
		var bodyErr error
		if err == nil {
			body, bodyErr = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		select {
		case <-served:
		case <-time.After(10 * time.Second):
			t.Fatal("the origin never served the request")
		}

		wantResp, wantErr := reference(raw, req)
		switch {
		case (err == nil) != (wantErr == nil):
			t.Fatalf("RoundTrip error %v; http.ReadResponse error %v", err, wantErr)
		case err != nil:
			if c.pool.n != 0 {
				t.Fatalf("%d connections pooled after a failed response", c.pool.n)
			}
			return
		}
		wantBody, wantBodyErr := io.ReadAll(wantResp.Body)
		if resp.StatusCode != wantResp.StatusCode {
			t.Fatalf("status %d, want %d", resp.StatusCode, wantResp.StatusCode)
		}
		if !bytes.Equal(body, wantBody) || (bodyErr == nil) != (wantBodyErr == nil) {
			t.Fatalf("body %q (error %v), want %q (error %v)", body, bodyErr, wantBody, wantBodyErr)
		}
		if bodyErr != nil && c.pool.n != 0 {
			t.Fatalf("%d connections pooled after a body that failed", c.pool.n)
		}
	})
}

// dialNoLinger dials with SO_LINGER 0: closing resets instead of leaving
// the port in TIME_WAIT, so hundreds of thousands of inputs do not use up
// the ephemeral ports (and break the next fuzz target's listener).
func dialNoLinger(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err == nil {
		c.(*net.TCPConn).SetLinger(0)
	}
	return c, err
}

// reference reads the final response from raw the way RoundTrip should:
// http.ReadResponse, interim responses skipped, a 101 refused.
func reference(raw []byte, req *http.Request) (*http.Response, error) {
	br := bufio.NewReader(bytes.NewReader(raw))
	for range maxInterim + 1 {
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode == http.StatusSwitchingProtocols {
			return nil, ErrUnexpected101
		}
		if resp.StatusCode >= 200 {
			return resp, nil
		}
	}
	return nil, io.ErrUnexpectedEOF
}
