package proxy

import (
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// BenchmarkTunnelBulk streams TLS application data one way through a CONNECT
// tunnel: "verified" peeks and checks the ClientHello before relaying,
// "unverified" is a rule with verify_sni: false. The copy path after the
// handshake is the same, so the two should be within noise of each other.
func BenchmarkTunnelBulk(b *testing.B) {
	for _, tc := range []struct{ name, host string }{
		{"verified", "winatp-gw-weu.microsoft.com"},
		{"unverified", "raw.lab.test"},
	} {
		b.Run(tc.name, func(b *testing.B) {
			w := newWorld(b, worldOptions{geos: eu})
			sink := sinkTLS(b, w.ca.Leaf(b, tlsNames...))
			defer sink.Close()
			w.mu.Lock()
			w.portMap[443] = port(sink.Addr())
			w.mu.Unlock()
			c, resp := w.connect(tc.host+":443", nil)
			if resp.StatusCode != 200 {
				b.Fatalf("CONNECT %s: %d", tc.host, resp.StatusCode)
			}
			c.SetDeadline(time.Time{})
			conn := tls.Client(c, &tls.Config{ServerName: tc.host, RootCAs: w.ca.Pool})
			if err := conn.Handshake(); err != nil {
				b.Fatal(err)
			}
			buf := make([]byte, 1<<20)
			b.SetBytes(int64(len(buf)))
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if _, err := conn.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			conn.Close()
		})
	}
}

// sinkTLS accepts TLS connections and reads each until EOF.
func sinkTLS(b *testing.B, cert tls.Certificate) net.Listener {
	return serveTLS(b, cert, func(c net.Conn) { io.Copy(io.Discard, c) })
}

// serveTLS accepts TLS connections on loopback and serves each with serve,
// closing it after.
func serveTLS(b *testing.B, cert tls.Certificate, serve func(net.Conn)) net.Listener {
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		b.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				serve(c)
			}()
		}
	}()
	return ln
}

// BenchmarkHTTPForward measures absolute-form GETs of a small object through
// the gateway over keep-alive connections.
func BenchmarkHTTPForward(b *testing.B) {
	w := newWorld(b, worldOptions{geos: eu})
	tr := &http.Transport{Proxy: http.ProxyURL(w.proxyURL), MaxIdleConnsPerHost: 64}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := client.Get("http://crl.microsoft.com/pki/crl/products/bench.crl")
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	})
}

// BenchmarkTunnelNew opens a verified TLS tunnel per iteration: CONNECT, the
// TLS handshake through it, one byte each way, close. Profile the proxy's
// share with -cpuprofile (the client and the upstream run in-process too).
func BenchmarkTunnelNew(b *testing.B) {
	w := newWorld(b, worldOptions{geos: eu})
	ln := serveTLS(b, w.ca.Leaf(b, tlsNames...), func(c net.Conn) {
		var one [1]byte
		if _, err := c.Read(one[:]); err == nil {
			c.Write(one[:])
		}
	})
	defer ln.Close()
	w.mu.Lock()
	w.portMap[443] = port(ln.Addr())
	w.mu.Unlock()
	const host = "winatp-gw-weu.microsoft.com"
	conf := &tls.Config{ServerName: host, RootCAs: w.ca.Pool, ClientSessionCache: nil}
	b.ReportAllocs()
	for b.Loop() {
		c, resp := w.connect(host+":443", nil)
		if resp.StatusCode != 200 {
			b.Fatalf("CONNECT: %d", resp.StatusCode)
		}
		tc := tls.Client(c, conf)
		var one [1]byte
		if _, err := tc.Write([]byte{'x'}); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(tc, one[:]); err != nil {
			b.Fatal(err)
		}
		tc.Close()
	}
}
