package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

var srcCounter atomic.Uint32

// srcAddr spreads client connections over 127.0.0.2–127.0.0.251 so that no
// source address runs out of ports and no per-client limit is reached.
func srcAddr() *net.TCPAddr {
	n := srcCounter.Add(1)
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+n%250))}
}

// dnsPort53Addr is outside srcAddr's range, so no client uses it.
const dnsPort53Addr = "127.0.0.252"

// dialLoopback dials addr, which must be a 127.0.0.0/8 address: the harness
// never sends a byte anywhere else.
func dialLoopback(ctx context.Context, addr string) (net.Conn, error) {
	ap, err := net.ResolveTCPAddr("tcp", addr) // literal only: addr is always ip:port
	if err != nil || ap.IP == nil || !ap.IP.IsLoopback() || ap.IP.To4() == nil {
		return nil, fmt.Errorf("refusing to dial non-loopback address %q", addr)
	}
	d := net.Dialer{LocalAddr: srcAddr(), Timeout: 5 * time.Second}
	return d.DialContext(ctx, "tcp", addr)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Upstream protocol (plain and TLS): the client sends one op byte.
//
//	'S'            stream bytes until the client goes away
//	'N' + uint64   stream exactly N bytes, then close
//	'D'            discard everything the client sends
//	'R' + 64 bytes answer 64 bytes, then close (the upstream closes first, so
//	               no client port sits in TIME_WAIT)
//	'P'            ping-pong: answer every 64 bytes with 64 bytes
//	nothing        idle until the client closes
func serveConn(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Minute))
	var op [1]byte
	if _, err := io.ReadFull(c, op[:]); err != nil {
		return
	}
	switch op[0] {
	case 'S':
		buf := make([]byte, 256<<10)
		for {
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	case 'N':
		var n [8]byte
		if _, err := io.ReadFull(c, n[:]); err != nil {
			return
		}
		_, _ = io.CopyN(c, zeroReader{}, int64(binary.BigEndian.Uint64(n[:])))
	case 'D':
		_, _ = io.Copy(io.Discard, c)
	case 'R':
		var b [msgSize]byte
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return
		}
		_, _ = c.Write(b[:])
	case 'P':
		var b [msgSize]byte
		for {
			if _, err := io.ReadFull(c, b[:]); err != nil {
				return
			}
			if _, err := c.Write(b[:]); err != nil {
				return
			}
		}
	}
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

func acceptLoop(l net.Listener, serve func(net.Conn)) {
	for {
		c, err := l.Accept()
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond) // EMFILE and friends: back off, bounded by the process's life
			continue
		}
		go serve(c)
	}
}

type upstreams struct {
	tcpPort, tlsPort, httpPort int
	dnsAddr                    string
	// dnsPort53 is a loopback address where the same DNS server also
	// answers on port 53, or "" when it could not be bound (not root).
	// Squid and tinyproxy can only be pointed at port 53.
	dnsPort53 string
	clientTLS *tls.Config
	closers   []io.Closer
}

func (u *upstreams) tcpAddr() string  { return fmt.Sprintf("127.0.0.1:%d", u.tcpPort) }
func (u *upstreams) tlsAddr() string  { return fmt.Sprintf("127.0.0.1:%d", u.tlsPort) }
func (u *upstreams) httpAddr() string { return fmt.Sprintf("127.0.0.1:%d", u.httpPort) }

func startUpstreams() (*upstreams, error) {
	u := &upstreams{}
	cert, pool, err := selfSigned()
	if err != nil {
		return nil, err
	}
	// X25519 only: what most endpoints offer today, and cheaper for the load
	// generator than the default hybrid post-quantum key exchange.
	u.clientTLS = &tls.Config{ServerName: tlsHost, RootCAs: pool, MinVersion: tls.VersionTLS12,
		CurvePreferences: []tls.CurveID{tls.X25519}}

	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	u.closers = append(u.closers, tl)
	u.tcpPort = tl.Addr().(*net.TCPAddr).Port
	go acceptLoop(tl, serveConn)

	sl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	u.closers = append(u.closers, sl)
	u.tlsPort = sl.Addr().(*net.TCPAddr).Port
	go acceptLoop(tls.NewListener(sl, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}), serveConn)

	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	u.httpPort = hl.Addr().(*net.TCPAddr).Port
	obj := bytes.Repeat([]byte("x"), objSize)
	hs := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/octet-stream")
			w.Header().Set("Content-Length", strconv.Itoa(objSize))
			w.Header().Set("Cache-Control", "no-store")
			_, _ = w.Write(obj)
		}),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       60 * time.Second,
		ErrorLog:          nil,
	}
	u.closers = append(u.closers, hs)
	go func() { _ = hs.Serve(hl) }()

	// DNS: A records for the bench names, NODATA for other types, NXDOMAIN otherwise.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	u.dnsAddr = pc.LocalAddr().String()
	mux := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Authoritative = true
		if len(r.Question) == 1 {
			q := r.Question[0]
			switch strings.ToLower(q.Name) {
			case plainHost + ".", tlsHost + ".":
				if q.Qtype == dns.TypeA {
					m.Answer = append(m.Answer, &dns.A{
						Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 300},
						A:   net.IPv4(127, 0, 0, 1).To4(),
					})
				}
			case ".":
			default:
				m.Rcode = dns.RcodeNameError
			}
		}
		_ = w.WriteMsg(m)
	})
	ds := &dns.Server{PacketConn: pc, Handler: mux}
	u.closers = append(u.closers, closerFunc(func() error { return ds.Shutdown() }))
	go func() { _ = ds.ActivateAndServe() }()
	if tcpl, err := net.Listen("tcp", u.dnsAddr); err == nil { // TCP twin, for truncation retries
		dt := &dns.Server{Listener: tcpl, Handler: mux}
		u.closers = append(u.closers, closerFunc(func() error { return dt.Shutdown() }))
		go func() { _ = dt.ActivateAndServe() }()
	}
	// Squid looks up a PTR record for client addresses. Against a server
	// that never answers, its pending queries pile up and every new query
	// ID is checked against all of them (idnsQueryID): its tunnel rate
	// halved from one round to the next. A real deployment has a resolver
	// that answers, so the harness gives Squid and tinyproxy one too.
	if pc53, err := net.ListenPacket("udp", dnsPort53Addr+":53"); err == nil {
		ds53 := &dns.Server{PacketConn: pc53, Handler: mux}
		u.closers = append(u.closers, closerFunc(func() error { return ds53.Shutdown() }))
		go func() { _ = ds53.ActivateAndServe() }()
		if tcpl, err := net.Listen("tcp", dnsPort53Addr+":53"); err == nil {
			dt := &dns.Server{Listener: tcpl, Handler: mux}
			u.closers = append(u.closers, closerFunc(func() error { return dt.Shutdown() }))
			go func() { _ = dt.ActivateAndServe() }()
		}
		u.dnsPort53 = dnsPort53Addr
	} else {
		logf("DNS on %s:53 unavailable (%v): Squid and tinyproxy get a resolver that never answers", dnsPort53Addr, err)
	}
	return u, nil
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

func selfSigned() (tls.Certificate, *x509.CertPool, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: tlsHost},
		DNSNames:              []string{tlsHost, plainHost},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool, nil
}
