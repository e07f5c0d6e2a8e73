package clientconfig

import (
	"fmt"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
)

// ccCheckChars rejects characters that could break the quoting of any
// output format.
func ccCheckChars(s string) string {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\r' || c == '\n':
			return fmt.Sprintf("line break at byte %d", i)
		case c < 0x20 || c == 0x7f:
			return fmt.Sprintf("control character %#04x at byte %d", c, i)
		case c >= 0x80:
			return fmt.Sprintf("non-ASCII byte at %d (use punycode for international names)", i)
		case c == ' ':
			return fmt.Sprintf("space at byte %d", i)
		case strings.IndexByte(ccForbidden, c) >= 0:
			return fmt.Sprintf("character %q at byte %d would break the script quoting (not allowed: \" ' %% ^ & | < > ` $ ! \\)", c, i)
		}
	}
	return ""
}

// ccValidateProxy checks host:port and returns its canonical form and
// whether the host is an IPv6 literal.
func ccValidateProxy(s string) (string, bool, error) {
	bad := func(format string, a ...any) (string, bool, error) {
		return "", false, &Error{Field: ccFieldProxy, Reason: fmt.Sprintf(format, a...)}
	}
	if s == "" {
		return bad("required (host:port of the gateway)")
	}
	if r := ccCheckChars(s); r != "" {
		return bad("%s", r)
	}
	if strings.Contains(s, "://") {
		return bad("%q: want host:port without a scheme (http:// is added where Defender Antivirus needs it)", s)
	}
	if strings.ContainsAny(s, "/@?#") {
		return bad("%q: want host:port, without user info or path", s)
	}
	var host, port string
	ipv6 := false
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return bad("%q: missing ] after IPv6 address", s)
		}
		a, err := netip.ParseAddr(s[1:end])
		if err != nil || !a.Is6() || a.Zone() != "" {
			return bad("%q: invalid IPv6 address in brackets", s)
		}
		rest := s[end+1:]
		if !strings.HasPrefix(rest, ":") {
			return bad("%q: missing :port after ]", s)
		}
		host, port, ipv6 = "["+a.String()+"]", rest[1:], true
	} else {
		switch strings.Count(s, ":") {
		case 0:
			return bad("%q: missing :port", s)
		case 1:
		default:
			return bad("%q: IPv6 addresses must be bracketed, e.g. [2001:db8::1]:3128", s)
		}
		i := strings.IndexByte(s, ':')
		host, port = s[:i], s[i+1:]
		if host == "" {
			return bad("%q: missing host", s)
		}
		if strings.Trim(host, "0123456789.") == "" {
			a, err := netip.ParseAddr(host)
			if err != nil || !a.Is4() {
				return bad("%q: invalid IPv4 address", s)
			}
		} else if r := ccCheckName(host); r != "" {
			return bad("%q: host %s", s, r)
		}
	}
	if port == "" {
		return bad("%q: missing port", s)
	}
	if strings.Trim(port, "0123456789") != "" {
		return bad("%q: port must be a decimal number", s)
	}
	if port[0] == '0' && port != "0" {
		return bad("%q: port must not have leading zeros", s)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return bad("%q: port %s out of range 1-65535", s, port)
	}
	return host + ":" + port, ipv6, nil
}

// ccCheckName checks an ASCII DNS name (letters, digits, hyphens and
// underscores in labels of at most 63 characters, optional trailing dot).
func ccCheckName(h string) string {
	h = strings.TrimSuffix(h, ".")
	if h == "" || len(h) > 253 {
		return "name length must be 1-253"
	}
	for _, l := range strings.Split(h, ".") {
		if l == "" || len(l) > 63 {
			return "has an empty or over-long label"
		}
		if l[0] == '-' || l[len(l)-1] == '-' {
			return fmt.Sprintf("label %q starts or ends with '-'", l)
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return fmt.Sprintf("has invalid character %q", c)
			}
		}
	}
	return ""
}

func ccValidatePAC(s string) error {
	bad := func(format string, a ...any) error {
		return &Error{Field: ccFieldPAC, Reason: fmt.Sprintf(format, a...)}
	}
	if r := ccCheckChars(s); r != "" {
		return bad("%s", r)
	}
	u, err := url.Parse(s)
	if err != nil {
		return bad("%q: %v", s, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return bad("%q: want an http:// or https:// URL", s)
	}
	if u.Host == "" || u.Hostname() == "" {
		return bad("%q: missing host", s)
	}
	if u.User != nil {
		return bad("%q: user info is not allowed", s)
	}
	return nil
}

// SplitBypass splits a bypass list as WinHTTP writes it: entries separated
// by ';' or ',', with spaces or tabs around them ignored. Empty entries
// (a trailing ';') are dropped.
func SplitBypass(list string) []string {
	var out []string
	for _, e := range strings.FieldsFunc(list, func(r rune) bool { return r == ';' || r == ',' }) {
		if e = strings.Trim(e, " \t"); e != "" {
			out = append(out, e)
		}
	}
	return out
}

// ccValidateBypass checks one bypass entry: a host name, address or
// wildcard pattern, or the token <local>. Every accepted entry is quoted
// safely by each format: cmd takes < > * literally inside the double
// quotes of reg add /d "..." and bypass-list="...", PowerShell inside
// single quotes, and .reg strings escape only \ and ", which entries never
// contain.
func ccValidateBypass(s string) error {
	if strings.EqualFold(s, "<local>") {
		return nil
	}
	if strings.ContainsAny(s, "<>") {
		return fmt.Errorf("only the token <local> may contain < or >")
	}
	if r := ccCheckChars(s); r != "" {
		if strings.ContainsAny(s, " \t") {
			return fmt.Errorf("%s (separate entries with ';' or ',')", r)
		}
		return fmt.Errorf("%s", r)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			strings.IndexByte("-_.*:[]", c) >= 0) {
			return fmt.Errorf("character %q at byte %d not allowed (entries are host names, addresses, wildcards such as *.contoso.local or 10.*, or <local>)", c, i)
		}
	}
	if strings.Trim(s, "*.") == "" {
		return fmt.Errorf("matches every host: nothing would go through the gateway")
	}
	return nil
}
