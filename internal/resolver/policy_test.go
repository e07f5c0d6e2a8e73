package resolver

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
)

func prefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(ss))
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func TestPolicyCheck(t *testing.T) {
	tests := []struct {
		addr      string
		allow     []string
		wantRange string // "" = allowed; otherwise a substring of the error
	}{
		// Loopback.
		{addr: "127.0.0.1", wantRange: "127.0.0.0/8"},
		{addr: "127.255.255.254", wantRange: "127.0.0.0/8"},
		{addr: "::1", wantRange: "::1/128"},
		// RFC 1918 and ULA.
		{addr: "10.1.2.3", wantRange: "10.0.0.0/8"},
		{addr: "172.16.0.1", wantRange: "172.16.0.0/12"},
		{addr: "172.31.255.255", wantRange: "172.16.0.0/12"},
		{addr: "192.168.1.1", wantRange: "192.168.0.0/16"},
		{addr: "fc00::1", wantRange: "fc00::/7"},
		{addr: "fd12:3456::1", wantRange: "fc00::/7"},
		// Link-local and cloud metadata.
		{addr: "169.254.169.254", wantRange: "169.254.0.0/16"},
		{addr: "169.254.1.1", wantRange: "169.254.0.0/16"},
		{addr: "fe80::1", wantRange: "fe80::/10"},
		// CGNAT.
		{addr: "100.64.0.1", wantRange: "100.64.0.0/10"},
		{addr: "100.127.255.255", wantRange: "100.64.0.0/10"},
		// Multicast.
		{addr: "224.0.0.1", wantRange: "224.0.0.0/4"},
		{addr: "239.255.255.250", wantRange: "224.0.0.0/4"},
		{addr: "ff02::1", wantRange: "ff00::/8"},
		// Unspecified, broadcast, reserved.
		{addr: "0.0.0.0", wantRange: "0.0.0.0/8"},
		{addr: "0.1.2.3", wantRange: "0.0.0.0/8"},
		{addr: "::", wantRange: "::/128"},
		{addr: "255.255.255.255", wantRange: "255.255.255.255/32"},
		{addr: "240.0.0.1", wantRange: "240.0.0.0/4"},
		// IPv4-mapped: refused whatever the embedded address.
		{addr: "::ffff:127.0.0.1", wantRange: "::ffff:0.0.0.0/96"},
		{addr: "::ffff:10.0.0.1", wantRange: "::ffff:0.0.0.0/96"},
		{addr: "::ffff:20.190.128.1", wantRange: "::ffff:0.0.0.0/96"},
		// IPv4-compatible (deprecated).
		{addr: "::7f00:1", wantRange: "::/96"},
		// NAT64.
		{addr: "64:ff9b::a00:1", wantRange: "64:ff9b::/96"},
		{addr: "64:ff9b::808:808", wantRange: "64:ff9b::/96"},
		{addr: "64:ff9b:1::1", wantRange: "64:ff9b:1::/48"},
		// 6to4 and Teredo.
		{addr: "2002:a00:1::1", wantRange: "2002::/16"},
		{addr: "2001:0:4136:e378:8000:63bf:3fff:fdd2", wantRange: "2001::/32"},
		// IETF assignments, benchmarking, documentation, discard.
		{addr: "192.0.0.8", wantRange: "192.0.0.0/24"},
		{addr: "198.18.0.1", wantRange: "198.18.0.0/15"},
		{addr: "198.19.255.255", wantRange: "198.18.0.0/15"},
		{addr: "2001:2::1", wantRange: "2001:2::/48"},
		{addr: "192.0.2.1", wantRange: "192.0.2.0/24"},
		{addr: "198.51.100.1", wantRange: "198.51.100.0/24"},
		{addr: "203.0.113.1", wantRange: "203.0.113.0/24"},
		{addr: "2001:db8::1", wantRange: "2001:db8::/32"},
		{addr: "3fff::1", wantRange: "3fff::/20"},
		{addr: "100::1", wantRange: "100::/64"},
		{addr: "192.88.99.1", wantRange: "192.88.99.0/24"},
		{addr: "5f00::1", wantRange: "5f00::/16"},
		{addr: "fec0::1", wantRange: "fec0::/10"},
		// Zones are refused, even when the prefix is allowed.
		{addr: "fe80::1%eth0", wantRange: "zone"},
		{addr: "fe80::1%eth0", allow: []string{"fe80::/10"}, wantRange: "zone"},
		{addr: "2606:4700::1%eth0", wantRange: "zone"},
		// Public addresses (checked only, never dialed).
		{addr: "20.190.128.1"},
		{addr: "1.1.1.1"},
		{addr: "172.32.0.1"},
		{addr: "100.128.0.1"},
		{addr: "2606:4700:4700::1111"},
		{addr: "2603:1030::1"},
		// AllowPrivate exceptions.
		{addr: "127.0.0.1", allow: []string{"127.0.0.1/32"}},
		{addr: "127.0.0.2", allow: []string{"127.0.0.1/32"}, wantRange: "127.0.0.0/8"},
		{addr: "10.9.8.7", allow: []string{"10.0.0.0/8"}},
		{addr: "::1", allow: []string{"::1/128"}},
		{addr: "::ffff:127.0.0.1", allow: []string{"127.0.0.1/32"}, wantRange: "::ffff:0.0.0.0/96"},
		// Allowing a translation prefix still checks the embedded IPv4 address.
		{addr: "::ffff:10.0.0.1", allow: []string{"::ffff:0:0/96"}, wantRange: "embeds 10.0.0.1 in 10.0.0.0/8"},
		{addr: "::ffff:10.0.0.1", allow: []string{"::ffff:0:0/96", "10.0.0.0/8"}},
		{addr: "::ffff:20.190.128.1", allow: []string{"::ffff:0:0/96"}},
		{addr: "64:ff9b::a00:1", allow: []string{"64:ff9b::/96"}, wantRange: "embeds 10.0.0.1 in 10.0.0.0/8"},
		{addr: "64:ff9b::1457:8001", allow: []string{"64:ff9b::/96"}},
		{addr: "2002:a9fe:a9fe::1", allow: []string{"2002::/16"}, wantRange: "embeds 169.254.169.254"},
		// Teredo client 127.0.0.1 is stored inverted: 80ff:fffe.
		{addr: "2001:0:1457:8001::80ff:fffe", allow: []string{"2001::/32"}, wantRange: "embeds 127.0.0.1"},
	}
	for _, tt := range tests {
		name := tt.addr
		if len(tt.allow) > 0 {
			name += " allow " + strings.Join(tt.allow, ",")
		}
		t.Run(name, func(t *testing.T) {
			p := &Policy{AllowPrivate: prefixes(tt.allow...)}
			err := p.Check(netip.MustParseAddr(tt.addr))
			if tt.wantRange == "" {
				if err != nil {
					t.Errorf("Check(%s) = %v, want nil", tt.addr, err)
				}
				return
			}
			if !errors.Is(err, ErrPrivateDestination) {
				t.Fatalf("Check(%s) = %v, want %v", tt.addr, err, ErrPrivateDestination)
			}
			if errors.Is(err, ErrSelfDestination) {
				t.Errorf("Check(%s) = %v, must not match %v", tt.addr, err, ErrSelfDestination)
			}
			if !strings.Contains(err.Error(), tt.wantRange) {
				t.Errorf("Check(%s) = %q, want it to mention %q", tt.addr, err, tt.wantRange)
			}
		})
	}
}

