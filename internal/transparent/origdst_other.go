//go:build !linux

package transparent

import (
	"errors"
	"net/netip"
)

func originalDst(int, bool) (netip.AddrPort, error) {
	return netip.AddrPort{}, errors.New("SO_ORIGINAL_DST is Linux only")
}

func setTransparent(int, bool) error { return errors.New("IP_TRANSPARENT is Linux only") }
