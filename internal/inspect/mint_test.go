package inspect

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/defendergw/gateway/internal/testutil/fakeclock"
)

// newClock starts the tests' clock now (certificates are checked against
// the real time too).
func newClock() *fakeclock.Clock { return fakeclock.New(time.Now()) }

func newMinter(t testing.TB, ca *x509.Certificate, key crypto.Signer, opts MinterOptions) *Minter {
	t.Helper()
	// The settings' defaults (GATEWAY_INSPECT_LEAF_VALIDITY and
	// GATEWAY_INSPECT_CACHE_SIZE) where a test names neither.
	if opts.Validity == 0 {
		opts.Validity = 24 * time.Hour
	}
	if opts.CacheSize == 0 {
		opts.CacheSize = 1024
	}
	m, err := NewMinter(ca, key, opts)
	if err != nil {
		t.Fatalf("NewMinter: %v", err)
	}
	return m
}

func pool(ca *x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca)
	return p
}

func verify(leaf *x509.Certificate, ca *x509.Certificate, name string, at time.Time) error {
	_, err := leaf.Verify(x509.VerifyOptions{
		DNSName:     name,
		Roots:       pool(ca),
		CurrentTime: at,
		KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	return err
}

func TestCertificateVerifies(t *testing.T) {
	for _, caType := range []struct {
		name string
		rsa  bool
	}{{"ecdsa CA", false}, {"rsa CA", true}} {
		t.Run(caType.name, func(t *testing.T) {
			ca, key := newCA(t, caSpec{rsa: caType.rsa})
			clk := newClock()
			m := newMinter(t, ca, key, MinterOptions{Now: clk.Now})
			tests := []struct {
				host      string
				verifyAs  string // name passed to Verify
				wantCN    string
				wantDNS   []string
				wantIP    string
				otherName string // must not verify
			}{
				{host: "app.example.com", verifyAs: "app.example.com", wantCN: "app.example.com", wantDNS: []string{"app.example.com"}, otherName: "other.example.com"},
				{host: "App.Example.COM.", verifyAs: "app.example.com", wantCN: "app.example.com", wantDNS: []string{"app.example.com"}, otherName: "x.app.example.com"},
				{host: "192.0.2.7", verifyAs: "192.0.2.7", wantCN: "192.0.2.7", wantIP: "192.0.2.7", otherName: "192.0.2.8"},
				{host: "2001:db8::1", verifyAs: "2001:db8::1", wantCN: "2001:db8::1", wantIP: "2001:db8::1", otherName: "2001:db8::2"},
				{host: "[2001:db8::1]", verifyAs: "2001:db8::1", wantCN: "2001:db8::1", wantIP: "2001:db8::1", otherName: "app.example.com"},
			}
			for _, tt := range tests {
				t.Run(tt.host, func(t *testing.T) {
					c, err := m.Certificate(tt.host)
					if err != nil {
						t.Fatalf("Certificate(%q): %v", tt.host, err)
					}
					leaf := c.Leaf
					if err := verify(leaf, ca, tt.verifyAs, clk.Now()); err != nil {
						t.Errorf("Verify(%q): got %v, want nil", tt.verifyAs, err)
					}
					if err := verify(leaf, ca, tt.otherName, clk.Now()); err == nil {
						t.Errorf("Verify(%q): got nil, want a name mismatch error", tt.otherName)
					}
					if got := leaf.Subject.CommonName; got != tt.wantCN {
						t.Errorf("CN: got %q, want %q", got, tt.wantCN)
					}
					if got := leaf.DNSNames; fmt.Sprint(got) != fmt.Sprint(tt.wantDNS) {
						t.Errorf("DNSNames: got %q, want %q", got, tt.wantDNS)
					}
					var gotIP string
					if len(leaf.IPAddresses) == 1 {
						gotIP = leaf.IPAddresses[0].String()
					}
					if len(leaf.IPAddresses) > 1 || gotIP != tt.wantIP {
						t.Errorf("IPAddresses: got %v, want [%s]", leaf.IPAddresses, tt.wantIP)
					}
					if leaf.IsCA || !leaf.BasicConstraintsValid {
						t.Errorf("BasicConstraints: got IsCA=%v valid=%v, want IsCA=false valid=true", leaf.IsCA, leaf.BasicConstraintsValid)
					}
					if got, want := leaf.KeyUsage, x509.KeyUsageDigitalSignature; got != want {
						t.Errorf("KeyUsage: got %v, want %v", got, want)
					}
					if got := leaf.ExtKeyUsage; len(got) != 1 || got[0] != x509.ExtKeyUsageServerAuth {
						t.Errorf("ExtKeyUsage: got %v, want [ServerAuth]", got)
					}
					if got, want := leaf.AuthorityKeyId, ca.SubjectKeyId; len(want) == 0 || !bytes.Equal(got, want) {
						t.Errorf("AuthorityKeyId: got %x, want CA SubjectKeyId %x", got, want)
					}
					if pub, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
						t.Errorf("leaf key: got %T, want ECDSA P-256", leaf.PublicKey)
					}
					if got := leaf.SerialNumber.BitLen(); got < 100 || got > 128 {
						t.Errorf("serial: got %d bits, want a random 128-bit value", got)
					}
					if got := len(c.Certificate); got != 2 || !bytes.Equal(c.Certificate[1], ca.Raw) {
						t.Errorf("chain: got %d certificates, want leaf then the CA", got)
					}
					now := clk.Now()
					if want := now.Add(-backdate).Truncate(time.Second); !leaf.NotBefore.Equal(want) {
						t.Errorf("NotBefore: got %v, want %v", leaf.NotBefore, want)
					}
					if want := now.Add(24 * time.Hour).Truncate(time.Second); !leaf.NotAfter.Equal(want) {
						t.Errorf("NotAfter: got %v, want %v", leaf.NotAfter, want)
					}
				})
			}
		})
	}
}

func TestCertificateInvalidHost(t *testing.T) {
	ca, key := newCA(t, caSpec{})
	m := newMinter(t, ca, key, MinterOptions{})
	for _, host := range []string{"", ".", "*.example.com", "a..b", "-a.example.com", "a b.example.com", "fe80::1%eth0", "1:2:3", strings.Repeat("a", 64) + ".com"} {
		t.Run(host, func(t *testing.T) {
			if c, err := m.Certificate(host); err == nil {
				t.Errorf("Certificate(%q): got leaf %v, want an error", host, c.Leaf.Subject)
			}
		})
	}
}

// TestCertificateNormalisesLikeTheAllowlist: the leaf names the host as the
// allowlist decided it (punycode, lower case, no trailing dot).
func TestCertificateNormalisesLikeTheAllowlist(t *testing.T) {
	ca, key := newCA(t, caSpec{})
	m := newMinter(t, ca, key, MinterOptions{})
	for _, tt := range []struct{ host, want string }{
		{"bücher.example", "xn--bcher-kva.example"},
		{"WINATP-GW-WEU.Microsoft.com.", "winatp-gw-weu.microsoft.com"},
	} {
		t.Run(tt.host, func(t *testing.T) {
			c, err := m.Certificate(tt.host)
			if err != nil {
				t.Fatalf("Certificate(%q): %v", tt.host, err)
			}
			if got := c.Leaf.DNSNames; len(got) != 1 || got[0] != tt.want {
				t.Errorf("DNSNames = %q, want [%q]", got, tt.want)
			}
		})
	}
}

func TestNewMinterErrors(t *testing.T) {
	ca, key := newCA(t, caSpec{})
	_, otherKey := newCA(t, caSpec{})
	leaf, leafKey := newCA(t, caSpec{notCA: true, keyUsage: x509.KeyUsageDigitalSignature})
	tests := []struct {
		name string
		ca   *x509.Certificate
		key  crypto.Signer
		opts MinterOptions
		want string
	}{
		{"nil ca", nil, key, MinterOptions{}, "nil CA"},
		{"not a CA", leaf, leafKey, MinterOptions{}, "not a CA"},
		{"key mismatch", ca, otherKey, MinterOptions{}, "does not match"},
		{"negative validity", ca, key, MinterOptions{Validity: -time.Second}, "not positive"},
		{"no validity", ca, key, MinterOptions{}, "not positive"},
		{"negative cache size", ca, key, MinterOptions{Validity: time.Hour, CacheSize: -1}, "negative cache size"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewMinter(tt.ca, tt.key, tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("NewMinter: got error %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestValidityBoundedByCA(t *testing.T) {
	now := time.Now()
	tests := []struct {
		name         string
		caNotBefore  time.Time
		caNotAfter   time.Time
		validity     time.Duration
		wantNotAfter func(ca *x509.Certificate) time.Time
		wantNotBef   func(ca *x509.Certificate) time.Time
	}{
		{
			name: "CA outlives leaf", caNotAfter: now.Add(72 * time.Hour), validity: 24 * time.Hour,
			wantNotAfter: func(*x509.Certificate) time.Time { return now.Add(24 * time.Hour) },
			wantNotBef:   func(*x509.Certificate) time.Time { return now.Add(-time.Hour) },
		},
		{
			name: "CA expires first", caNotAfter: now.Add(2 * time.Hour), validity: 24 * time.Hour,
			wantNotAfter: func(ca *x509.Certificate) time.Time { return ca.NotAfter },
			wantNotBef:   func(*x509.Certificate) time.Time { return now.Add(-time.Hour) },
		},
		{
			name: "CA younger than backdate", caNotBefore: now.Add(-time.Minute), caNotAfter: now.Add(72 * time.Hour), validity: time.Hour,
			wantNotAfter: func(*x509.Certificate) time.Time { return now.Add(time.Hour) },
			wantNotBef:   func(ca *x509.Certificate) time.Time { return ca.NotBefore },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ca, key := newCA(t, caSpec{notBefore: tt.caNotBefore, notAfter: tt.caNotAfter})
			m := newMinter(t, ca, key, MinterOptions{Validity: tt.validity, Now: func() time.Time { return now }})
			c, err := m.Certificate("app.example.com")
			if err != nil {
				t.Fatal(err)
			}
			if got, want := c.Leaf.NotAfter, tt.wantNotAfter(ca).Truncate(time.Second); !got.Equal(want) {
				t.Errorf("NotAfter: got %v, want %v", got, want)
			}
			if got, want := c.Leaf.NotBefore, tt.wantNotBef(ca).Truncate(time.Second); !got.Equal(want) {
				t.Errorf("NotBefore: got %v, want %v", got, want)
			}
			if c.Leaf.NotAfter.After(ca.NotAfter) {
				t.Errorf("NotAfter: got %v, beyond CA NotAfter %v", c.Leaf.NotAfter, ca.NotAfter)
			}
		})
	}

	t.Run("CA expired at mint time", func(t *testing.T) {
		ca, key := newCA(t, caSpec{notAfter: now.Add(time.Hour)})
		m := newMinter(t, ca, key, MinterOptions{Now: func() time.Time { return now.Add(2 * time.Hour) }})
		if _, err := m.Certificate("app.example.com"); err == nil || !strings.Contains(err.Error(), "expired") {
			t.Errorf("Certificate: got error %v, want CA expired", err)
		}
	})
}

func TestCertificateCache(t *testing.T) {
	ca, key := newCA(t, caSpec{})
	clk := newClock()
	m := newMinter(t, ca, key, MinterOptions{Validity: 24 * time.Hour, Now: clk.Now})
	first, err := m.Certificate("app.example.com")
	if err != nil {
		t.Fatal(err)
	}
	// Remaining validity vs the 10% (2.4h) threshold, cumulative advances.
	steps := []struct {
		advance  time.Duration
		host     string
		wantSame bool
		wantMint int64
	}{
		{0, "app.example.com", true, 1},
		{0, "APP.example.com.", true, 1}, // same normalized host
		{time.Hour, "app.example.com", true, 1},
		{20 * time.Hour, "app.example.com", true, 1}, // 3h left
		{time.Hour, "app.example.com", false, 2},     // 2h left: re-mint
		{time.Minute, "app.example.com", true, 2},    // the new leaf is cached
		{0, "other.example.com", false, 3},
	}
	prev := first
	for i, s := range steps {
		t.Run(fmt.Sprintf("step%d", i), func(t *testing.T) {
			clk.Advance(s.advance)
			c, err := m.Certificate(s.host)
			if err != nil {
				t.Fatal(err)
			}
			if got := c == prev; got != s.wantSame {
				t.Errorf("same *tls.Certificate as before: got %v, want %v", got, s.wantSame)
			}
			if got := m.mints.Load(); got != s.wantMint {
				t.Errorf("mints: got %d, want %d", got, s.wantMint)
			}
			if err := verify(c.Leaf, ca, c.Leaf.Subject.CommonName, clk.Now()); err != nil {
				t.Errorf("Verify at the current clock: %v", err)
			}
			prev = c
		})
	}
}

func TestCacheLRU(t *testing.T) {
	ca, key := newCA(t, caSpec{})
	m := newMinter(t, ca, key, MinterOptions{CacheSize: 3})
	hosts := []string{"h0.example", "h1.example", "h2.example", "h3.example", "h4.example"}
	kept := map[string]*tls.Certificate{}
	for i, h := range hosts {
		c, err := m.Certificate(h)
		if err != nil {
			t.Fatal(err)
		}
		kept[h] = c
		if got := m.cacheLen(); got > 3 {
			t.Fatalf("after %d hosts: cache length got %d, want <= 3", i+1, got)
		}
		if i == 2 {
			// Touch h0 so h1 becomes least recently used.
			if _, err := m.Certificate("h0.example"); err != nil {
				t.Fatal(err)
			}
		}
	}
	if got, want := m.cacheLen(), 3; got != want {
		t.Errorf("cache length: got %d, want %d", got, want)
	}
	tests := []struct {
		host       string
		wantCached bool
	}{
		{"h0.example", true}, // recently used
		{"h4.example", true},
		{"h3.example", true},
		{"h1.example", false},
		{"h2.example", false},
	}
	for _, tt := range tests {
		t.Run(tt.host, func(t *testing.T) {
			if got := m.cached(tt.host) == kept[tt.host]; got != tt.wantCached {
				t.Errorf("cached: got %v, want %v", got, tt.wantCached)
			}
		})
	}
}

func TestConcurrentCertificateMintsOnce(t *testing.T) {
	ca, key := newCA(t, caSpec{rsa: true}) // slow signer widens the race window
	m := newMinter(t, ca, key, MinterOptions{})
	const n = 64
	var (
		wg    sync.WaitGroup
		start = make(chan struct{})
		got   [n]*tls.Certificate
		errs  [n]error
	)
	for i := range n {
		wg.Go(func() {
			<-start
			got[i], errs[i] = m.Certificate("app.example.com")
		})
	}
	close(start)
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("caller %d: %v", i, errs[i])
		}
		if got[i] != got[0] {
			t.Errorf("caller %d: got a different *tls.Certificate, want the shared one", i)
		}
	}
	if got := m.mints.Load(); got != 1 {
		t.Errorf("mints: got %d, want 1", got)
	}
}

func TestTLSHandshake(t *testing.T) {
	ca, key := newCA(t, caSpec{})
	m := newMinter(t, ca, key, MinterOptions{})
	tests := []struct {
		name        string
		connectHost string
		sni         string // "" sends no SNI
		verifyAs    string // name the client checks the served leaf against
		wantCN      string
	}{
		{"SNI equals CONNECT host", "app.example.com", "app.example.com", "app.example.com", "app.example.com"},
		{"SNI differs in case", "app.example.com", "APP.Example.com", "app.example.com", "app.example.com"},
		{"SNI absent", "app.example.com", "", "app.example.com", "app.example.com"},
		{"SNI names another host", "app.example.com", "evil.example.com", "app.example.com", "app.example.com"},
		{"IP CONNECT host", "127.0.0.1", "", "127.0.0.1", "127.0.0.1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := m.TLSConfig(tt.connectHost)
			if cfg.MinVersion != tls.VersionTLS12 {
				t.Errorf("MinVersion: got %x, want TLS 1.2", cfg.MinVersion)
			}
			var sawSNI string
			get := cfg.GetCertificate
			cfg.GetCertificate = func(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
				sawSNI = h.ServerName
				return get(h)
			}
			ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			srvErr := make(chan error, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					srvErr <- err
					return
				}
				defer c.Close()
				if err := c.(*tls.Conn).Handshake(); err != nil {
					srvErr <- err
					return
				}
				_, err = c.Write([]byte("ok"))
				srvErr <- err
			}()

			clientCfg := &tls.Config{
				RootCAs:    pool(ca),
				ServerName: tt.sni,
				NextProtos: []string{"h2", "http/1.1"},
			}
			if tt.sni == "" || !strings.EqualFold(tt.sni, tt.verifyAs) {
				// Verify against the CONNECT host ourselves: with no (or a
				// different) ServerName the stock check cannot.
				clientCfg.InsecureSkipVerify = true
				clientCfg.VerifyConnection = func(cs tls.ConnectionState) error {
					inter := x509.NewCertPool()
					for _, c := range cs.PeerCertificates[1:] {
						inter.AddCert(c)
					}
					_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{DNSName: tt.verifyAs, Roots: pool(ca), Intermediates: inter})
					return err
				}
			}
			raw, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			conn := tls.Client(raw, clientCfg)
			defer conn.Close()
			if err := conn.Handshake(); err != nil {
				t.Fatalf("client handshake: got %v, want nil", err)
			}
			body, err := io.ReadAll(conn)
			if err != nil || string(body) != "ok" {
				t.Errorf("read: got %q, %v, want \"ok\"", body, err)
			}
			if err := <-srvErr; err != nil {
				t.Errorf("server: %v", err)
			}
			cs := conn.ConnectionState()
			if got := cs.PeerCertificates[0].Subject.CommonName; got != tt.wantCN {
				t.Errorf("served CN: got %q, want %q", got, tt.wantCN)
			}
			if got := cs.NegotiatedProtocol; got != "http/1.1" {
				t.Errorf("ALPN: got %q, want http/1.1", got)
			}
			if sawSNI != tt.sni {
				t.Errorf("server saw SNI: got %q, want %q", sawSNI, tt.sni)
			}
		})
	}
}

func BenchmarkCertificateCached(b *testing.B) {
	ca, key := newCA(b, caSpec{})
	m := newMinter(b, ca, key, MinterOptions{})
	if _, err := m.Certificate("app.example.com"); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := m.Certificate("app.example.com"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCertificateMint mints a leaf per iteration (distinct hosts, so
// every call misses; the default cache evicts along the way).
func BenchmarkCertificateMint(b *testing.B) {
	for _, ct := range []struct {
		name string
		rsa  bool
	}{{"ecdsa-ca", false}, {"rsa2048-ca", true}} {
		b.Run(ct.name, func(b *testing.B) {
			ca, key := newCA(b, caSpec{rsa: ct.rsa})
			m := newMinter(b, ca, key, MinterOptions{})
			hosts := make([]string, 4096)
			for i := range hosts {
				hosts[i] = fmt.Sprintf("h%d.example.com", i)
			}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if _, err := m.Certificate(hosts[i%len(hosts)]); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}

// BenchmarkLeafKeyGenerate is what a per-leaf key would add to each mint.
func BenchmarkLeafKeyGenerate(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			b.Fatal(err)
		}
	}
}
