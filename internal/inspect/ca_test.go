package inspect

import (
	"crypto/x509"
	"testing"
	"time"
)

func TestNewCAWriteLoad(t *testing.T) {
	cert, key, err := NewCA("lab CA", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, err := WriteCA(t.TempDir(), cert, key)
	if err != nil {
		t.Fatal(err)
	}
	// The written pair passes the same checks as an operator's CA.
	c2, k2, err := LoadCA(certFile, keyFile)
	if err != nil {
		t.Fatalf("LoadCA of a NewCA pair: %v", err)
	}
	m, err := NewMinter(c2, k2, MinterOptions{Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := m.Certificate("winatp-gw-weu.microsoft.com")
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	parsed, _ := x509.ParseCertificate(leaf.Certificate[0])
	if _, err := parsed.Verify(x509.VerifyOptions{Roots: pool, DNSName: "winatp-gw-weu.microsoft.com"}); err != nil {
		t.Errorf("leaf from a NewCA does not verify: %v", err)
	}
}
