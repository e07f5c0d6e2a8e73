// Package pac generates the proxy auto-config (PAC/WPAD) file endpoints
// fetch from the gateway: FindProxyForURL sends exactly the destinations the
// effective allowlist would allow to the gateway, and everything else to the
// configured default, without DNS lookups in the browser.
package pac

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/defendergw/gateway/internal/allowlist"
)

// PAC default routes for hosts the allowlist does not send to the gateway.
const (
	Direct = "DIRECT"
	Proxy  = "PROXY"
)

// Options shape a generated PAC file.
type Options struct {
	// Proxy is the gateway address clients are told to use, "host:port"
	// (IPv6 literals bracketed). Required.
	Proxy string
	// Default is what hosts the allowlist does not send to the gateway get:
	// "DIRECT" or "PROXY" (meaning "PROXY <Proxy>"). Empty means "DIRECT".
	Default string
}

// Options a OptionError names.
const (
	OptionProxy   = "proxy"
	OptionDefault = "default"
)

// OptionError is PAC's error for a bad Options field. Option is
// OptionProxy or OptionDefault, so that a caller can name the setting
// the value came from (a flag or a GATEWAY_* variable).
type OptionError struct {
	Option string
	Value  string
	Reason string
	Err    error // the underlying parse error, if any
}

func (e *OptionError) Error() string {
	return fmt.Sprintf("%s %q: %s", e.Option, e.Value, e.Reason)
}

func (e *OptionError) Unwrap() error { return e.Err }

// PAC renders the proxy auto-config file (Netscape PAC, the
// FindProxyForURL(url, host) function) for policy p: every allow rule in force
// (p.InGeography(r.Geography), r.Action == allowlist.Allow) sends its host to
// "PROXY <Proxy>"; everything else follows Default. Deny rules and rows of
// other geographies are not listed, so they follow Default (the gateway still
// refuses them if they reach it).
//
// The PAC mirrors the policy's matching: an exact name beats a wildcard, the
// nearest wildcard beats a farther one, and a deny rule wins at every level.
// Where a name or wildcard that the policy would refuse lies under a wildcard
// that is in force (edr-cus.us.endpoint.security.microsoft.com, a US row, under
// the WW *.endpoint.security.microsoft.com on an EU gateway; an operator deny
// under an allowed wildcard), the PAC carries an override entry (value 0) that
// sends it to Default. Deny rules limited to paths or ports are not overrides:
// the host stays reachable through the gateway for the rest. Ports and paths of
// allow rules are not expressed either; the gateway enforces them.
//
// Matching in the generated JavaScript is exact and costs one property lookup
// per label of the host, whatever the number of rules. The host is lower-cased,
// one trailing dot and IPv6 brackets are stripped, then it is looked up in the
// exact object; failing that, its parent suffixes are tried in the wild object
// by stripping labels left to right ("a.b.x.com" tries "b.x.com", "x.com",
// "com"), and the first hit decides. A wild key "x.com" (from "*.x.com") can
// therefore only be reached from a host that ends in ".x.com" at a label
// boundary, never from x.com itself (the walk strips a label before the first
// lookup) or from evilx.com (whose parents are "com" only). The usual PAC
// idioms are avoided on purpose: dnsDomainIs(host, "x.com") is a bare string
// suffix test that matches evilx.com, shExpMatch is a glob whose translation
// varies between engines, and both need one call per rule and cannot express
// "the most specific pattern decides".
//
// The output is ES5 (WinHTTP's PAC engine is legacy JScript: no let, const,
// arrow functions or trailing commas) and deterministic: keys are sorted.
func Render(p *allowlist.Policy, opts Options) ([]byte, error) {
	if p == nil {
		return nil, errors.New("nil policy")
	}
	proxy, err := pacProxy(opts.Proxy)
	if err != nil {
		return nil, err
	}
	listed := "PROXY " + proxy
	unlisted := Direct
	switch d := strings.TrimSpace(opts.Default); {
	case d == "" || strings.EqualFold(d, Direct):
	case strings.EqualFold(d, Proxy):
		unlisted = listed
	default:
		return nil, &OptionError{Option: OptionDefault, Value: opts.Default, Reason: "want " + Direct + " or " + Proxy}
	}
	t, err := newPACTable(p)
	if err != nil {
		return nil, err
	}

	var b bytes.Buffer
	b.WriteString("// Proxy auto-config for the Microsoft Defender egress gateway. Generated: do not edit.\n")
	fmt.Fprintf(&b, "// Catalog version: %s; geographies: %s.\n", pacComment(p.Version()), pacGeographies(p))
	fmt.Fprintf(&b, "// Hosts the allowlist admits go to %s; all others get %s.\n", listed, unlisted)
	b.WriteString("// exact: host or IP -> 1 (gateway) or 0 (default); wild: suffix of \"*.suffix\" -> 1 or 0.\n")
	fmt.Fprintf(&b, "var listed = %s;\n", pacJSString(listed))
	fmt.Fprintf(&b, "var unlisted = %s;\n", pacJSString(unlisted))
	pacWriteObject(&b, "exact", t.exact)
	pacWriteObject(&b, "wild", t.wild)
	b.WriteString(pacFunction)
	return b.Bytes(), nil
}

