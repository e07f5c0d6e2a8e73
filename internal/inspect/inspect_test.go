package inspect

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type caSpec struct {
	rsa       bool
	notBefore time.Time // zero: now-1h
	notAfter  time.Time // zero: now+10 days
	notCA     bool
	keyUsage  x509.KeyUsage // zero: CertSign|CRLSign
}

// newCA returns a self-signed certificate (a CA unless spec.notCA) and its key.
func newCA(t testing.TB, spec caSpec) (*x509.Certificate, crypto.Signer) {
	t.Helper()
	var key crypto.Signer
	var err error
	if spec.rsa {
		key, err = rsa.GenerateKey(rand.Reader, 2048)
	} else {
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if spec.notBefore.IsZero() {
		spec.notBefore = now.Add(-time.Hour)
	}
	if spec.notAfter.IsZero() {
		spec.notAfter = now.Add(10 * 24 * time.Hour)
	}
	if spec.keyUsage == 0 {
		spec.keyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "gateway test CA"},
		NotBefore:             spec.notBefore,
		NotAfter:              spec.notAfter,
		KeyUsage:              spec.keyUsage,
		BasicConstraintsValid: true,
		IsCA:                  !spec.notCA,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

func writeFile(t testing.TB, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func certPEM(cert *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
}

type keyFormat int

const (
	pkcs8 keyFormat = iota
	pkcs1           // RSA only
	sec1            // EC only
)

func keyPEM(t testing.TB, key crypto.Signer, f keyFormat) []byte {
	t.Helper()
	var block *pem.Block
	switch f {
	case pkcs8:
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		block = &pem.Block{Type: "PRIVATE KEY", Bytes: der}
	case pkcs1:
		block = &pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key.(*rsa.PrivateKey))}
	case sec1:
		der, err := x509.MarshalECPrivateKey(key.(*ecdsa.PrivateKey))
		if err != nil {
			t.Fatal(err)
		}
		block = &pem.Block{Type: "EC PRIVATE KEY", Bytes: der}
	}
	return pem.EncodeToMemory(block)
}

func TestLoadCA(t *testing.T) {
	ecCert, ecKey := newCA(t, caSpec{})
	rsaCert, rsaKey := newCA(t, caSpec{rsa: true})
	// openssl ecparam -genkey writes EC PARAMETERS before the key.
	ecParams := append(pem.EncodeToMemory(&pem.Block{Type: "EC PARAMETERS", Bytes: []byte{6, 8, 42, 134, 72, 206, 61, 3, 1, 7}}), keyPEM(t, ecKey, sec1)...)
	tests := []struct {
		name string
		cert *x509.Certificate
		key  []byte
	}{
		{"ecdsa pkcs8", ecCert, keyPEM(t, ecKey, pkcs8)},
		{"ecdsa sec1", ecCert, keyPEM(t, ecKey, sec1)},
		{"ecdsa sec1 with ec parameters", ecCert, ecParams},
		{"rsa pkcs8", rsaCert, keyPEM(t, rsaKey, pkcs8)},
		{"rsa pkcs1", rsaCert, keyPEM(t, rsaKey, pkcs1)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			certFile := writeFile(t, "ca.pem", certPEM(tt.cert))
			keyFile := writeFile(t, "ca.key", tt.key)
			cert, key, err := LoadCA(certFile, keyFile)
			if err != nil {
				t.Fatalf("LoadCA: got error %v, want nil", err)
			}
			if !cert.Equal(tt.cert) {
				t.Errorf("LoadCA cert: got subject %v, want %v", cert.Subject, tt.cert.Subject)
			}
			if !keyMatches(cert, key) {
				t.Errorf("LoadCA key: got a key not matching the certificate")
			}
		})
	}
}

func TestLoadCAErrors(t *testing.T) {
	ecCert, ecKey := newCA(t, caSpec{})
	_, otherKey := newCA(t, caSpec{})
	leafCert, leafKey := newCA(t, caSpec{notCA: true, keyUsage: x509.KeyUsageDigitalSignature})
	noSignCert, noSignKey := newCA(t, caSpec{keyUsage: x509.KeyUsageDigitalSignature})
	now := time.Now()
	expiredCert, expiredKey := newCA(t, caSpec{notBefore: now.Add(-48 * time.Hour), notAfter: now.Add(-time.Hour)})
	futureCert, futureKey := newCA(t, caSpec{notBefore: now.Add(time.Hour)})
	missing := filepath.Join(t.TempDir(), "missing.pem")
	encrypted := pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: []byte{1, 2, 3}})

	tests := []struct {
		name     string
		cert     []byte // nil: certFile is missing
		key      []byte // nil: keyFile is missing
		wantFile string // "cert" or "key": which file the error names
		wantMsg  string
	}{
		{"missing cert file", nil, keyPEM(t, ecKey, pkcs8), "cert", "no such file"},
		{"missing key file", certPEM(ecCert), nil, "key", "no such file"},
		{"cert not PEM", []byte("hello"), keyPEM(t, ecKey, pkcs8), "cert", "not PEM"},
		{"cert without certificate block", keyPEM(t, ecKey, pkcs8), keyPEM(t, ecKey, pkcs8), "cert", "no CERTIFICATE"},
		{"cert garbage DER", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1, 2}}), keyPEM(t, ecKey, pkcs8), "cert", "parse certificate"},
		{"key not PEM", certPEM(ecCert), []byte("hello"), "key", "not PEM"},
		{"key without key block", certPEM(ecCert), certPEM(ecCert), "key", "no private key"},
		{"key garbage DER", certPEM(ecCert), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1, 2}}), "key", "parse PRIVATE KEY"},
		{"key encrypted", certPEM(ecCert), encrypted, "key", "encrypted"},
		{"key mismatch", certPEM(ecCert), keyPEM(t, otherKey, pkcs8), "key", "does not match the certificate"},
		{"not a CA", certPEM(leafCert), keyPEM(t, leafKey, pkcs8), "cert", "not a CA"},
		{"no cert sign usage", certPEM(noSignCert), keyPEM(t, noSignKey, pkcs8), "cert", "keyCertSign"},
		{"expired CA", certPEM(expiredCert), keyPEM(t, expiredKey, pkcs8), "cert", "expired at"},
		{"not yet valid CA", certPEM(futureCert), keyPEM(t, futureKey, pkcs8), "cert", "not valid until"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			certFile, keyFile := missing, missing
			if tt.cert != nil {
				certFile = writeFile(t, "ca.pem", tt.cert)
			}
			if tt.key != nil {
				keyFile = writeFile(t, "ca.key", tt.key)
			}
			_, _, err := LoadCA(certFile, keyFile)
			if err == nil {
				t.Fatalf("LoadCA: got nil error, want %q", tt.wantMsg)
			}
			wantPrefix := "ca cert " + certFile + ": "
			if tt.wantFile == "key" {
				wantPrefix = "ca key " + keyFile + ": "
			}
			if got := err.Error(); !strings.HasPrefix(got, wantPrefix) || !strings.Contains(got, tt.wantMsg) {
				t.Errorf("LoadCA error: got %q, want prefix %q containing %q", got, wantPrefix, tt.wantMsg)
			}
		})
	}
}
