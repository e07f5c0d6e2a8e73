package allowlist

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"path"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// Target is a normalised destination.
type Target struct {
	// Host is the lower-case ASCII (punycode) name without a trailing dot, or
	// the canonical text of an IP literal.
	Host string
	// IP is set when the target is an IP literal.
	IP   netip.Addr
	Port uint16
	// Path is the normalised request path of plain-HTTP requests; HasPath is
	// false for CONNECT, where the path is not visible to the gateway.
	Path    string
	HasPath bool
}

// HostPort renders the target as host:port (IPv6 in brackets).
func (t Target) HostPort() string {
	return net.JoinHostPort(t.Host, fmt.Sprint(t.Port))
}

// idnaProfile is UTS #46 lookup processing with STD3 rules (RFC 5891 §5): it
// maps case and compatibility forms, validates punycode labels, and rejects
// characters that are not allowed in host names.
var idnaProfile = idna.Lookup

const (
	maxNameLen  = 253 // RFC 1035 §2.3.4, presentation form without the root dot
	maxLabelLen = 63
)

// ParseAuthority parses a CONNECT request target, "host:port" (RFC 9110
// §9.3.6: the port is required).
func ParseAuthority(s string) (Target, error) {
	if strings.ContainsAny(s, "@/\\?#") {
		return Target{}, fmt.Errorf("authority %q: userinfo, path or query not allowed: %w", s, ErrBadTarget)
	}
	h, p, err := net.SplitHostPort(s)
	if err != nil {
		return Target{}, fmt.Errorf("authority %q: host:port required: %w", s, ErrBadTarget)
	}
	port, err := ParsePort(p)
	if err != nil {
		return Target{}, err
	}
	if strings.HasPrefix(s, "[") {
		// SplitHostPort strips the brackets; only IPv6 literals may use them.
		h = "[" + h + "]"
	}
	return newTarget(h, port)
}

// ParseURL parses the target of an absolute-form request (RFC 9112 §3.2.2)
// or of a request inside an inspected tunnel: http (default port 80) or https
// (default port 443). Which scheme is acceptable where is the caller's call.
func ParseURL(u *url.URL) (Target, error) {
	var port uint16
	switch {
	case u == nil:
		return Target{}, fmt.Errorf("url: missing: %w", ErrBadTarget)
	case strings.EqualFold(u.Scheme, "http"):
		port = 80
	case strings.EqualFold(u.Scheme, "https"):
		port = 443
	default:
		return Target{}, fmt.Errorf("url: scheme %q not proxied: %w", u.Scheme, ErrBadTarget)
	}
	if u.User != nil {
		return Target{}, fmt.Errorf("url: userinfo not allowed: %w", ErrBadTarget)
	}
	h, p := u.Host, ""
	if i := strings.LastIndexByte(h, ':'); i >= 0 && !strings.HasSuffix(h, "]") {
		h, p = h[:i], h[i+1:]
	}
	if p != "" {
		var err error
		if port, err = ParsePort(p); err != nil {
			return Target{}, err
		}
	}
	t, err := newTarget(h, port)
	if err != nil {
		return Target{}, err
	}
	t.Path, err = NormalizePath(u.Path)
	if err != nil {
		return Target{}, err
	}
	t.HasPath = true
	return t, nil
}

// ParseTarget parses what an operator types: "host:port", "host" (port 443),
// or an http(s) URL. It is the entry point of `gateway explain`.
func ParseTarget(s string) (Target, error) {
	if strings.Contains(s, "://") {
		u, err := url.Parse(s)
		if err != nil {
			return Target{}, fmt.Errorf("url %q: %w", s, ErrBadTarget)
		}
		t, err := ParseURL(u)
		if err == nil && strings.EqualFold(u.Scheme, "https") {
			// An https URL reaches the gateway as a CONNECT: the path is
			// not visible (unless inspected), so decide it as a tunnel.
			t.Path, t.HasPath = "", false
		}
		return t, err
	}
	if _, _, err := net.SplitHostPort(s); err != nil {
		s = net.JoinHostPort(strings.Trim(s, "[]"), "443")
	}
	return ParseAuthority(s)
}

