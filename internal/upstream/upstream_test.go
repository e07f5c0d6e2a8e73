package upstream

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// origin is a scripted HTTP/1.1 server on loopback: answer writes the raw
// response to each request (conn and req count from 0) and reports whether
// to keep reading the connection.
type origin struct {
	ln       net.Listener
	accepted atomic.Int32
	closed   chan int // connection indexes, as the server sees them end
}

func newOrigin(t *testing.T, answer func(c net.Conn, r *http.Request, conn, req int) bool) *origin {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	o := &origin{ln: ln, closed: make(chan int, 64)}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			idx := int(o.accepted.Add(1)) - 1
			wg.Go(func() {
				defer func() { o.closed <- idx }()
				defer c.Close()
				br := bufio.NewReader(c)
				for n := 0; ; n++ {
					r, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					if !answer(c, r, idx, n) {
						return
					}
				}
			})
		}
	})
	return o
}

func (o *origin) url(path string) string { return "http://" + o.ln.Addr().String() + path }

// reply is an answer that writes raw and keeps the connection.
func reply(raw string) func(net.Conn, *http.Request, int, int) bool {
	return func(c net.Conn, _ *http.Request, _, _ int) bool {
		_, err := io.WriteString(c, raw)
		return err == nil
	}
}

func newClient(t *testing.T, opts Options) *Client {
	t.Helper()
	if opts.DialContext == nil {
		opts.DialContext = (&net.Dialer{}).DialContext
	}
	c := New(opts)
	t.Cleanup(c.CloseIdleConnections)
	return c
}

func get(t *testing.T, c *Client, method, url string) (*http.Response, string, error) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.RoundTrip(req)
	if err != nil {
		return nil, "", err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b), err
}

func TestFraming(t *testing.T) {
	for _, tc := range []struct {
		name, method, raw string
		wantStatus        int
		wantBody          string
		wantReuse         bool
		wantTrailer       string
	}{
		{"content-length", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", 200, "hello", true, ""},
		{"chunked with trailer", "GET", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\nX-Sum: 5\r\n\r\n", 200, "abcde", true, "5"},
		{"empty content-length", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 200, "", true, ""},
		{"HEAD with a length", "HEAD", "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", 200, "", true, ""},
		{"204", "GET", "HTTP/1.1 204 No Content\r\n\r\n", 204, "", true, ""},
		{"304", "GET", "HTTP/1.1 304 Not Modified\r\nContent-Length: 1000\r\n\r\n", 304, "", true, ""},
		{"interim responses skipped", "GET", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 200, "ok", true, ""},
		{"Connection: close", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok", 200, "ok", false, ""},
		{"HTTP/1.0 origin", "GET", "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", 200, "ok", false, ""},
		{"close-delimited", "GET", "HTTP/1.1 200 OK\r\n\r\nuntil close", 200, "until close", false, ""},
		{"bytes after the response", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n", 200, "ok", false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := newOrigin(t, func(c net.Conn, r *http.Request, _, _ int) bool {
				io.WriteString(c, tc.raw)
				// A close-delimited body ends only when the server closes.
				return !strings.Contains(tc.raw, "until close")
			})
			c := newClient(t, Options{})
			for i := range 2 {
				resp, body, err := get(t, c, tc.method, o.url("/x"))
				if err != nil {
					t.Fatalf("request %d: %v", i, err)
				}
				if resp.StatusCode != tc.wantStatus || body != tc.wantBody {
					t.Errorf("request %d: got %d %q, want %d %q", i, resp.StatusCode, body, tc.wantStatus, tc.wantBody)
				}
				if got := resp.Trailer.Get("X-Sum"); got != tc.wantTrailer {
					t.Errorf("request %d: trailer X-Sum = %q, want %q", i, got, tc.wantTrailer)
				}
			}
			wantConns := int32(2)
			if tc.wantReuse {
				wantConns = 1
			}
			if got := o.accepted.Load(); got != wantConns {
				t.Errorf("origin accepted %d connections for two requests, want %d", got, wantConns)
			}
		})
	}
}

