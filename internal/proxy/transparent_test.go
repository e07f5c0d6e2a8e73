package proxy

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/defendergw/gateway/internal/proxyheader"
	"github.com/defendergw/gateway/internal/reason"
)

// serveTransparent serves w's transparent side on a loopback listener and
// returns its address. The test plays netfilter's part: the OriginalDst
// hook says every connection was going to orig (cmd/gateway's
// TestTransparent reads it from real REDIRECT rules).
func (w *world) serveTransparent(t *testing.T, orig netip.AddrPort) string {
	t.Helper()
	tr, err := w.srv.NewTransparent(TransparentOptions{
		OriginalDst: func(net.Conn) (netip.AddrPort, error) { return orig, nil },
		HTTP:        &http.Server{ReadHeaderTimeout: 5 * time.Second},
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go tr.Serve(ln)
	t.Cleanup(func() {
		ln.Close()
		tr.Shutdown(t.Context())
	})
	return ln.Addr().String()
}

// transparentGet sends one GET over an intercepted connection to addr,
// in TLS naming sni if tls, and returns the answer or the error.
func transparentGet(t *testing.T, addr string, tlsConf *tls.Config, host string) (*http.Response, string, error) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if tlsConf != nil {
		tc := tls.Client(c, tlsConf)
		if err := tc.Handshake(); err != nil {
			return nil, "", err
		}
		c = tc
	}
	fmt.Fprintf(c, "GET /pki/crl/products/x.crl HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", host)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return nil, "", err
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b), nil
}

// Without proxy authentication on the transparent listener, a gateway that
// authenticates serves intercepted clients what it serves anonymous ones:
// the anonymous (system-context) rows, and nothing that needs credentials
// (refused 403 auth-required, never a 407 the client cannot answer).
func TestTransparentAuthAndClients(t *testing.T) {
	authw := newWorld(t, worldOptions{geos: eu, htpasswd: htpasswdLine(t, "alice", "s3cret"), unlisted: true})
	closedw := newWorld(t, worldOptions{geos: eu, clientNetworks: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}})
	addr := func(w *world, port uint16) string {
		return w.serveTransparent(t, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port))
	}
	tests := []struct {
		name       string
		w          *world
		port       uint16 // the original destination's
		sni        string // TLS if set
		host       string // plain HTTP's Host
		wantBody   string
		wantAlert  string
		wantStatus int
		wantReason string
	}{
		{name: "tls defender row is anonymous", w: authw, port: 443, sni: "winatp-gw-weu.microsoft.com",
			wantBody: "tls upstream winatp-gw-weu.microsoft.com /pki/crl/products/x.crl"},
		{name: "tls unlisted needs credentials", w: authw, port: 443, sni: "unlisted.example.com",
			wantAlert: "access denied", wantReason: "auth-required"},
		{name: "tls geography still refused", w: authw, port: 443, sni: "winatp-gw-cus.microsoft.com",
			wantAlert: "access denied", wantReason: "geography"},
		{name: "http crl row is anonymous", w: authw, port: 80, host: "crl.microsoft.com",
			wantBody: "http upstream crl.microsoft.com /pki/crl/products/x.crl"},
		{name: "http unlisted needs credentials", w: authw, port: 80, host: "unlisted-http.example.com",
			wantStatus: 403, wantReason: "auth-required"},
		{name: "tls client outside the client networks", w: closedw, port: 443, sni: "winatp-gw-weu.microsoft.com",
			wantAlert: "access denied", wantReason: "client-not-allowed"},
		{name: "http client outside the client networks", w: closedw, port: 80, host: "crl.microsoft.com",
			wantStatus: 403, wantReason: "client-not-allowed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := tc.w.tlsConns.Load()
			var conf *tls.Config
			host := tc.host
			if tc.sni != "" {
				conf, host = &tls.Config{ServerName: tc.sni, RootCAs: tc.w.ca.Pool}, tc.sni
			}
			resp, body, err := transparentGet(t, addr(tc.w, tc.port), conf, host)
			switch {
			case tc.wantBody != "":
				if err != nil || body != tc.wantBody {
					t.Fatalf("got %q %v, want %q", body, err, tc.wantBody)
				}
			case tc.wantAlert != "":
				if err == nil || !strings.Contains(err.Error(), "remote error: tls: "+tc.wantAlert) {
					t.Fatalf("got %v, want the alert %q", err, tc.wantAlert)
				}
			default:
				if err != nil {
					t.Fatal(err)
				}
				if resp.StatusCode != tc.wantStatus || resp.Header.Get(ReasonHeader) != tc.wantReason {
					t.Fatalf("got %d %q, want %d %q", resp.StatusCode, resp.Header.Get(ReasonHeader), tc.wantStatus, tc.wantReason)
				}
				if got := resp.Header.Get("Proxy-Authenticate"); got != "" {
					t.Errorf("Proxy-Authenticate %q sent to an intercepted client", got)
				}
			}
			if tc.wantReason != "" {
				tc.w.waitLog(t, `"reason":"`+tc.wantReason+`"`)
				if tc.sni != "" {
					if got := tc.w.tlsConnsSince(t, before); got != 0 {
						t.Errorf("refused, yet the TLS upstream saw %d connections", got)
					}
				}
			}
		})
	}
}