// pacFunction is the lookup described on PAC. Plain ES3/ES5 only.
const pacFunction = `function FindProxyForURL(url, host) {
	var has = Object.prototype.hasOwnProperty;
	var h = String(host).toLowerCase();
	var n = h.length;
	if (n > 2 && h.charAt(0) === "[" && h.charAt(n - 1) === "]") {
		h = h.substring(1, n - 1);
	} else if (n > 1 && h.charAt(n - 1) === ".") {
		h = h.substring(0, n - 1);
	}
	if (has.call(exact, h)) {
		return exact[h] ? listed : unlisted;
	}
	if (h.indexOf(":") >= 0 || /^[0-9.]+$/.test(h)) {
		return unlisted;
	}
	var i = h.indexOf(".");
	while (i >= 0) {
		h = h.substring(i + 1);
		if (has.call(wild, h)) {
			return wild[h] ? listed : unlisted;
		}
		i = h.indexOf(".");
	}
	return unlisted;
}
`

// pacProxy validates and normalises the advertised gateway address.
func pacProxy(s string) (string, error) {
	bad := func(reason string, err error) (string, error) {
		return "", &OptionError{Option: OptionProxy, Value: s, Reason: reason, Err: err}
	}
	if strings.TrimSpace(s) == "" {
		return bad("required: the host:port endpoints use to reach the gateway", nil)
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		var ae *net.AddrError
		if errors.As(err, &ae) {
			return bad("want host:port ("+ae.Err+")", err)
		}
		return bad("want host:port", err)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return bad("port must be a number from 1 to 65535", err)
	}
	if a, err := netip.ParseAddr(host); err == nil {
		if a.Zone() != "" {
			return bad("an address with a zone (%...) cannot be advertised", nil)
		}
		return net.JoinHostPort(a.String(), port), nil
	}
	name, ip, err := allowlist.NormalizeHost(host)
	if err != nil || ip.IsValid() {
		return bad("the host is not a DNS name or IP address", err)
	}
	return net.JoinHostPort(name, port), nil
}

// pacTable is the content of the exact and wild objects.
type pacTable struct {
	exact, wild map[string]bool
}