func TestRequestOnTheWire(t *testing.T) {
	got := make(chan *http.Request, 1)
	o := newOrigin(t, func(c net.Conn, r *http.Request, _, _ int) bool {
		got <- r
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
		return true
	})
	c := newClient(t, Options{})
	req, _ := http.NewRequest("GET", o.url("/pki/crl/a.crl?x=1"), nil)
	req.Header.Set("User-Agent", "Microsoft-CryptoAPI/10.0")
	req.Header.Set("X-Test", "1")
	if _, _, err := func() (*http.Response, string, error) {
		resp, err := c.RoundTrip(req)
		if err != nil {
			return nil, "", err
		}
		return resp, "", resp.Body.Close()
	}(); err != nil {
		t.Fatal(err)
	}
	r := <-got
	if r.RequestURI != "/pki/crl/a.crl?x=1" {
		t.Errorf("request target %q, want origin-form /pki/crl/a.crl?x=1 (RFC 9112 §3.2.1)", r.RequestURI)
	}
	if r.Host != o.ln.Addr().String() {
		t.Errorf("Host %q, want %q", r.Host, o.ln.Addr().String())
	}
	if r.UserAgent() != "Microsoft-CryptoAPI/10.0" || r.Header.Get("X-Test") != "1" {
		t.Errorf("headers not relayed: %v", r.Header)
	}
	if _, ok := r.Header["Content-Length"]; ok || len(r.TransferEncoding) > 0 {
		t.Errorf("a bodiless GET was sent with framing headers: %v %v", r.Header, r.TransferEncoding)
	}
}

func TestFailures(t *testing.T) {
	for _, tc := range []struct {
		name        string
		answer      func(net.Conn, *http.Request, int, int) bool
		opts        Options
		wantErr     string
		wantTimeout bool
	}{
		{"unasked protocol switch", reply("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"), Options{}, "unexpected 101", false},
		{"headers too large", reply("HTTP/1.1 200 OK\r\nX-Big: " + strings.Repeat("a", 2000) + "\r\n\r\n"), Options{MaxResponseHeaderBytes: 1024}, "response headers too large", false},
		{"endless interim responses", reply(strings.Repeat("HTTP/1.1 103 Early Hints\r\n\r\n", 40)), Options{}, "interim responses", false},
		{"malformed status line", reply("SMTP ready\r\n\r\n"), Options{}, "malformed HTTP", false},
		{"origin closes without answering", func(net.Conn, *http.Request, int, int) bool { return false }, Options{}, "EOF", false},
		{"no headers in time", func(net.Conn, *http.Request, int, int) bool { time.Sleep(2 * time.Second); return false },
			Options{ResponseHeaderTimeout: 100 * time.Millisecond}, "i/o timeout", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := newOrigin(t, tc.answer)
			c := newClient(t, tc.opts)
			_, _, err := get(t, c, "GET", o.url("/"))
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("got error %v, want one containing %q", err, tc.wantErr)
			}
			var ne net.Error
			if got := errors.As(err, &ne) && ne.Timeout(); got != tc.wantTimeout {
				t.Errorf("timeout error = %v, want %v (%v)", got, tc.wantTimeout, err)
			}
			if n := c.pool.n; n != 0 {
				t.Errorf("%d connections pooled after a failure, want 0", n)
			}
		})
	}
}

func TestDialFailure(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	c := newClient(t, Options{})
	if _, _, err := get(t, c, "GET", "http://"+addr+"/"); err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("got %v, want connection refused", err)
	}
}

