package proxy

import (
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/defendergw/gateway/internal/allowlist"
	"github.com/defendergw/gateway/internal/testutil"
)

// waitLog waits for a log fragment.
func (w *world) waitLog(t *testing.T, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(w.logs.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("log lacks %s:\n%s", want, w.logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestVerifiedTunnelRefusals(t *testing.T) {
	w := newWorld(t, worldOptions{geos: eu, clientHelloTimeout: 300 * time.Millisecond})
	unlisted := testutil.Sink(t, "127.0.0.2:0")
	w.dns.Set("unlisted.example.com", "127.0.0.2")
	tests := []struct {
		name       string
		first      []byte
		wantReason string
	}{
		{"domain fronting", clientHello(t, "unlisted.example.com"), "sni-mismatch"},
		{"sni of another listed name", clientHello(t, "winatp-gw-neu.microsoft.com"), "sni-mismatch"},
		{"no sni", clientHello(t, ""), "sni-mismatch"},
		{"plain http", []byte("GET / HTTP/1.1\r\nHost: winatp-gw-weu.microsoft.com\r\n\r\n"), "not-tls"},
		{"ssh banner", []byte("SSH-2.0-OpenSSH_9.2\r\n"), "not-tls"},
		{"silent client", nil, "not-tls"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, beforeUnlisted := w.tlsConns.Load(), unlisted.Accepted()
			c, resp := w.connect("winatp-gw-weu.microsoft.com:443", nil)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			if tt.first != nil {
				c.Write(tt.first)
			}
			start := time.Now()
			if _, err := io.ReadAll(c); err != nil && !isReset(err) {
				t.Fatalf("tunnel not closed: %v", err)
			}
			if d := time.Since(start); d > 3*time.Second {
				t.Errorf("closed after %v", d)
			}
			w.waitLog(t, `"reason":"`+tt.wantReason+`"`)
			if n := w.tlsConnsSince(t, before); n != 0 {
				t.Errorf("listed upstream saw %d connections", n)
			}
			if n := unlisted.AcceptedSince(t, beforeUnlisted); n != 0 {
				t.Errorf("unlisted upstream saw %d connections", n)
			}
		})
	}
}

func isReset(err error) bool { return err != nil && strings.Contains(err.Error(), "reset") }

// byteConn writes its first n bytes one at a time, so a ClientHello reaches
// the gateway in many TCP segments.
type byteConn struct {
	net.Conn
	n int
}

func (b *byteConn) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 && b.n > 0 {
		if _, err := b.Conn.Write(p[:1]); err != nil {
			return written, err
		}
		time.Sleep(time.Millisecond)
		p, b.n, written = p[1:], b.n-1, written+1
	}
	n, err := b.Conn.Write(p)
	return written + n, err
}

func TestVerifiedTunnelByteAtATime(t *testing.T) {
	w := newWorld(t, worldOptions{geos: eu})
	c, resp := w.connect("winatp-gw-weu.microsoft.com:443", nil)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	tc := tls.Client(&byteConn{Conn: c, n: 4096}, &tls.Config{ServerName: "winatp-gw-weu.microsoft.com", RootCAs: w.ca.Pool})
	if err := tc.Handshake(); err != nil {
		t.Fatalf("handshake through the verified tunnel: %v\n%s", err, w.logs.String())
	}
	if got := tc.ConnectionState().PeerCertificates[0].Issuer.CommonName; got != w.ca.Cert.Subject.CommonName {
		t.Errorf("issuer %q: the tunnel was not raw", got)
	}
	io.WriteString(tc, "GET /x HTTP/1.1\r\nHost: winatp-gw-weu.microsoft.com\r\nConnection: close\r\n\r\n")
	body, _ := io.ReadAll(tc)
	if !strings.Contains(string(body), "tls upstream winatp-gw-weu.microsoft.com /x") {
		t.Errorf("response %q", body)
	}
}

func TestInspection(t *testing.T) {
	w := newWorld(t, worldOptions{geos: eu, inspect: true})
	inspected := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		Proxy: http.ProxyURL(w.proxyURL), TLSClientConfig: &tls.Config{RootCAs: w.inspectCA.Pool}, DisableKeepAlives: true}}

	t.Run("allowed path is inspected", func(t *testing.T) {
		resp, err := inspected.Get("https://inspected.lab.test/allowed/a")
		if err != nil {
			t.Fatal(err)
		}
		body := readAll(t, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || body != "tls upstream inspected.lab.test /allowed/a" {
			t.Fatalf("got %d %q", resp.StatusCode, body)
		}
		if got := resp.TLS.PeerCertificates[0].Issuer.CommonName; got != w.inspectCA.Cert.Subject.CommonName {
			t.Errorf("client saw issuer %q, want the inspection CA", got)
		}
		w.waitLog(t, `"tls":"inspected"`)
		w.waitLog(t, `"path":"/allowed/a"`)
	})
	t.Run("disallowed path refused inside the tunnel", func(t *testing.T) {
		resp, err := inspected.Get("https://inspected.lab.test/denied")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 403 || resp.Header.Get(ReasonHeader) != "not-listed" {
			t.Errorf("got %d %q, want 403 not-listed", resp.StatusCode, resp.Header.Get(ReasonHeader))
		}
	})
	t.Run("exempt defender host stays raw", func(t *testing.T) {
		resp, err := w.client().Get("https://winatp-gw-weu.microsoft.com/test")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got := resp.TLS.PeerCertificates[0].Issuer.CommonName; got != w.ca.Cert.Subject.CommonName {
			t.Errorf("exempt host: client saw issuer %q, want the upstream's own CA", got)
		}
	})
}

func TestBlobScopeListed(t *testing.T) {
	w := newWorld(t, worldOptions{geos: []allowlist.Geography{allowlist.US}, blobScope: allowlist.BlobListed})
	for _, n := range []string{"someaccount.blob.core.windows.net", "ussus1eastprod.blob.core.windows.net"} {
		w.dns.Set(n, "127.0.0.1")
	}
	_, resp := w.connect("someaccount.blob.core.windows.net:443", nil)
	if resp.StatusCode != 403 || resp.Header.Get(ReasonHeader) != "not-listed" {
		t.Errorf("someaccount: got %d %q, want 403 not-listed", resp.StatusCode, resp.Header.Get(ReasonHeader))
	}
	_, resp = w.connect("ussus1eastprod.blob.core.windows.net:443", nil)
	if resp.StatusCode != 200 {
		t.Errorf("ussus1eastprod: got %d, want 200", resp.StatusCode)
	}
}
