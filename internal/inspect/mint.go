package inspect

import (
	"container/list"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/defendergw/gateway/internal/allowlist"
)

const (
	// backdate is how far a leaf's NotBefore precedes its minting, for
	// clients whose clocks run behind.
	backdate = time.Hour
)

// MinterOptions tune a Minter. Their defaults are the settings' (see
// internal/config), not restated here.
type MinterOptions struct {
	// Validity is how long a leaf stays valid after it is minted; required. NotBefore is backdated 1h for clock skew (but not before the
	// CA's NotBefore) and NotAfter never goes beyond the CA's NotAfter.
	Validity time.Duration
	// CacheSize bounds the number of cached leaves; zero caches none. The
	// least recently used leaf is evicted first.
	CacheSize int
	// Now, if non-nil, is the clock; if nil, time.Now.
	Now func() time.Time
}

// Minter issues leaf certificates from a CA. It is safe for concurrent use.
type Minter struct {
	caCert   *x509.Certificate
	caKey    crypto.Signer
	caAKI    []byte
	leafKey  *ecdsa.PrivateKey
	validity time.Duration
	now      func() time.Time

	group singleflight.Group

	mu      sync.Mutex
	size    int
	entries map[string]*list.Element // of *entry
	lru     list.List                // front = most recently used

	mints atomic.Int64 // leaves minted, for tests
}

type entry struct {
	host      string
	cert      *tls.Certificate
	refreshAt time.Time // re-mint from here on: less than 10% of validity left
}

// NewMinter returns a Minter issuing leaves signed by caCert/caKey. It
// checks that caCert is a CA and that caKey matches it; the CA's validity
// period is checked each time a leaf is minted.
func NewMinter(caCert *x509.Certificate, caKey crypto.Signer, opts MinterOptions) (*Minter, error) {
	if caCert == nil || caKey == nil {
		return nil, errors.New("inspect: nil CA certificate or key")
	}
	if err := checkCA(caCert); err != nil {
		return nil, fmt.Errorf("inspect: ca cert: %w", err)
	}
	if !keyMatches(caCert, caKey) {
		return nil, errors.New("inspect: ca key does not match the certificate")
	}
	if opts.Validity <= 0 {
		return nil, fmt.Errorf("inspect: leaf validity %v is not positive", opts.Validity)
	}
	if opts.CacheSize < 0 {
		return nil, fmt.Errorf("inspect: negative cache size %d", opts.CacheSize)
	}
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("inspect: generate leaf key: %w", err)
	}
	aki := caCert.SubjectKeyId
	if len(aki) == 0 {
		// RFC 5280 4.2.1.2 method (1): SHA-1 of the subjectPublicKey bits.
		var spki struct {
			Algorithm pkix.AlgorithmIdentifier
			PublicKey asn1.BitString
		}
		if _, err := asn1.Unmarshal(caCert.RawSubjectPublicKeyInfo, &spki); err == nil {
			sum := sha1.Sum(spki.PublicKey.RightAlign())
			aki = sum[:]
		}
	}
	m := &Minter{
		caCert:   caCert,
		caKey:    caKey,
		caAKI:    aki,
		leafKey:  leafKey,
		validity: opts.Validity,
		now:      opts.Now,
		size:     opts.CacheSize,
		entries:  make(map[string]*list.Element),
	}
	if m.now == nil {
		m.now = time.Now
	}
	return m, nil
}

// Certificate returns a leaf for host (a DNS name or an IP literal, IPv6
// with or without brackets), from the cache when one with at least 10% of
// its validity left exists and minted otherwise. Concurrent calls for one
// host mint once and share the result. The chain holds the leaf and the CA
// certificate; Leaf is set.
func (m *Minter) Certificate(host string) (*tls.Certificate, error) {
	key, ip, err := normalizeHost(host)
	if err != nil {
		return nil, err
	}
	if c := m.cached(key); c != nil {
		return c, nil
	}
	v, err, _ := m.group.Do(key, func() (any, error) {
		// A flight that finished between our cache miss and Do has
		// already stored a fresh leaf.
		if c := m.cached(key); c != nil {
			return c, nil
		}
		c, refreshAt, err := m.mint(key, ip)
		if err != nil {
			return nil, err
		}
		m.store(key, c, refreshAt)
		return c, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*tls.Certificate), nil
}

// TLSConfig returns a server configuration for terminating a tunnel whose
// CONNECT named host. The certificate served is Certificate(sni) when the
// ClientHello's SNI equals host case-insensitively (ignoring a trailing
// dot), and Certificate(host) otherwise, including when SNI is absent: a
// leaf is only ever minted for the host the allowlist decision was made on.
// ALPN offers http/1.1 only, the gateway's inner protocol.
func (m *Minter) TLSConfig(host string) *tls.Config {
	want := strings.TrimSuffix(host, ".")
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"http/1.1"},
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			if sni := hello.ServerName; sni != "" && strings.EqualFold(strings.TrimSuffix(sni, "."), want) {
				return m.Certificate(sni)
			}
			return m.Certificate(host)
		},
	}
}

