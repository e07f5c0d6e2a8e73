// Package transparent reads where a connection redirected by the kernel was
// going: the original destination that netfilter's REDIRECT (iptables or
// nftables) replaced with the gateway's transparent listener, or, with
// TPROXY, the local address of a socket that accepted a connection
// addressed elsewhere. It does no policy: internal/proxy decides what the
// connection may reach.
package transparent

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
)

// ErrNoOriginalDst reports a connection whose original destination cannot
// be read: it was not redirected by netfilter (nothing is recorded for it),
// the socket is not TCP, or the system has no SO_ORIGINAL_DST.
var ErrNoOriginalDst = errors.New("no original destination")

// OriginalDst returns the destination c was addressed to before netfilter
// redirected it. A connection made to the listener directly (no rule
// rewrote it) reports the listener's own address, which the caller must
// refuse: serving it would loop back into the gateway.
func OriginalDst(c net.Conn) (netip.AddrPort, error) {
	if b, ok := c.(interface{ BareTCP() *net.TCPConn }); ok {
		c = b.BareTCP() // a PROXY-protocol client (proxyheader.Conn)
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("%w: %T is not a TCP connection", ErrNoOriginalDst, c)
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%w: %w", ErrNoOriginalDst, err)
	}
	local, _ := netip.ParseAddrPort(tc.LocalAddr().String())
	var ap netip.AddrPort
	var serr error
	if err := rc.Control(func(fd uintptr) { ap, serr = originalDst(int(fd), local.Addr().Unmap().Is4()) }); err != nil {
		return netip.AddrPort{}, fmt.Errorf("%w: %w", ErrNoOriginalDst, err)
	}
	if serr != nil {
		return netip.AddrPort{}, fmt.Errorf("%w: %w", ErrNoOriginalDst, serr)
	}
	return ap, nil
}

// LocalDst is OriginalDst for TPROXY (GATEWAY_TRANSPARENT_TPROXY): the
// kernel hands a transparent socket the connection unchanged, so where it
// was going is the connection's own local address.
func LocalDst(c net.Conn) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(c.LocalAddr().String())
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%w: %w", ErrNoOriginalDst, err)
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// TProxy returns lc with IP_TRANSPARENT (IPV6_TRANSPARENT on an IPv6
// socket) set on the listening socket, which TPROXY rules need to deliver
// connections addressed elsewhere to it (ip(7), ipv6(7); the kernel's
// Documentation/networking/tproxy.rst). It needs CAP_NET_ADMIN.
func TProxy(lc net.ListenConfig) net.ListenConfig {
	inner := lc.Control
	lc.Control = func(network, address string, c syscall.RawConn) error {
		if inner != nil {
			if err := inner(network, address, c); err != nil {
				return err
			}
		}
		var serr error
		if err := c.Control(func(fd uintptr) { serr = setTransparent(int(fd), network == "tcp6") }); err != nil {
			return err
		}
		if serr != nil {
			return fmt.Errorf("set IP_TRANSPARENT (needs CAP_NET_ADMIN): %w", serr)
		}
		return nil
	}
	return lc
}
