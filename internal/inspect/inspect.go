// Package inspect holds the certificate authority used for optional TLS
// inspection of non-exempt tunnels: when the operator supplies a CA
// certificate and key, the gateway terminates CONNECT tunnels that are not
// exempt from inspection (Defender's pinned service connections always are)
// and presents a leaf certificate minted here for the host the CONNECT named.
//
// LoadCA reads and checks the operator's CA; a Minter issues leaves from it.
// Leaves are short-lived (24h by default, backdated 1h for client clock skew,
// never outliving the CA), name exactly the CONNECT host (one DNS name or one
// IP address in the SAN, never a wildcard), are marked as not being CAs, and
// carry ServerAuth only. Minted leaves are kept in a bounded LRU cache and
// concurrent requests for one host mint once.
//
// Every leaf a Minter issues shares one ECDSA P-256 key pair generated when
// the Minter is created. This is acceptable because the leaf private key
// never leaves the process: it is not written to disk, logged or exported,
// and anyone able to read it from the process's memory can read the CA key
// beside it and mint any leaf they like, so per-leaf keys would add no
// isolation. Reusing it removes key generation from the mint path (see
// BenchmarkLeafKeyGenerate against BenchmarkCertificateMint); signing with
// the CA key dominates the remaining cost.
package inspect

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"
)

// LoadCA reads a PEM certificate and a PEM private key (PKCS#8, PKCS#1 RSA
// or SEC1 EC) and checks that the certificate is a CA (BasicConstraints with
// IsCA, and KeyUsageCertSign when KeyUsage is present), that the key matches
// the certificate's public key and that the certificate is currently valid.
// The first CERTIFICATE block of certFile is the CA; other blocks are
// ignored. Errors name the file and what is wrong with it, e.g.
// "ca key /path: does not match the certificate in /other/path".
func LoadCA(certFile, keyFile string) (*x509.Certificate, crypto.Signer, error) {
	cert, err := readCACert(certFile)
	if err != nil {
		return nil, nil, err
	}
	if err := checkCA(cert); err != nil {
		return nil, nil, fmt.Errorf("ca cert %s: %w", certFile, err)
	}
	now := time.Now()
	if now.Before(cert.NotBefore) {
		return nil, nil, fmt.Errorf("ca cert %s: not valid until %s (now %s)",
			certFile, cert.NotBefore.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	if now.After(cert.NotAfter) {
		return nil, nil, fmt.Errorf("ca cert %s: expired at %s (now %s)",
			certFile, cert.NotAfter.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	key, err := readKey(keyFile)
	if err != nil {
		return nil, nil, err
	}
	if !keyMatches(cert, key) {
		return nil, nil, fmt.Errorf("ca key %s: does not match the certificate in %s", keyFile, certFile)
	}
	return cert, key, nil
}

func readFile(kind, path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err // the path is already in our prefix
		}
		return nil, fmt.Errorf("%s %s: read: %w", kind, path, err)
	}
	return data, nil
}

func readCACert(path string) (*x509.Certificate, error) {
	data, err := readFile("ca cert", path)
	if err != nil {
		return nil, err
	}
	blocks, err := pemBlocks("ca cert", path, data)
	if err != nil {
		return nil, err
	}
	for _, block := range blocks {
		if block.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("ca cert %s: parse certificate: %w", path, err)
		}
		return cert, nil
	}
	return nil, fmt.Errorf("ca cert %s: no CERTIFICATE PEM block found", path)
}

// pemBlocks returns the PEM blocks of data in order; none is an error
// naming what the file should have been.
func pemBlocks(what, path string, data []byte) ([]*pem.Block, error) {
	var blocks []*pem.Block
	for rest := data; ; {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			break
		}
		blocks = append(blocks, block)
	}
	if len(blocks) == 0 {
		return nil, fmt.Errorf("%s %s: not PEM: no PEM block found", what, path)
	}
	return blocks, nil
}

// checkCA reports why cert cannot issue leaves, or nil.
func checkCA(cert *x509.Certificate) error {
	if !cert.BasicConstraintsValid || !cert.IsCA {
		return errors.New("not a CA certificate (BasicConstraints CA:TRUE missing)")
	}
	if cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return errors.New("not allowed to sign certificates (KeyUsage lacks keyCertSign)")
	}
	return nil
}

func readKey(path string) (crypto.Signer, error) {
	data, err := readFile("ca key", path)
	if err != nil {
		return nil, err
	}
	blocks, err := pemBlocks("ca key", path, data)
	if err != nil {
		return nil, err
	}
	for _, block := range blocks {
		var key any
		switch block.Type {
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		case "RSA PRIVATE KEY":
			if _, enc := block.Headers["Proc-Type"]; enc {
				return nil, fmt.Errorf("ca key %s: encrypted keys are not supported", path)
			}
			key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		case "EC PRIVATE KEY":
			if _, enc := block.Headers["Proc-Type"]; enc {
				return nil, fmt.Errorf("ca key %s: encrypted keys are not supported", path)
			}
			key, err = x509.ParseECPrivateKey(block.Bytes)
		case "ENCRYPTED PRIVATE KEY":
			return nil, fmt.Errorf("ca key %s: encrypted keys are not supported", path)
		default:
			continue // e.g. "EC PARAMETERS" ahead of the key (openssl ecparam -genkey)
		}
		if err != nil {
			return nil, fmt.Errorf("ca key %s: parse %s: %w", path, block.Type, err)
		}
		switch k := key.(type) {
		case *ecdsa.PrivateKey:
			return k, nil
		case *rsa.PrivateKey:
			return k, nil
		case ed25519.PrivateKey:
			return k, nil
		default:
			return nil, fmt.Errorf("ca key %s: unsupported key type %T", path, key)
		}
	}
	return nil, fmt.Errorf("ca key %s: no private key PEM block found", path)
}

func keyMatches(cert *x509.Certificate, key crypto.Signer) bool {
	pub, ok := cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	return ok && pub.Equal(key.Public())
}