func (m *Minter) cached(key string) *tls.Certificate {
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	el, ok := m.entries[key]
	if !ok {
		return nil
	}
	e := el.Value.(*entry)
	if !now.Before(e.refreshAt) {
		return nil
	}
	m.lru.MoveToFront(el)
	return e.cert
}

func (m *Minter) store(key string, c *tls.Certificate, refreshAt time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if el, ok := m.entries[key]; ok {
		e := el.Value.(*entry)
		e.cert, e.refreshAt = c, refreshAt
		m.lru.MoveToFront(el)
		return
	}
	m.entries[key] = m.lru.PushFront(&entry{host: key, cert: c, refreshAt: refreshAt})
	for m.lru.Len() > m.size {
		old := m.lru.Back()
		m.lru.Remove(old)
		delete(m.entries, old.Value.(*entry).host)
	}
}

func (m *Minter) cacheLen() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lru.Len()
}

// mint issues a leaf for the normalized host key (ip is valid for IP
// literals) and returns when it should be replaced.
func (m *Minter) mint(key string, ip netip.Addr) (*tls.Certificate, time.Time, error) {
	now := m.now()
	ca := m.caCert
	if !now.Before(ca.NotAfter) {
		return nil, time.Time{}, fmt.Errorf("inspect: CA certificate expired at %s", ca.NotAfter.UTC().Format(time.RFC3339))
	}
	if now.Before(ca.NotBefore) {
		return nil, time.Time{}, fmt.Errorf("inspect: CA certificate not valid until %s", ca.NotBefore.UTC().Format(time.RFC3339))
	}
	notBefore := now.Add(-backdate)
	if notBefore.Before(ca.NotBefore) {
		notBefore = ca.NotBefore
	}
	notAfter := now.Add(m.validity)
	if notAfter.After(ca.NotAfter) {
		notAfter = ca.NotAfter
	}
	var raw [16]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return nil, time.Time{}, fmt.Errorf("inspect: serial: %w", err)
	}
	serial := new(big.Int).SetBytes(raw[:])
	if serial.Sign() == 0 {
		serial.SetInt64(1)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: key},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  false,
		AuthorityKeyId:        m.caAKI,
	}
	if ip.IsValid() {
		tmpl.IPAddresses = []net.IP{ip.AsSlice()}
	} else {
		tmpl.DNSNames = []string{key}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &m.leafKey.PublicKey, m.caKey)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("inspect: mint leaf for %s: %w", key, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("inspect: parse leaf for %s: %w", key, err)
	}
	m.mints.Add(1)
	// Re-mint once less than 10% of the granted validity remains. Measured
	// from the mint time, so a leaf cut short by the CA's NotAfter is not
	// re-minted on every call.
	refreshAt := leaf.NotAfter.Add(-leaf.NotAfter.Sub(now) / 10)
	return &tls.Certificate{
		Certificate: [][]byte{der, ca.Raw},
		PrivateKey:  m.leafKey,
		Leaf:        leaf,
	}, refreshAt, nil
}

// normalizeHost returns the cache key and certificate name for host: the
// canonical IP string (and the address) for IP literals, or the name as the
// allowlist normalises a request's host (lower case, no trailing dot,
// punycode, every label checked), so that the certificate names exactly
// what was decided. Wildcards and malformed names are rejected: a leaf
// names exactly one host.
func normalizeHost(host string) (string, netip.Addr, error) {
	h := host
	if strings.IndexByte(h, ':') >= 0 && !strings.HasPrefix(h, "[") {
		h = "[" + h + "]" // an IPv6 literal as a decided target holds it
	}
	name, ip, err := allowlist.NormalizeHost(h)
	if err != nil {
		return "", netip.Addr{}, fmt.Errorf("inspect: invalid host %q: %w", host, err)
	}
	if ip.IsValid() {
		ip = ip.Unmap()
		return ip.String(), ip, nil
	}
	if strings.IndexByte(name, '*') >= 0 {
		return "", netip.Addr{}, fmt.Errorf("inspect: invalid host %q: wildcard", host)
	}
	return name, netip.Addr{}, nil
}