// newPACTable computes, for every pattern the policy names, what the policy
// concludes for it (see PAC), then drops overrides that change nothing.
func newPACTable(p *allowlist.Policy) (*pacTable, error) {
	type names struct{ any, inForce, deny map[string]bool }
	mk := func() names { return names{map[string]bool{}, map[string]bool{}, map[string]bool{}} }
	ex, wi := mk(), mk()
	rules := p.Rules()
	for i := range rules {
		r := &rules[i]
		if n, err := allowlist.NormalizePattern(r.Host); err != nil || n != r.Host {
			return nil, fmt.Errorf("rule %s: host %q is not a normalised pattern", r.ID, r.Host)
		}
		set := ex
		key := r.Host
		if s, ok := strings.CutPrefix(r.Host, "*."); ok {
			set, key = wi, s
		}
		switch {
		case r.Action == allowlist.Deny:
			if len(r.Paths) == 0 && len(r.Ports) == 0 {
				set.deny[key] = true
			}
		case !p.CloudServes(r.Geography):
			// Another cloud's list: the policy does not see it when it
			// chooses the most specific pattern, so neither does the PAC.
			continue
		default:
			set.any[key] = true
			if p.InGeography(r.Geography) {
				set.inForce[key] = true
			}
		}
	}
	// deniedBelow reports whether a deny wildcard on s or a parent of s
	// covers the subdomains of s.
	deniedBelow := func(s string) bool {
		for {
			if wi.deny[s] {
				return true
			}
			i := strings.IndexByte(s, '.')
			if i < 0 {
				return false
			}
			s = s[i+1:]
		}
	}
	t := &pacTable{exact: map[string]bool{}, wild: map[string]bool{}}
	for _, m := range []map[string]bool{wi.any, wi.deny} {
		for s := range m {
			t.wild[s] = !deniedBelow(s) && wi.inForce[s]
		}
	}
	for _, m := range []map[string]bool{ex.any, ex.deny} {
		for h := range m {
			_, ipErr := netip.ParseAddr(h)
			denied := ex.deny[h] || (ipErr != nil && pacParentDenied(h, deniedBelow))
			t.exact[h] = !denied && ex.inForce[h]
		}
	}
	// An entry that sends its names to the default where the next pattern
	// up would do the same is redundant. Dropping one never changes another's
	// fallback, so the order does not matter.
	for s, v := range t.wild {
		if !v && !t.walk(s) {
			delete(t.wild, s)
		}
	}
	for h, v := range t.exact {
		if _, err := netip.ParseAddr(h); !v && (err == nil || !t.walk(h)) {
			delete(t.exact, h)
		}
	}
	return t, nil
}

func pacParentDenied(h string, deniedBelow func(string) bool) bool {
	i := strings.IndexByte(h, '.')
	return i >= 0 && deniedBelow(h[i+1:])
}

// walk is the PAC's wildcard walk over the parents of h.
func (t *pacTable) walk(h string) bool {
	for {
		i := strings.IndexByte(h, '.')
		if i < 0 {
			return false
		}
		h = h[i+1:]
		if v, ok := t.wild[h]; ok {
			return v
		}
	}
}

func pacWriteObject(b *bytes.Buffer, name string, m map[string]bool) {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	fmt.Fprintf(b, "var %s = {", name)
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		v := '0'
		if m[k] {
			v = '1'
		}
		fmt.Fprintf(b, "\n\t%s: %c", pacJSString(k), v)
	}
	if len(keys) > 0 {
		b.WriteByte('\n')
	}
	b.WriteString("};\n")
}

// pacJSString quotes s as a JavaScript string literal. encoding/json escapes
// quotes, backslashes, control characters, U+2028 and U+2029 (line terminators
// in JavaScript) and <, >, & (harmless if the file is ever inlined in HTML).
func pacJSString(s string) string {
	q, err := json.Marshal(s)
	if err != nil { // unreachable for a string
		panic(err)
	}
	return string(q)
}

// pacComment keeps s to printable ASCII so it cannot end the comment line.
func pacComment(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e {
			return '?'
		}
		return r
	}, s)
}

func pacGeographies(p *allowlist.Policy) string {
	var gs []string
	for _, g := range p.Geographies() {
		gs = append(gs, g.String())
	}
	s := strings.Join(gs, ", ")
	if p.AllGeographies() {
		s += " (none configured: all apply)"
	}
	return s
}
