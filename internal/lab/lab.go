// Package lab runs a loopback replica of the Defender service side, so that
// the gateway, the connectivity probe, curl and browsers can be exercised
// end to end without the internet: a DNS server (miekg/dns) that answers
// every catalog name with the lab's address, simulated Defender endpoints
// over TLS (leaf certificates from a lab CA written to disk) and plain HTTP
// (the CRL and trust-list paths on port 80), answering the client analyzers'
// test paths with the codes the real services give.
//
// The simulated endpoints listen on ports chosen by the OS; the gateway
// reaches them through PortMap, which sends the catalog's ports (443, 80)
// to them after the gateway has decided and resolved as usual.
package lab

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/defendergw/gateway/internal/allowlist"
	"github.com/defendergw/gateway/internal/inspect"
)

// Options configure a lab.
type Options struct {
	// Addr is the IP the lab listens on and the DNS answers with; default
	// 127.0.0.1.
	Addr string
	// Dir is where the lab CA (ca.pem, ca.key) is written; required.
	Dir string
	// Catalog holds the names the lab serves.
	Catalog *allowlist.Catalog
}

// Lab is a running replica.
type Lab struct {
	DNSAddr  string         // ip:port, UDP and TCP
	TLSAddr  netip.AddrPort // simulated HTTPS endpoints
	HTTPAddr netip.AddrPort // simulated plain-HTTP (CRL) endpoints
	CAFile   string         // the lab CA certificate (PEM), to trust in clients
	CAPool   *x509.CertPool

	addr  netip.Addr
	exact map[string]bool
	wild  []string // suffixes of *.suffix rows
	stops []func()
}

// Start starts the DNS server and the simulated endpoints.
func Start(opts Options) (*Lab, error) {
	if opts.Addr == "" {
		opts.Addr = "127.0.0.1"
	}
	addr, err := netip.ParseAddr(opts.Addr)
	if err != nil {
		return nil, fmt.Errorf("lab address %q: %w", opts.Addr, err)
	}
	if opts.Dir == "" || opts.Catalog == nil {
		return nil, errors.New("lab: Dir and Catalog are required")
	}
	l := &Lab{addr: addr, exact: map[string]bool{}}
	for _, r := range opts.Catalog.Rules {
		if s, ok := strings.CutPrefix(r.Host, "*."); ok {
			l.wild = append(l.wild, s)
		} else {
			l.exact[r.Host] = true
		}
	}
	ok := false
	defer func() {
		if !ok {
			l.Close()
		}
	}()
	caCert, caKey, err := inspect.NewCA("Defender gateway lab CA", 30*24*time.Hour)
	if err != nil {
		return nil, err
	}
	if l.CAFile, _, err = inspect.WriteCA(opts.Dir, caCert, caKey); err != nil {
		return nil, fmt.Errorf("lab CA: %w", err)
	}
	l.CAPool = x509.NewCertPool()
	l.CAPool.AddCert(caCert)
	minter, err := inspect.NewMinter(caCert, caKey, inspect.MinterOptions{Validity: 7 * 24 * time.Hour, CacheSize: 1024})
	if err != nil {
		return nil, err
	}
	if err := l.startDNS(); err != nil {
		return nil, err
	}
	tlsLn, err := tls.Listen("tcp", net.JoinHostPort(opts.Addr, "0"), &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			name := strings.ToLower(hello.ServerName)
			if !l.serves(name) {
				return nil, fmt.Errorf("lab: no endpoint for %q", hello.ServerName)
			}
			return minter.Certificate(name)
		},
	})
	if err != nil {
		return nil, err
	}
	l.TLSAddr = netip.MustParseAddrPort(tlsLn.Addr().String())
	l.serve(tlsLn, Handler())
	httpLn, err := net.Listen("tcp", net.JoinHostPort(opts.Addr, "0"))
	if err != nil {
		return nil, err
	}
	l.HTTPAddr = netip.MustParseAddrPort(httpLn.Addr().String())
	l.serve(httpLn, Handler())
	ok = true
	return l, nil
}

// Ports maps the catalog's ports to the simulated endpoints' ports.
func (l *Lab) Ports() map[uint16]uint16 {
	return map[uint16]uint16{443: l.TLSAddr.Port(), 80: l.HTTPAddr.Port()}
}

// Close stops everything.
func (l *Lab) Close() {
	for i := len(l.stops) - 1; i >= 0; i-- {
		l.stops[i]()
	}
	l.stops = nil
}

func (l *Lab) serve(ln net.Listener, h http.Handler) {
	// Like the real services, the simulated endpoints keep quiet
	// connections open for long: Defender endpoints hold them for minutes.
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 15 * time.Minute, IdleTimeout: 15 * time.Minute,
		ErrorLog: log.New(io.Discard, "", 0)}
	go srv.Serve(ln)
	l.stops = append(l.stops, func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		srv.Close()
	})
}