func TestPolicyCheckMessageAndInvalid(t *testing.T) {
	var p Policy
	if got, want := p.Check(netip.MustParseAddr("10.1.2.3")).Error(), "10.1.2.3 is private (10.0.0.0/8)"; got != want {
		t.Errorf("Check(10.1.2.3) message = %q, want %q", got, want)
	}
	if err := p.Check(netip.Addr{}); !errors.Is(err, ErrPrivateDestination) {
		t.Errorf("Check(zero Addr) = %v, want %v", err, ErrPrivateDestination)
	}
	var nilPolicy *Policy
	if err := nilPolicy.CheckAddrPort(netip.MustParseAddrPort("127.0.0.1:80")); !errors.Is(err, ErrPrivateDestination) {
		t.Errorf("nil Policy CheckAddrPort(127.0.0.1:80) = %v, want %v", err, ErrPrivateDestination)
	}
	if err := nilPolicy.CheckAddrPort(netip.MustParseAddrPort("20.190.128.1:443")); err != nil {
		t.Errorf("nil Policy CheckAddrPort(20.190.128.1:443) = %v, want nil", err)
	}
}

func TestPolicySelf(t *testing.T) {
	// Fake interface list: a loopback and a documentation address standing in
	// for the host's own NIC address.
	fakeIfaces := func() ([]net.Addr, error) {
		return []net.Addr{
			&net.IPNet{IP: net.ParseIP("127.0.0.1"), Mask: net.CIDRMask(8, 32)},
			&net.IPNet{IP: net.ParseIP("198.51.100.7"), Mask: net.CIDRMask(24, 32)},
			&net.IPNet{IP: net.ParseIP("2001:db8::7"), Mask: net.CIDRMask(64, 128)},
		}, nil
	}
	failingIfaces := func() ([]net.Addr, error) { return nil, errors.New("boom") }
	allowAll := []string{"127.0.0.0/8", "::1/128", "198.51.100.0/24", "2001:db8::/32"}

	tests := []struct {
		name     string
		self     []string
		allow    []string
		ifaces   func() ([]net.Addr, error)
		dst      string
		wantSelf bool
		wantPriv bool // private but not self
	}{
		{name: "specific listener", self: []string{"127.0.0.1:3128"}, allow: allowAll, dst: "127.0.0.1:3128", wantSelf: true},
		{name: "specific listener without AllowPrivate", self: []string{"127.0.0.1:3128"}, dst: "127.0.0.1:3128", wantSelf: true},
		{name: "specific listener other port", self: []string{"127.0.0.1:3128"}, allow: allowAll, dst: "127.0.0.1:3129"},
		{name: "specific listener other address", self: []string{"127.0.0.1:3128"}, allow: allowAll, dst: "127.0.0.2:3128"},
		{name: "specific listener mapped form", self: []string{"127.0.0.1:3128"}, allow: allowAll, dst: "[::ffff:127.0.0.1]:3128", wantSelf: true},
		{name: "specific listener via unspecified destination", self: []string{"127.0.0.1:3128"}, allow: []string{"0.0.0.0/8"}, dst: "0.0.0.0:3128", wantSelf: true},
		{name: "0.0.0.0 listener, other loopback", self: []string{"0.0.0.0:3128"}, allow: allowAll, ifaces: fakeIfaces, dst: "127.0.0.5:3128", wantSelf: true},
		{name: "0.0.0.0 listener, interface address", self: []string{"0.0.0.0:3128"}, allow: allowAll, ifaces: fakeIfaces, dst: "198.51.100.7:3128", wantSelf: true},
		{name: "0.0.0.0 listener, IPv6 interface address", self: []string{"0.0.0.0:3128"}, allow: allowAll, ifaces: fakeIfaces, dst: "[2001:db8::7]:3128", wantSelf: true},
		{name: "0.0.0.0 listener, other host", self: []string{"0.0.0.0:3128"}, allow: allowAll, ifaces: fakeIfaces, dst: "198.51.100.8:3128"},
		{name: "0.0.0.0 listener, other port", self: []string{"0.0.0.0:3128"}, allow: allowAll, ifaces: fakeIfaces, dst: "198.51.100.7:443"},
		{name: "0.0.0.0 listener, public host", self: []string{"0.0.0.0:3128"}, ifaces: fakeIfaces, dst: "20.190.128.1:3128"},
		{name: ":: listener, IPv6 loopback", self: []string{"[::]:3128"}, allow: allowAll, ifaces: fakeIfaces, dst: "[::1]:3128", wantSelf: true},
		{name: ":: listener, IPv4 loopback", self: []string{"[::]:3128"}, allow: allowAll, ifaces: fakeIfaces, dst: "127.0.0.1:3128", wantSelf: true},
		{name: "not self but private", self: []string{"0.0.0.0:3128"}, ifaces: fakeIfaces, dst: "10.0.0.1:3128", wantPriv: true},
		{name: "interface listing fails closed", self: []string{"0.0.0.0:3128"}, allow: allowAll, ifaces: failingIfaces, dst: "198.51.100.8:3128", wantSelf: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &Policy{AllowPrivate: prefixes(tt.allow...), interfaceAddrs: tt.ifaces}
			for _, s := range tt.self {
				p.Self = append(p.Self, netip.MustParseAddrPort(s))
			}
			err := p.CheckAddrPort(netip.MustParseAddrPort(tt.dst))
			switch {
			case tt.wantSelf:
				if !errors.Is(err, ErrSelfDestination) || !errors.Is(err, ErrPrivateDestination) {
					t.Errorf("CheckAddrPort(%s) = %v, want both %v and %v", tt.dst, err, ErrSelfDestination, ErrPrivateDestination)
				}
			case tt.wantPriv:
				if !errors.Is(err, ErrPrivateDestination) || errors.Is(err, ErrSelfDestination) {
					t.Errorf("CheckAddrPort(%s) = %v, want %v only", tt.dst, err, ErrPrivateDestination)
				}
			default:
				if err != nil {
					t.Errorf("CheckAddrPort(%s) = %v, want nil", tt.dst, err)
				}
			}
		})
	}

	t.Run("real interface addresses", func(t *testing.T) {
		ifaddrs, err := net.InterfaceAddrs()
		if err != nil {
			t.Skipf("net.InterfaceAddrs: %v", err)
		}
		p := &Policy{Self: []netip.AddrPort{netip.MustParseAddrPort("0.0.0.0:3128")}}
		for _, a := range ifaddrs {
			ipn, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			ip, ok := netip.AddrFromSlice(ipn.IP)
			if !ok {
				continue
			}
			ap := netip.AddrPortFrom(ip.Unmap(), 3128)
			if err := p.CheckAddrPort(ap); !errors.Is(err, ErrSelfDestination) {
				t.Errorf("CheckAddrPort(%s) = %v, want %v", ap, err, ErrSelfDestination)
			}
		}
	})
}

func TestPolicyCheckNoAllocs(t *testing.T) {
	p := &Policy{AllowPrivate: prefixes("127.0.0.1/32")}
	for _, s := range []string{"20.190.128.1", "127.0.0.1", "2603:1030::1"} {
		a := netip.MustParseAddr(s)
		if n := testing.AllocsPerRun(100, func() { _ = p.Check(a) }); n != 0 {
			t.Errorf("Check(%s) allocs = %v, want 0", s, n)
		}
	}
}