func TestListenerSelf(t *testing.T) {
	tests := []struct {
		name     string
		listener string
		orig     string
		want     bool
	}{
		{"the listener itself", "127.0.0.1:3129", "127.0.0.1:3129", true},
		{"another port", "127.0.0.1:3129", "127.0.0.1:443", false},
		{"another address, same port", "127.0.0.1:3129", "127.0.0.3:3129", false},
		{"wildcard listener, loopback", "0.0.0.0:3129", "127.0.0.9:3129", true},
		{"wildcard listener, another port", "0.0.0.0:3129", "127.0.0.9:443", false},
		{"IPv6 listener", "[::1]:3129", "[::1]:3129", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, err := net.ResolveTCPAddr("tcp", tc.listener)
			if err != nil {
				t.Fatal(err)
			}
			if got := listenerSelf(a)(netip.MustParseAddrPort(tc.orig)); got != tc.want {
				t.Errorf("listener %s, original destination %s: got %v, want %v", tc.listener, tc.orig, got, tc.want)
			}
		})
	}
}

// The transparent listener counts its connections in the same limits, and
// closes one over a limit without an answer (its client may speak TLS).
func TestTransparentLimits(t *testing.T) {
	w := newWorld(t, worldOptions{geos: eu})
	var refused []reason.Code
	var mu sync.Mutex
	lim := &ConnLimiter{PerClient: 1, OnRefuse: func(rc reason.Code) { mu.Lock(); refused = append(refused, rc); mu.Unlock() }}
	srv, err := New(w.srv.opts)
	if err != nil {
		t.Fatal(err)
	}
	srv.opts.ConnDone = lim.Release
	tr, err := srv.NewTransparent(TransparentOptions{
		OriginalDst: func(net.Conn) (netip.AddrPort, error) { return netip.MustParseAddrPort("127.0.0.1:443"), nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go tr.Serve(lim.SilentListener(ln))
	t.Cleanup(func() { ln.Close(); tr.Shutdown(t.Context()); srv.Shutdown(t.Context()) })

	first, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{ServerName: "winatp-gw-weu.microsoft.com", RootCAs: w.ca.Pool})
	if err != nil {
		t.Fatalf("first connection: %v", err)
	}
	second, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	second.SetDeadline(time.Now().Add(5 * time.Second))
	if n, err := second.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Fatalf("second connection from the client: read %d bytes, %v; want it closed unanswered", n, err)
	}
	mu.Lock()
	got := slices.Clone(refused)
	mu.Unlock()
	if !slices.Equal(got, []reason.Code{reason.ClientConnLimit}) {
		t.Errorf("refusals: got %v, want [client-conn-limit]", got)
	}
	// Closing the tunnel frees the client's slot.
	first.Close()
	deadline := time.Now().Add(3 * time.Second)
	for lim.Active() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("active = %d after the tunnel closed, want 0", lim.Active())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Behind a balancer that sends the PROXY protocol, the transparent
// listener judges the client the header names: here the only allowed
// client network is the header's.
func TestTransparentBehindProxyProtocol(t *testing.T) {
	w := newWorld(t, worldOptions{geos: eu, clientNetworks: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}})
	tr, err := w.srv.NewTransparent(TransparentOptions{
		OriginalDst: func(net.Conn) (netip.AddrPort, error) { return netip.MustParseAddrPort("127.0.0.1:443"), nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := proxyheader.Listen(raw, proxyheader.Options{Mode: proxyheader.Required, From: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}})
	go tr.Serve(ln)
	t.Cleanup(func() { ln.Close(); tr.Shutdown(t.Context()) })
	for _, tc := range []struct {
		name, client string
		wantErr      string
	}{
		{"header names an allowed client", "10.1.2.3:40000", ""},
		{"header names another client", "192.0.2.7:40000", "access denied"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", raw.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			// Only bytes naming the address: nothing is sent to it.
			fmt.Fprintf(c, "PROXY TCP4 %s 127.0.0.1 %s 443\r\n", strings.Split(tc.client, ":")[0], strings.Split(tc.client, ":")[1])
			err = tls.Client(c, &tls.Config{ServerName: "winatp-gw-weu.microsoft.com", RootCAs: w.ca.Pool}).Handshake()
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("handshake: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("handshake: got %v, want the alert %q", err, tc.wantErr)
			}
			if tc.wantErr != "" {
				w.waitLog(t, `"client":"`+tc.client+`"`)
				w.waitLog(t, `"reason":"client-not-allowed"`)
			}
		})
	}
}