// ParsePort parses a decimal port in 1..65535 with no sign, no leading zero
// and no other characters.
func ParsePort(s string) (uint16, error) {
	if len(s) == 0 || len(s) > 5 || s[0] == '0' {
		return 0, fmt.Errorf("port %q: %w", s, ErrBadTarget)
	}
	n := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("port %q: %w", s, ErrBadTarget)
		}
		n = n*10 + int(c-'0')
	}
	if n > 65535 {
		return 0, fmt.Errorf("port %q: %w", s, ErrBadTarget)
	}
	return uint16(n), nil
}

func newTarget(h string, port uint16) (Target, error) {
	host, ip, err := NormalizeHost(h)
	if err != nil {
		return Target{}, err
	}
	return Target{Host: host, IP: ip, Port: port}, nil
}

// NormalizeHost normalises a host as it appears in a request: lower-case,
// one trailing dot stripped, internationalised names converted to punycode,
// every label checked. IP literals come back with ip set; only canonical forms
// (dotted-quad IPv4, bracketed IPv6 without zone) are returned as IPs: any
// other numeric notation (decimal, octal, hex, short forms, which browsers
// and libc resolve to addresses) is refused with ErrIPLiteral, since no rule
// can name it.
func NormalizeHost(h string) (host string, ip netip.Addr, err error) {
	if h == "" {
		return "", ip, fmt.Errorf("empty host: %w", ErrBadTarget)
	}
	if h[0] == '[' {
		if len(h) < 3 || h[len(h)-1] != ']' {
			return "", ip, fmt.Errorf("host %q: %w", h, ErrBadTarget)
		}
		a, perr := netip.ParseAddr(h[1 : len(h)-1])
		if perr != nil || !a.Is6() {
			return "", ip, fmt.Errorf("host %q: invalid ipv6 literal: %w", h, ErrBadTarget)
		}
		if a.Zone() != "" {
			return "", ip, fmt.Errorf("host %q: zoned address: %w", h, ErrIPLiteral)
		}
		return a.String(), a, nil
	}
	// Only strings that can be addresses go to ParseAddr: its error for a
	// name allocates, and names are the hot path.
	if c := h[len(h)-1]; (c >= '0' && c <= '9') || strings.IndexByte(h, ':') >= 0 {
		if a, perr := netip.ParseAddr(h); perr == nil {
			if a.Is6() {
				// RFC 3986 §3.2.2: IPv6 literals must be bracketed.
				return "", ip, fmt.Errorf("host %q: unbracketed ipv6 literal: %w", h, ErrBadTarget)
			}
			return a.String(), a, nil
		}
	}
	if strings.HasSuffix(h, ".") {
		h = h[:len(h)-1]
	}
	if h == "" || len(h) > maxNameLen+1 { // generous before IDNA; checked exactly below
		return "", ip, fmt.Errorf("host: bad length: %w", ErrBadTarget)
	}
	if !isLowerLDH(h) {
		if host, err = toASCII(h); err != nil {
			return "", ip, err
		}
	} else {
		host = h
	}
	if err := checkLabels(host); err != nil {
		return "", ip, err
	}
	if numericLastLabel(host) {
		return "", ip, fmt.Errorf("host %q: numeric address form: %w", host, ErrIPLiteral)
	}
	return host, ip, nil
}

// isLowerLDH reports whether s holds only lower-case letters, digits, hyphens
// and dots and no punycode label: such names need no IDNA processing, which
// keeps the common case free of allocations.
func isLowerLDH(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return !strings.HasPrefix(s, "xn--") && !strings.Contains(s, ".xn--")
}

