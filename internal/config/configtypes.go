package config

import (
	"fmt"
	"log/slog"
	"net/netip"
	"net/url"
	"strings"

	"github.com/defendergw/gateway/internal/allowlist"
	"github.com/defendergw/gateway/internal/parent"
)

// The setting types: caarlos0/env parses every GATEWAY_ variable straight
// into one of these through encoding.TextUnmarshaler, so Config holds the
// parsed values (no second copy filled in later) and a bad value is
// reported by the parser with the variable's name. An empty element of a
// list (a trailing comma, a blank between commas) parses to the zero value
// and is dropped by Config.compact.

// prefix is a CIDR prefix or a single address (a /32 or /128).
type prefix struct{ netip.Prefix }

func (p *prefix) UnmarshalText(b []byte) error {
	s := strings.TrimSpace(string(b))
	if s == "" {
		*p = prefix{}
		return nil
	}
	pf, err := netip.ParsePrefix(s)
	if err != nil {
		a, aerr := netip.ParseAddr(s)
		if aerr != nil {
			return fmt.Errorf("%q is not a CIDR prefix or address", s)
		}
		pf = netip.PrefixFrom(a, a.BitLen())
	}
	if pf.Masked() != pf {
		return fmt.Errorf("%q has host bits set (did you mean %s?)", s, pf.Masked())
	}
	p.Prefix = pf
	return nil
}

// dataLocation is a commercial data location of GATEWAY_GEOGRAPHIES.
type dataLocation struct {
	allowlist.Geography
	set bool
}

func (d *dataLocation) UnmarshalText(b []byte) error {
	s := strings.TrimSpace(string(b))
	if s == "" {
		*d = dataLocation{}
		return nil
	}
	g, err := allowlist.ParseDataLocation(s)
	if err != nil {
		return err
	}
	*d = dataLocation{g, true}
	return nil
}

// port is a TCP port, 1 to 65535.
type port uint16

func (p *port) UnmarshalText(b []byte) error {
	s := strings.TrimSpace(string(b))
	if s == "" {
		*p = 0
		return nil
	}
	n, err := allowlist.ParsePort(s)
	if err != nil {
		return fmt.Errorf("%q is not a port", s)
	}
	*p = port(n)
	return nil
}

// blobScope is GATEWAY_BLOB_SCOPE.
type blobScope struct{ allowlist.BlobScope }

func (s *blobScope) UnmarshalText(b []byte) error {
	v, err := allowlist.ParseBlobScope(string(b))
	s.BlobScope = v
	return err
}

// logLevel is GATEWAY_LOG_LEVEL.
type logLevel struct{ slog.Level }

func (l *logLevel) UnmarshalText(b []byte) error {
	if err := l.Level.UnmarshalText(b); err != nil {
		return fmt.Errorf("want debug, info, warn or error, got %q", b)
	}
	return nil
}

// word parses one of want (matched exactly, or case-insensitively when
// fold), into the canonical spelling.
func word(b []byte, fold bool, want ...string) (string, error) {
	s := string(b)
	for _, w := range want {
		if s == w || (fold && strings.EqualFold(s, w)) {
			return w, nil
		}
	}
	return "", fmt.Errorf("want %s, got %q", orList(want), s)
}

func orList(w []string) string {
	if len(w) == 2 {
		return w[0] + " or " + w[1]
	}
	return strings.Join(w[:len(w)-1], ", ") + " or " + w[len(w)-1]
}

// The word settings.
type (
	modeSetting      string // GATEWAY_MODE: enforce or audit
	unlistedSetting  string // GATEWAY_UNLISTED: deny or authenticated
	anonymousSetting string // GATEWAY_ANONYMOUS: listed or none
	eventFormat      string // GATEWAY_ACCESS_LOG_FORMAT: json or squid
	logFormat        string // GATEWAY_LOG_FORMAT: json or text
	tunnelCopy       string // GATEWAY_TUNNEL_COPY: buffer or splice
	pacDefault       string // GATEWAY_PAC_DEFAULT: DIRECT or PROXY (any case)
)

func (m *modeSetting) UnmarshalText(b []byte) error {
	w, err := word(b, false, "enforce", "audit")
	*m = modeSetting(w)
	return err
}

func (u *unlistedSetting) UnmarshalText(b []byte) error {
	w, err := word(b, false, "deny", "authenticated")
	*u = unlistedSetting(w)
	return err
}

func (a *anonymousSetting) UnmarshalText(b []byte) error {
	w, err := word(b, false, "listed", "none")
	*a = anonymousSetting(w)
	return err
}

func (f *eventFormat) UnmarshalText(b []byte) error {
	w, err := word(b, false, "json", "squid")
	*f = eventFormat(w)
	return err
}

func (f *logFormat) UnmarshalText(b []byte) error {
	w, err := word(b, false, "json", "text")
	*f = logFormat(w)
	return err
}

func (t *tunnelCopy) UnmarshalText(b []byte) error {
	w, err := word(b, false, "buffer", "splice")
	*t = tunnelCopy(w)
	return err
}

func (p *pacDefault) UnmarshalText(b []byte) error {
	w, err := word(b, true, "DIRECT", "PROXY")
	*p = pacDefault(w)
	return err
}

// parentTarget is GATEWAY_PARENT_TARGET: address or name.
type parentTarget string

func (t *parentTarget) UnmarshalText(b []byte) error {
	w, err := word(b, false, "address", "name")
	*t = parentTarget(w)
	return err
}

// parentURL is one parent proxy of GATEWAY_PARENT_PROXY,
// http://[user:pass@]host:port. Its String and errors never show the
// password.
type parentURL struct{ u *url.URL }

func (p *parentURL) UnmarshalText(b []byte) error {
	if strings.TrimSpace(string(b)) == "" {
		*p = parentURL{}
		return nil
	}
	u, err := parent.ParseURL(string(b))
	if err != nil {
		return err
	}
	p.u = u
	return nil
}

// String is the URL with its password replaced by xxxxx.
func (p parentURL) String() string {
	if p.u == nil {
		return ""
	}
	return p.u.Redacted()
}

// hostPattern is one GATEWAY_PARENT_BYPASS pattern: an exact name,
// "*.suffix" or an IP literal, normalised as the allowlist does a rule's
// host.
type hostPattern string

func (h *hostPattern) UnmarshalText(b []byte) error {
	s := strings.TrimSpace(string(b))
	if s == "" {
		*h = ""
		return nil
	}
	n, err := parent.NormalizeBypass(s)
	*h = hostPattern(n)
	return err
}
