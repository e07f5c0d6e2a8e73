// Package testutil holds fixtures shared by the gateway's tests: a real DNS
// server built with miekg/dns, a throwaway certificate authority for TLS
// upstreams, and listeners that count connections. Everything listens on
// loopback with ports chosen by the OS.
package testutil

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/defendergw/gateway/internal/lab"
)

// DNS is an authoritative test DNS server on 127.0.0.1 (UDP and TCP, same
// port) answering A and AAAA from a zone the test controls. Names not in the
// zone get NXDOMAIN.
type DNS struct {
	Addr string // "127.0.0.1:port"

	stop func()

	mu      sync.Mutex
	zone    map[string][]netip.Addr
	queries map[string]int
	rcode   map[string]int
	delay   time.Duration
}

// NewDNS starts a DNS server and stops it when the test ends.
func NewDNS(t testing.TB) *DNS {
	t.Helper()
	d := &DNS{zone: map[string][]netip.Addr{}, queries: map[string]int{}}
	pc, ln, err := lab.ListenUDPTCP("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	d.Addr = pc.LocalAddr().String()
	udp := &dns.Server{PacketConn: pc, Handler: d}
	tcp := &dns.Server{Listener: ln, Handler: d}
	started := make(chan struct{}, 2)
	udp.NotifyStartedFunc = func() { started <- struct{}{} }
	tcp.NotifyStartedFunc = func() { started <- struct{}{} }
	go udp.ActivateAndServe()
	go tcp.ActivateAndServe()
	<-started
	<-started
	var once sync.Once
	d.stop = func() {
		once.Do(func() {
			udp.Shutdown()
			tcp.Shutdown()
		})
	}
	t.Cleanup(d.stop)
	return d
}

// Close stops the server (to simulate DNS going down).
func (d *DNS) Close() { d.stop() }

// Set makes name resolve to addrs (replacing earlier answers).
func (d *DNS) Set(name string, addrs ...string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var as []netip.Addr
	for _, a := range addrs {
		as = append(as, netip.MustParseAddr(a))
	}
	d.zone[dns.Fqdn(strings.ToLower(name))] = as
}

// SetRcode makes questions about name fail with rcode (e.g. dns.RcodeServerFailure).
func (d *DNS) SetRcode(name string, rcode int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.rcode == nil {
		d.rcode = map[string]int{}
	}
	d.rcode[dns.Fqdn(strings.ToLower(name))] = rcode
}

// SetDelay delays every answer by delay.
func (d *DNS) SetDelay(delay time.Duration) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.delay = delay
}

// Queries returns how many questions were asked about name.
func (d *DNS) Queries(name string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.queries[dns.Fqdn(name)]
}

// ServeDNS implements dns.Handler.
func (d *DNS) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	lab.Answer(w, req, func(name string) ([]netip.Addr, int) {
		d.mu.Lock()
		d.queries[name]++
		addrs, ok := d.zone[name]
		rcode, failing := d.rcode[name]
		delay := d.delay
		d.mu.Unlock()
		if delay > 0 {
			time.Sleep(delay)
		}
		switch {
		case failing:
			return nil, rcode
		case !ok:
			return nil, dns.RcodeNameError
		}
		return addrs, dns.RcodeSuccess
	})
}

// CA is a throwaway certificate authority.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
	Pool *x509.CertPool
}

// NewCA makes a CA valid for an hour.
func NewCA(t testing.TB) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "gateway test CA"},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &CA{Cert: cert, Key: key, Pool: pool}
}

// PEM returns the CA certificate in PEM form (for curl --cacert).
func (ca *CA) PEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw})
}

// Leaf issues a server certificate for names (DNS names or IP addresses).
func (ca *CA) Leaf(t testing.TB, names ...string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: names[0]},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// Listener is a TCP listener that counts accepted connections. Use it to
// prove that a refused destination saw no connection.
type Listener struct {
	net.Listener
	accepted atomic.Int64
}

// Listen listens on addr ("127.0.0.2:0") and closes when the test ends.
func Listen(t testing.TB, addr string) *Listener {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	l := &Listener{Listener: ln}
	t.Cleanup(func() { ln.Close() })
	return l
}

// Accept implements net.Listener.
func (l *Listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.accepted.Add(1)
	}
	return c, err
}

// Accepted returns how many connections were accepted so far.
func (l *Listener) Accepted() int64 { return l.accepted.Load() }

// Port returns the listener's port.
func (l *Listener) Port() uint16 { return uint16(l.Addr().(*net.TCPAddr).Port) }

// Sink accepts connections on a counting listener and closes them at once
// (for "nothing reached this address" checks on raw TCP).
func Sink(t testing.TB, addr string) *Listener {
	l := Listen(t, addr)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return l
}

// Buffer is a bytes.Buffer safe for concurrent writers (a logger, a
// process's output) and a reading test.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// Reset empties the buffer.
func (b *Buffer) Reset() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.b.Reset()
}

// AcceptedSince returns how many connections l accepted since its count
// was before, without sleeping: it connects to l itself and waits until
// that probe is accepted (in arrival order, so whatever connected before
// it is counted by then). l must be served (Sink).
func (l *Listener) AcceptedSince(t testing.TB, before int64) int64 {
	t.Helper()
	return CountedSince(t, l.Addr().String(), l.accepted.Load, before)
}

// CountedSince returns how much count grew since before, not counting a
// probe connection it makes to addr: count must count the connections
// addr's server accepts, in arrival order, so that once the probe is
// counted every connection made before it is too. It waits for that
// instead of sleeping.
func CountedSince(t testing.TB, addr string, count func() int64, before int64) int64 {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for deadline := time.Now().Add(5 * time.Second); count() < before+1; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s never counted the probe connection", addr)
		}
	}
	return count() - before - 1
}