func toASCII(h string) (string, error) {
	if !utf8.ValidString(h) {
		return "", fmt.Errorf("host %q: invalid utf-8: %w", h, ErrBadTarget)
	}
	for i := 0; i < len(h); i++ {
		// Percent-encoding, userinfo, paths and spaces are never part of a
		// host; IDNA mapping must not get a chance to turn them into one.
		switch c := h[i]; {
		case c <= ' ', c == '%', c == '@', c == '/', c == '\\', c == ':', c == 0x7f:
			return "", fmt.Errorf("host %q: invalid character: %w", h, ErrBadTarget)
		}
	}
	a, err := idnaProfile.ToASCII(h)
	if err != nil {
		return "", fmt.Errorf("host %q: %v: %w", h, err, ErrBadTarget)
	}
	if strings.HasSuffix(a, ".") { // a full-width dot may have become a trailing dot
		a = a[:len(a)-1]
	}
	if !isLDH(a) {
		return "", fmt.Errorf("host %q: invalid character: %w", h, ErrBadTarget)
	}
	return a, nil
}

func isLDH(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// checkLabels enforces RFC 1035 §2.3.1 / RFC 5891 §4.2.3.1 shape on an
// LDH name: no empty label, at most 63 octets a label, no hyphen at either end
// of a label, at most 253 octets.
func checkLabels(s string) error {
	if len(s) > maxNameLen {
		return fmt.Errorf("host: longer than %d octets: %w", maxNameLen, ErrBadTarget)
	}
	start := 0
	for i := 0; i <= len(s); i++ {
		if i < len(s) && s[i] != '.' {
			continue
		}
		l := s[start:i]
		switch {
		case len(l) == 0:
			return fmt.Errorf("host %q: empty label: %w", s, ErrBadTarget)
		case len(l) > maxLabelLen:
			return fmt.Errorf("host %q: label longer than %d octets: %w", s, maxLabelLen, ErrBadTarget)
		case l[0] == '-' || l[len(l)-1] == '-':
			return fmt.Errorf("host %q: label starts or ends with a hyphen: %w", s, ErrBadTarget)
		}
		start = i + 1
	}
	return nil
}

// numericLastLabel reports whether the last label is all digits or a 0x hex
// number: the WHATWG URL standard (IPv4 parser) and inet_aton then read the
// whole name as an IPv4 address ("2130706433", "0x7f.1", "127.1"). No top-level
// domain is numeric, so such a name can only be an address in disguise.
func numericLastLabel(s string) bool {
	l := s[strings.LastIndexByte(s, '.')+1:]
	if strings.HasPrefix(l, "0x") {
		l = l[2:]
		if l == "" {
			return true
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
				return false
			}
		}
		return true
	}
	for i := 0; i < len(l); i++ {
		if l[i] < '0' || l[i] > '9' {
			return false
		}
	}
	return true
}

// NormalizePath returns the path used for matching path-limited rules: the
// decoded path with backslashes read as slashes (as IIS, the origin behind the
// path-limited rows, reads them) and dot segments removed (RFC 3986 §5.2.4),
// keeping a trailing slash. A dot-dot segment that survives cleaning in a
// disguised form ("..;") is refused rather than guessed at.
func NormalizePath(p string) (string, error) {
	if p == "" {
		return "/", nil
	}
	if strings.ContainsRune(p, 0) {
		return "", fmt.Errorf("path: NUL byte: %w", ErrBadTarget)
	}
	if strings.IndexByte(p, '\\') >= 0 {
		p = strings.ReplaceAll(p, "\\", "/")
	}
	if p[0] != '/' {
		p = "/" + p
	}
	c := path.Clean(p)
	if strings.HasSuffix(p, "/") && c != "/" {
		c += "/"
	}
	for _, seg := range strings.Split(c, "/") {
		if strings.HasPrefix(seg, "..") || strings.HasPrefix(seg, ".;") {
			return "", fmt.Errorf("path %q: dot segment: %w", p, ErrBadTarget)
		}
	}
	return c, nil
}