// TestStaleConnection covers an origin that closes a kept-alive connection:
// while it sits in the pool (found before reuse), and just as a request is
// sent on it (idempotent requests are retried, others are not, RFC 9110
// §9.2.2).
func TestStaleConnection(t *testing.T) {
	const ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	t.Run("closed while idle", func(t *testing.T) {
		o := newOrigin(t, func(c net.Conn, _ *http.Request, _, _ int) bool {
			io.WriteString(c, ok)
			return false // close after one response, without saying so
		})
		c := newClient(t, Options{})
		for i := range 3 {
			if i > 0 {
				<-o.closed // the origin has closed the pooled connection
			}
			// POST is never retried: only the check before reuse saves it.
			if _, body, err := get(t, c, "POST", o.url("/")); err != nil || body != "ok" {
				t.Fatalf("request %d: got %q, %v", i, body, err)
			}
		}
		if got := o.accepted.Load(); got != 3 {
			t.Errorf("accepted %d connections, want 3", got)
		}
	})
	for _, tc := range []struct {
		method    string
		reset     bool // close with RST (SO_LINGER 0) rather than FIN
		wantRetry bool
	}{{"GET", false, true}, {"HEAD", false, true}, {"POST", false, false}, {"GET", true, true}, {"POST", true, false}} {
		how := "closed"
		if tc.reset {
			how = "reset"
		}
		t.Run(how+" as the request arrives/"+tc.method, func(t *testing.T) {
			o := newOrigin(t, func(c net.Conn, _ *http.Request, _, req int) bool {
				if req == 1 {
					if tc.reset {
						c.(*net.TCPConn).SetLinger(0)
					}
					return false // read the second request, then close
				}
				io.WriteString(c, ok)
				return true
			})
			c := newClient(t, Options{})
			for i := range 2 {
				_, _, err := get(t, c, tc.method, o.url("/"))
				if i == 1 && !tc.wantRetry {
					if err == nil || !isClosedConn(err) {
						t.Fatalf("%s on a connection %s under it: got %v, want EOF or a reset, not a retry", tc.method, how, err)
					}
					return
				}
				if err != nil {
					t.Fatalf("request %d: %v", i, err)
				}
			}
			if got := o.accepted.Load(); got != 2 {
				t.Errorf("accepted %d connections, want 2 (the retry dials anew)", got)
			}
		})
	}
}

// TestAbandonedBody checks that closing a body early closes the connection
// at once instead of draining a large or endless body.
func TestAbandonedBody(t *testing.T) {
	o := newOrigin(t, func(c net.Conn, _ *http.Request, conn, _ int) bool {
		if conn > 0 {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			return true
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n")
		chunk := make([]byte, 64<<10)
		for {
			if _, err := c.Write(chunk); err != nil {
				return false
			}
		}
	})
	c := newClient(t, Options{})
	req, _ := http.NewRequest("GET", o.url("/big"), nil)
	resp, err := c.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 100<<10)); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := <-o.closed; got != 0 {
		t.Fatalf("connection %d ended, want 0", got)
	}
	if _, err := resp.Body.Read(make([]byte, 1)); err == nil {
		t.Error("read after Close succeeded")
	}
	if _, body, err := get(t, c, "GET", o.url("/")); err != nil || body != "ok" {
		t.Fatalf("next request: %q, %v", body, err)
	}
	if got := o.accepted.Load(); got != 2 {
		t.Errorf("accepted %d connections, want 2: an abandoned body's connection is not reused", got)
	}
}

func TestCancel(t *testing.T) {
	for _, tc := range []struct {
		name   string
		answer string // before stalling
	}{
		{"waiting for headers", ""},
		{"reading the body", "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := newOrigin(t, func(c net.Conn, _ *http.Request, _, _ int) bool {
				io.WriteString(c, tc.answer)
				io.Copy(io.Discard, c) // stall until the client closes
				return false
			})
			c := newClient(t, Options{})
			ctx, cancel := context.WithCancel(context.Background())
			req, _ := http.NewRequestWithContext(ctx, "GET", o.url("/"), nil)
			errc := make(chan error, 1)
			go func() {
				resp, err := c.RoundTrip(req)
				if err == nil {
					_, err = io.ReadAll(resp.Body)
					resp.Body.Close()
				}
				errc <- err
			}()
			time.Sleep(50 * time.Millisecond)
			cancel()
			select {
			case err := <-errc:
				if err == nil {
					t.Fatal("cancelled request succeeded")
				}
				if tc.answer == "" && !errors.Is(err, context.Canceled) {
					t.Errorf("got %v, want it to wrap context.Canceled", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("cancellation did not end the request")
			}
			if n := c.pool.n; n != 0 {
				t.Errorf("%d connections pooled after cancellation, want 0", n)
			}
		})
	}
}

