// Package transparent reads where a connection redirected by the kernel was
// going: the original destination that netfilter's REDIRECT (iptables or
// nftables) replaced with the gateway's transparent listener. It does no
// policy: internal/proxy decides what the connection may reach.
package transparent

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
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