// serves reports whether name is a catalog name (exact, or under a wildcard).
func (l *Lab) serves(name string) bool {
	name = strings.TrimSuffix(name, ".")
	if l.exact[name] {
		return true
	}
	for _, s := range l.wild {
		if strings.HasSuffix(name, "."+s) {
			return true
		}
	}
	return false
}

func (l *Lab) startDNS() error {
	pc, ln, err := ListenUDPTCP(l.addr.String())
	if err != nil {
		return err
	}
	l.DNSAddr = pc.LocalAddr().String()
	h := dns.HandlerFunc(l.serveDNS)
	for _, s := range []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}} {
		started := make(chan struct{})
		s.NotifyStartedFunc = func() { close(started) }
		go s.ActivateAndServe()
		<-started
		l.stops = append(l.stops, func() { s.Shutdown() })
	}
	return nil
}

// ListenUDPTCP opens a UDP socket and a TCP listener on the same free port
// of ip, as a DNS server needs. The OS picks the UDP port; the same TCP port
// may be taken, so it retries with another.
func ListenUDPTCP(ip string) (net.PacketConn, net.Listener, error) {
	var err error
	for range 20 {
		var pc net.PacketConn
		if pc, err = net.ListenPacket("udp", net.JoinHostPort(ip, "0")); err != nil {
			return nil, nil, err
		}
		var ln net.Listener
		if ln, err = net.Listen("tcp", pc.LocalAddr().String()); err == nil {
			return pc, ln, nil
		}
		pc.Close()
	}
	return nil, nil, err
}

func (l *Lab) serveDNS(w dns.ResponseWriter, req *dns.Msg) {
	Answer(w, req, func(name string) ([]netip.Addr, int) {
		if !l.serves(name) {
			return nil, dns.RcodeNameError
		}
		return []netip.Addr{l.addr}, dns.RcodeSuccess
	})
}

// Answer answers a single-question A or AAAA query authoritatively with the
// addresses lookup returns for the lower-cased name (only those of the
// asked family), or with lookup's rcode when it is not RcodeSuccess.
func Answer(w dns.ResponseWriter, req *dns.Msg, lookup func(name string) ([]netip.Addr, int)) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	if len(req.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	addrs, rcode := lookup(strings.ToLower(q.Name))
	if rcode != dns.RcodeSuccess {
		m.Rcode = rcode
		w.WriteMsg(m)
		return
	}
	for _, a := range addrs {
		hdr := dns.RR_Header{Name: q.Name, Class: dns.ClassINET, Ttl: 60}
		switch {
		case q.Qtype == dns.TypeA && a.Is4():
			hdr.Rrtype = dns.TypeA
			m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: a.AsSlice()})
		case q.Qtype == dns.TypeAAAA && a.Is6():
			hdr.Rrtype = dns.TypeAAAA
			m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr, AAAA: a.AsSlice()})
		}
	}
	w.WriteMsg(m)
}

// Handler answers like the Defender services answer the client analyzers'
// connectivity checks (the MDE Client Analyzer,
// learn.microsoft.com/defender-endpoint/overview-client-analyzer).
func Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, err := net.SplitHostPort(r.Host)
		if err != nil {
			host = r.Host
		}
		host = strings.ToLower(strings.TrimSuffix(host, "."))
		p := r.URL.Path
		switch {
		case strings.HasPrefix(host, "winatp-gw-") && (p == "/test" || p == "/commands/test"),
			strings.HasPrefix(host, "edr-") && p == "/edr/commands/test",
			(strings.HasSuffix(host, ".x.cp.wd.microsoft.com") || strings.HasSuffix(host, ".x.cp.wd.microsoft.us")) && p == "/api/report",
			strings.HasSuffix(host, ".vortex-win.data.microsoft.com") && p == "/health/keepalive",
			host == "go.microsoft.com" && p == "/fwlink/":
			w.WriteHeader(http.StatusOK)
		case strings.HasPrefix(host, "mdav.") && p == "/mdav/test":
			http.NotFound(w, r)
		case strings.HasSuffix(host, "-v20.events.data.microsoft.com") && p == "/ping":
			io.WriteString(w, "OK")
		case (strings.HasSuffix(host, ".blob.core.windows.net") || strings.HasSuffix(host, ".blob.core.usgovcloudapi.net")) && p == "/",
			host == "crl.microsoft.com" && p == "/":
			http.Error(w, "bad request", http.StatusBadRequest)
		case r.TLS == nil && (strings.HasSuffix(p, ".crl") || strings.HasSuffix(p, ".cab") || strings.HasSuffix(p, ".crt")):
			w.Header().Set("Content-Type", "application/pkix-crl")
			io.WriteString(w, "lab certificate revocation data for "+host+p)
		default:
			io.WriteString(w, "Defender lab endpoint "+host+p+"\n")
		}
	})
}
