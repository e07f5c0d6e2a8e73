package parent

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestParseURL(t *testing.T) {
	for _, tt := range []struct {
		in, host, user string
		wantErr        bool
	}{
		{"http://proxy.corp:8080", "proxy.corp:8080", "", false},
		{" http://gw:pw@10.0.0.1:3128/ ", "10.0.0.1:3128", "gw", false},
		{"http://[fd00::1]:3128", "[fd00::1]:3128", "", false},
		{"https://gw:pw@proxy.corp:443", "", "", true},
		{"socks5://proxy.corp:1080", "", "", true},
		{"proxy.corp:8080", "", "", true},
		{"gw:pw@proxy.corp:8080", "", "", true},
		{"http://proxy.corp", "", "", true},
		{"http://proxy.corp:http", "", "", true},
		{"http://proxy.corp:70000", "", "", true},
		{"http://proxy.corp:8080/path", "", "", true},
		{"http://proxy.corp:8080?q", "", "", true},
		{"http://:pw@proxy.corp:8080", "", "", true},
		{"http://gw:pw@proxy.corp:80%zz", "", "", true},
	} {
		t.Run(tt.in, func(t *testing.T) {
			u, err := ParseURL(tt.in)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("ParseURL(%q) = %v, want an error", tt.in, u)
				}
				if strings.Contains(err.Error(), ":pw@") {
					t.Errorf("the error repeats the password: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if u.Host != tt.host || u.User.Username() != tt.user || u.Path != "" {
				t.Errorf("ParseURL(%q) = host %q user %q path %q, want %q %q", tt.in, u.Host, u.User.Username(), u.Path, tt.host, tt.user)
			}
		})
	}
}

func TestBypass(t *testing.T) {
	var patterns []string
	for _, p := range []string{"*.Contoso.com", "crl.microsoft.com.", "192.0.2.7"} {
		n, err := NormalizeBypass(p)
		if err != nil {
			t.Fatal(err)
		}
		patterns = append(patterns, n)
	}
	c, err := New(Options{Parents: []*url.URL{{Scheme: "http", Host: "127.0.0.1:1"}}, Bypass: patterns})
	if err != nil {
		t.Fatal(err)
	}
	for host, want := range map[string]bool{
		"a.contoso.com": true, "a.b.contoso.com": true, "contoso.com": false, "evilcontoso.com": false,
		"crl.microsoft.com": true, "x.crl.microsoft.com": false, "www.microsoft.com": false, "192.0.2.7": true,
	} {
		if got := c.Bypass(host); got != want {
			t.Errorf("Bypass(%q) = %v, want %v", host, got, want)
		}
	}
}

// TestOrder: a parent marked down is tried last until Retry has passed.
func TestOrder(t *testing.T) {
	var ups []string
	c, err := New(Options{Parents: []*url.URL{{Scheme: "http", Host: "127.0.0.1:1"}, {Scheme: "http", Host: "127.0.0.1:2"}},
		Retry: 30 * time.Second, Up: func(p string, up bool) {
			if !up {
				p = "down " + p
			}
			ups = append(ups, p)
		}})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1000, 0)
	c.now = func() time.Time { return now }
	names := func() string {
		var n []string
		for _, p := range c.order() {
			n = append(n, p.Name())
		}
		return strings.Join(n, ",")
	}
	first := c.parents[0]
	steps := []struct {
		do   func()
		want string
	}{
		{func() {}, "127.0.0.1:1,127.0.0.1:2"},
		{func() { c.markDown(first) }, "127.0.0.1:2,127.0.0.1:1"},
		{func() { now = now.Add(29 * time.Second) }, "127.0.0.1:2,127.0.0.1:1"},
		{func() { now = now.Add(time.Second) }, "127.0.0.1:1,127.0.0.1:2"},
		{func() { c.markDown(first); c.markUp(first) }, "127.0.0.1:1,127.0.0.1:2"},
	}
	for i, s := range steps {
		s.do()
		if got := names(); got != s.want {
			t.Errorf("step %d: order %s, want %s", i, got, s.want)
		}
	}
	if got, want := strings.Join(ups, ","), "127.0.0.1:1,127.0.0.1:2,down 127.0.0.1:1,down 127.0.0.1:1,127.0.0.1:1"; got != want {
		t.Errorf("health reports %s, want %s", got, want)
	}
}

// testParent is a loopback proxy: CONNECT answers 200 followed by extra,
// absolute-form requests get their own body back.
func testParent(t *testing.T, extra string) (*url.URL, *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int64
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		if r.Method == http.MethodConnect {
			c, bw, _ := w.(http.Hijacker).Hijack()
			defer c.Close()
			bw.WriteString("HTTP/1.1 200 Connection established\r\n\r\n" + extra)
			bw.Flush()
			io.Copy(c, bw)
			return
		}
		b, _ := io.ReadAll(r.Body)
		io.WriteString(w, r.Method+" "+r.RequestURI+" "+string(b))
	}), ReadHeaderTimeout: 5 * time.Second}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })
	return &url.URL{Scheme: "http", Host: ln.Addr().String()}, &n
}

func closed(t *testing.T) *url.URL {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return &url.URL{Scheme: "http", Host: ln.Addr().String()}
}

// TestTunnelKeepsBufferedBytes: bytes a parent sends with its answer
// reach the tunnel.
func TestTunnelKeepsBufferedBytes(t *testing.T) {
	p, _ := testParent(t, "early")
	c, err := New(Options{Parents: []*url.URL{p}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := c.DialTunnel(ctx, "echo.test", 443, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "+late")
	b := make([]byte, len("early+late"))
	if _, err := io.ReadFull(bufio.NewReader(conn), b); err != nil || string(b) != "early+late" {
		t.Errorf("tunnel read %q, %v; want early+late", b, err)
	}
}

// TestRoundTripFailoverKeepsBody: a request with a body moves to the next
// parent when the first cannot be connected to, body intact.
func TestRoundTripFailoverKeepsBody(t *testing.T) {
	alive, n := testParent(t, "")
	var results []string
	c, err := New(Options{Parents: []*url.URL{closed(t), alive}, Retry: time.Minute,
		Observe: func(p, r string) { results = append(results, r) }})
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodPost, "http://origin.test/upload", strings.NewReader("the body"))
	resp, err := c.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if got, want := string(b), "POST http://origin.test/upload the body"; got != want {
		t.Errorf("parent got %q, want %q", got, want)
	}
	if n.Load() != 1 || strings.Join(results, ",") != "unreachable,ok" {
		t.Errorf("requests %d, results %v; want 1, unreachable,ok", n.Load(), results)
	}
	// Every parent down: ErrUnreachable, naming no credentials.
	c2, err := New(Options{Parents: []*url.URL{{Scheme: "http", User: url.UserPassword("u", "pw-secret"), Host: closed(t).Host}}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c2.RoundTrip(req.Clone(context.Background()))
	if !errors.Is(err, ErrUnreachable) || strings.Contains(err.Error(), "pw-secret") {
		t.Errorf("err = %v, want ErrUnreachable without the password", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = c2.DialTunnel(ctx, "echo.test", 443, nil)
	if !errors.Is(err, ErrUnreachable) || strings.Contains(err.Error(), "pw-secret") {
		t.Errorf("tunnel err = %v, want ErrUnreachable without the password", err)
	}
}
