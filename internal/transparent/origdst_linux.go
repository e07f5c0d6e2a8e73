package transparent

import (
	"encoding/binary"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// soOriginalDst is SO_ORIGINAL_DST (linux/netfilter_ipv4.h) and its IPv6
// twin IP6T_SO_ORIGINAL_DST (linux/netfilter_ipv6/ip6_tables.h): both 80,
// read at SOL_IP and SOL_IPV6 respectively. x/sys/unix names neither.
const soOriginalDst = 80

// originalDst asks conntrack, through getsockopt, where the connection on
// fd was going. The answer is a sockaddr_in (IPv4) or sockaddr_in6 (IPv6);
// x/sys/unix has no getsockopt returning either, so the raw structures are
// read directly.
func originalDst(fd int, v4 bool) (netip.AddrPort, error) {
	if v4 {
		var sa unix.RawSockaddrInet4
		n := uint32(unsafe.Sizeof(sa))
		if err := getsockopt(fd, unix.SOL_IP, soOriginalDst, unsafe.Pointer(&sa), &n); err != nil {
			return netip.AddrPort{}, err
		}
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), port(sa.Port)), nil
	}
	var sa unix.RawSockaddrInet6
	n := uint32(unsafe.Sizeof(sa))
	if err := getsockopt(fd, unix.SOL_IPV6, soOriginalDst, unsafe.Pointer(&sa), &n); err != nil {
		return netip.AddrPort{}, err
	}
	return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), port(sa.Port)), nil
}

// port reads a sockaddr's port, which is in network byte order.
func port(p uint16) uint16 {
	var b [2]byte
	*(*uint16)(unsafe.Pointer(&b[0])) = p
	return binary.BigEndian.Uint16(b[:])
}

func getsockopt(fd, level, opt int, val unsafe.Pointer, n *uint32) error {
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt),
		uintptr(val), uintptr(unsafe.Pointer(n)), 0)
	if e != 0 {
		return e
	}
	return nil
}

// setTransparent sets IP_TRANSPARENT, or IPV6_TRANSPARENT on an IPv6
// socket (which also covers IPv4 on a dual-stack one).
func setTransparent(fd int, v6 bool) error {
	if v6 {
		return unix.SetsockoptInt(fd, unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1)
	}
	return unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_TRANSPARENT, 1)
}
