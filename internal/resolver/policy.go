package resolver

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
)

// specialPrefixes lists the destination ranges the gateway refuses to dial
// unless Policy.AllowPrivate covers the address. It is derived from the IANA
// IPv4 and IPv6 Special-Purpose Address Registries (RFC 6890, updated by
// RFC 8190) plus the multicast registries:
//
//	https://www.iana.org/assignments/iana-ipv4-special-registry/
//	https://www.iana.org/assignments/iana-ipv6-special-registry/
//
// Transition/translation prefixes that embed an IPv4 address (IPv4-mapped,
// NAT64, 6to4, Teredo) are refused as a whole; when AllowPrivate lets one of
// them through, the embedded IPv4 address is checked as well (see
// embeddedIPv4). More specific prefixes come before the ranges containing them
// so that error messages name the most precise range.
var specialPrefixes = []netip.Prefix{
	// IPv4
	netip.MustParsePrefix("0.0.0.0/8"),          // "this network", unspecified (RFC 791, RFC 1122)
	netip.MustParsePrefix("10.0.0.0/8"),         // private use (RFC 1918)
	netip.MustParsePrefix("100.64.0.0/10"),      // shared address space, CGNAT (RFC 6598)
	netip.MustParsePrefix("127.0.0.0/8"),        // loopback (RFC 1122)
	netip.MustParsePrefix("169.254.0.0/16"),     // link local, incl. 169.254.169.254 cloud metadata (RFC 3927)
	netip.MustParsePrefix("172.16.0.0/12"),      // private use (RFC 1918)
	netip.MustParsePrefix("192.0.0.0/24"),       // IETF protocol assignments (RFC 6890)
	netip.MustParsePrefix("192.0.2.0/24"),       // documentation TEST-NET-1 (RFC 5737)
	netip.MustParsePrefix("192.88.99.0/24"),     // deprecated 6to4 relay anycast (RFC 7526)
	netip.MustParsePrefix("192.168.0.0/16"),     // private use (RFC 1918)
	netip.MustParsePrefix("198.18.0.0/15"),      // benchmarking (RFC 2544)
	netip.MustParsePrefix("198.51.100.0/24"),    // documentation TEST-NET-2 (RFC 5737)
	netip.MustParsePrefix("203.0.113.0/24"),     // documentation TEST-NET-3 (RFC 5737)
	netip.MustParsePrefix("224.0.0.0/4"),        // multicast (RFC 5771)
	netip.MustParsePrefix("255.255.255.255/32"), // limited broadcast (RFC 919)
	netip.MustParsePrefix("240.0.0.0/4"),        // reserved (RFC 1112)

	// IPv6
	netip.MustParsePrefix("::/128"),         // unspecified (RFC 4291)
	netip.MustParsePrefix("::1/128"),        // loopback (RFC 4291)
	netip.MustParsePrefix("::ffff:0:0/96"),  // IPv4-mapped (RFC 4291); never unmapped and allowed
	netip.MustParsePrefix("::/96"),          // deprecated IPv4-compatible (RFC 4291 §2.5.5.1)
	netip.MustParsePrefix("64:ff9b::/96"),   // NAT64 well-known prefix (RFC 6052)
	netip.MustParsePrefix("64:ff9b:1::/48"), // NAT64 local-use prefix (RFC 8215)
	netip.MustParsePrefix("100::/64"),       // discard-only (RFC 6666)
	netip.MustParsePrefix("2001::/32"),      // Teredo (RFC 4380)
	netip.MustParsePrefix("2001:2::/48"),    // benchmarking (RFC 5180)
	netip.MustParsePrefix("2001:db8::/32"),  // documentation (RFC 3849)
	netip.MustParsePrefix("2002::/16"),      // 6to4 (RFC 3056)
	netip.MustParsePrefix("3fff::/20"),      // documentation (RFC 9637)
	netip.MustParsePrefix("5f00::/16"),      // SRv6 SIDs (RFC 9602)
	netip.MustParsePrefix("fc00::/7"),       // unique local (RFC 4193)
	netip.MustParsePrefix("fe80::/10"),      // link-local unicast (RFC 4291)
	netip.MustParsePrefix("fec0::/10"),      // deprecated site-local (RFC 3879)
	netip.MustParsePrefix("ff00::/8"),       // multicast (RFC 4291)
}

// Prefixes whose addresses embed an IPv4 address (see embeddedIPv4).
var (
	prefixMapped    = netip.MustParsePrefix("::ffff:0:0/96")
	prefixCompat    = netip.MustParsePrefix("::/96")
	prefixNAT64     = netip.MustParsePrefix("64:ff9b::/96")
	prefixTeredo    = netip.MustParsePrefix("2001::/32")
	prefix6to4      = netip.MustParsePrefix("2002::/16")
	errInvalidAddr  = &policyError{msg: "invalid address"}
	errNoLocalAddrs = errors.New("cannot list local interface addresses")
)

// Policy decides which destination addresses may be dialed. The zero value
// (and a nil *Policy) refuses every range in the special-purpose table and has
// no Self addresses. A Policy must not be modified or copied after first use.
type Policy struct {
	// AllowPrivate lists prefixes that are allowed even though they are internal (labs/tests), e.g. 127.0.0.1/32.
	// An IPv4 prefix does not cover the IPv4-mapped IPv6 form of its addresses.
	AllowPrivate []netip.Prefix
	// Self lists the gateway's own listener addresses; dialing one of them is always refused (ErrSelfDestination),
	// even if AllowPrivate covers it. An unspecified IP (0.0.0.0 / ::) in Self means "this port on any loopback
	// address or any local interface address" (interface addresses are collected once, on first need).
	Self []netip.AddrPort

	// interfaceAddrs replaces net.InterfaceAddrs in tests.
	interfaceAddrs func() ([]net.Addr, error)
	localOnce      sync.Once
	local          []netip.Addr
	localErr       error
}

