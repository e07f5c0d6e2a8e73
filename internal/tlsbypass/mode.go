package tlsbypass

import (
	"errors"
	"fmt"

	"github.com/defendergw/gateway/internal/allowlist"
)

// Mode is how an allowed CONNECT is carried.
type Mode uint8

const (
	// Bypass relays the tunnel raw, after verifying its ClientHello.
	Bypass Mode = iota
	// Inspect terminates TLS with a minted certificate and decides every
	// inner request with its path.
	Inspect
)

func (m Mode) String() string {
	if m == Inspect {
		return "inspected"
	}
	return "bypass"
}

// Choose picks the mode of an allowed tunnel. TLS-exempt destinations (every
// Defender row: their connections pin certificates, and Microsoft asks that
// they be excluded from HTTPS scanning) are never inspected, whatever else
// applies; the rest is inspected only when the operator supplied a CA.
func Choose(d *allowlist.Decision, canInspect bool) Mode {
	if d.TLSExempt || !canInspect {
		return Bypass
	}
	return Inspect
}

// ErrSNIMismatch reports a ClientHello whose server name is missing or is not
// the name the CONNECT request asked for (domain fronting).
var ErrSNIMismatch = errors.New("client hello server name does not match the connect target")

// CheckSNI verifies that a ClientHello names the CONNECT target, after the
// same normalisation as the allowlist. For an IP-literal target the
// ClientHello must carry no server name: RFC 6066 §3 forbids IP literals in
// SNI, so a name there would be another destination.
func CheckSNI(h Hello, t allowlist.Target) error {
	if t.IP.IsValid() {
		if h.ServerName != "" {
			return fmt.Errorf("sni %q for address %s: %w", h.ServerName, t.Host, ErrSNIMismatch)
		}
		return nil
	}
	if h.ServerName == "" {
		return fmt.Errorf("no sni for %s: %w", t.Host, ErrSNIMismatch)
	}
	name, ip, err := allowlist.NormalizeHost(h.ServerName)
	if err != nil || ip.IsValid() || name != t.Host {
		return fmt.Errorf("sni %q for %s: %w", h.ServerName, t.Host, ErrSNIMismatch)
	}
	return nil
}