func TestPoolBounds(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	t.Cleanup(srv.Close)
	c := newClient(t, Options{MaxIdlePerHost: 2})
	var bodies []io.ReadCloser
	for range 5 {
		req, _ := http.NewRequest("GET", srv.URL, nil)
		resp, err := c.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		bodies = append(bodies, resp.Body)
	}
	for _, b := range bodies {
		io.Copy(io.Discard, b)
		b.Close()
	}
	if got := c.pool.n; got != 2 {
		t.Errorf("%d connections pooled, want MaxIdlePerHost = 2", got)
	}
}

func TestIdleTimeout(t *testing.T) {
	o := newOrigin(t, reply("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
	c := newClient(t, Options{IdleTimeout: 50 * time.Millisecond})
	if _, _, err := get(t, c, "GET", o.url("/")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-o.closed:
	case <-time.After(5 * time.Second):
		t.Fatal("the idle connection was not closed after IdleTimeout")
	}
	c.pool.mu.Lock()
	n := c.pool.n
	c.pool.mu.Unlock()
	if n != 0 {
		t.Errorf("%d connections still pooled, want 0", n)
	}
}

func TestGotConn(t *testing.T) {
	o := newOrigin(t, reply("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
	c := newClient(t, Options{})
	var got []string
	for range 2 {
		trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
			got = append(got, fmt.Sprintf("%s reused=%v", info.Conn.RemoteAddr(), info.Reused))
		}}
		req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "GET", o.url("/"), nil)
		resp, err := c.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	want := []string{o.ln.Addr().String() + " reused=false", o.ln.Addr().String() + " reused=true"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("GotConn: got %v, want %v", got, want)
	}
}

func TestHandles(t *testing.T) {
	body := func(r *http.Request) *http.Request {
		r.Body, r.ContentLength = io.NopCloser(strings.NewReader("x")), 1
		return r
	}
	for _, tc := range []struct {
		name string
		req  *http.Request
		want bool
	}{
		{"GET", httptest.NewRequest("GET", "http://crl.microsoft.com/a.crl", nil), true},
		{"HEAD", httptest.NewRequest("HEAD", "http://crl.microsoft.com/a.crl", nil), true},
		{"bodiless POST", httptest.NewRequest("POST", "http://crl.microsoft.com/", nil), true},
		{"https origin", httptest.NewRequest("GET", "https://crl.microsoft.com/", nil), false},
		{"with a body", body(httptest.NewRequest("POST", "http://crl.microsoft.com/", nil)), false},
		{"chunked", func() *http.Request {
			r := httptest.NewRequest("POST", "http://crl.microsoft.com/", nil)
			r.TransferEncoding = []string{"chunked"}
			return r
		}(), false},
		{"upgrade", func() *http.Request {
			r := httptest.NewRequest("GET", "http://crl.microsoft.com/", nil)
			r.Header.Set("Upgrade", "websocket")
			return r
		}(), false},
		{"origin-form", httptest.NewRequest("GET", "/a.crl", nil), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Handles(tc.req); got != tc.want {
				t.Errorf("Handles = %v, want %v", got, tc.want)
			}
		})
	}
	c := newClient(t, Options{})
	if _, err := c.RoundTrip(httptest.NewRequest("GET", "https://crl.microsoft.com/", nil)); !errors.Is(err, ErrNotHandled) {
		t.Errorf("RoundTrip of an https request: got %v, want ErrNotHandled", err)
	}
}