// policyError is returned for refused destinations. It matches
// ErrPrivateDestination, and ErrSelfDestination too when self is set.
type policyError struct {
	msg  string
	self bool
}

func (e *policyError) Error() string { return e.msg }

func (e *policyError) Unwrap() []error {
	if e.self {
		return []error{ErrSelfDestination, ErrPrivateDestination}
	}
	return []error{ErrPrivateDestination}
}

// Check returns nil if addr may be dialed, else an error wrapping
// ErrPrivateDestination that names the address and the range, e.g.
// "10.1.2.3 is private (10.0.0.0/8)". Addresses with a zone are refused.
// Check does not allocate for allowed addresses.
func (p *Policy) Check(addr netip.Addr) error {
	if !addr.IsValid() {
		return errInvalidAddr
	}
	if addr.Zone() != "" {
		return &policyError{msg: fmt.Sprintf("%s has an IPv6 zone", addr)}
	}
	if !p.allowed(addr) {
		if pfx, ok := specialPrefix(addr); ok {
			return &policyError{msg: fmt.Sprintf("%s is private (%s)", addr, pfx)}
		}
	}
	// The outer address is acceptable (or explicitly allowed): the IPv4
	// address a translation prefix carries must be acceptable too.
	v4s, n := embeddedIPv4(addr)
	for _, v4 := range v4s[:n] {
		if p.allowed(v4) {
			continue
		}
		if pfx, ok := specialPrefix(v4); ok {
			return &policyError{msg: fmt.Sprintf("%s is private (embeds %s in %s)", addr, v4, pfx)}
		}
	}
	return nil
}

// CheckAddrPort is Check plus the Self rule: a destination that is one of the
// gateway's own listeners is refused with an error matching both
// ErrSelfDestination and ErrPrivateDestination, even if AllowPrivate covers it.
func (p *Policy) CheckAddrPort(ap netip.AddrPort) error {
	if err := p.checkSelf(ap); err != nil {
		return err
	}
	return p.Check(ap.Addr())
}

func (p *Policy) allowed(addr netip.Addr) bool {
	if p == nil {
		return false
	}
	for _, pfx := range p.AllowPrivate {
		if pfx.Contains(addr) {
			return true
		}
	}
	return false
}

func specialPrefix(addr netip.Addr) (netip.Prefix, bool) {
	for _, pfx := range specialPrefixes {
		if pfx.Contains(addr) {
			return pfx, true
		}
	}
	return netip.Prefix{}, false
}

// embeddedIPv4 returns the IPv4 addresses carried by IPv4-mapped,
// IPv4-compatible, NAT64 (well-known prefix), 6to4 and Teredo (server and
// de-obfuscated client) addresses.
func embeddedIPv4(addr netip.Addr) (out [2]netip.Addr, n int) {
	if !addr.Is6() {
		return out, 0
	}
	b := addr.As16()
	last := netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]})
	switch {
	case prefixMapped.Contains(addr), prefixNAT64.Contains(addr):
		out[0], n = last, 1
	case prefixCompat.Contains(addr):
		if addr != netip.IPv6Unspecified() && addr != netip.IPv6Loopback() {
			out[0], n = last, 1
		}
	case prefix6to4.Contains(addr):
		out[0], n = netip.AddrFrom4([4]byte{b[2], b[3], b[4], b[5]}), 1
	case prefixTeredo.Contains(addr):
		out[0] = netip.AddrFrom4([4]byte{b[4], b[5], b[6], b[7]})
		out[1] = netip.AddrFrom4([4]byte{^b[12], ^b[13], ^b[14], ^b[15]})
		n = 2
	}
	return out, n
}

// checkSelf refuses destinations that are the gateway's own listeners.
func (p *Policy) checkSelf(ap netip.AddrPort) error {
	if p == nil || len(p.Self) == 0 {
		return nil
	}
	a := ap.Addr().WithZone("").Unmap()
	for _, s := range p.Self {
		if s.Port() != ap.Port() {
			continue
		}
		sa := s.Addr().WithZone("").Unmap()
		// Connecting to an unspecified address reaches the local host.
		self := a == sa || a.IsUnspecified()
		if !self && sa.IsUnspecified() {
			self = a.IsLoopback() || p.isLocal(a)
		}
		if self {
			return &policyError{
				msg:  fmt.Sprintf("%s is the gateway itself (listener %s)", ap, s),
				self: true,
			}
		}
	}
	return nil
}

// isLocal reports whether a is an address of a local interface. If the
// interfaces cannot be listed it fails closed and reports true.
func (p *Policy) isLocal(a netip.Addr) bool {
	p.localOnce.Do(func() {
		list := p.interfaceAddrs
		if list == nil {
			list = net.InterfaceAddrs
		}
		addrs, err := list()
		if err != nil {
			p.localErr = fmt.Errorf("%w: %w", errNoLocalAddrs, err)
			return
		}
		for _, na := range addrs {
			var ip net.IP
			switch v := na.(type) {
			case *net.IPNet:
				ip = v.IP
			case *net.IPAddr:
				ip = v.IP
			}
			if x, ok := netip.AddrFromSlice(ip); ok {
				p.local = append(p.local, x.Unmap())
			}
		}
	})
	if p.localErr != nil {
		return true
	}
	for _, l := range p.local {
		if l == a {
			return true
		}
	}
	return false
}
