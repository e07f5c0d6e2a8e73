package gateway

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"

	"github.com/defendergw/gateway/internal/allowlist"
	"github.com/defendergw/gateway/internal/pac"
)

// pacCache remembers the PAC file of one policy and advertised address.
type pacCache struct {
	policy *allowlist.Policy
	addr   string
	body   []byte
}

// pacServer renders the PAC file served on the proxy port.
type pacServer struct {
	public, dflt string
	listen       []net.Addr // the proxy listeners
	cache        atomic.Pointer[pacCache]
}

// pac returns the PAC file for p. The advertised address is
// GATEWAY_PUBLIC_ADDR, else the address of the listener the request
// reached (local), else, for a listener on all interfaces, the address the
// client used to fetch the file.
func (s *pacServer) pac(p *allowlist.Policy, requestHost string, local net.Addr) ([]byte, error) {
	addr := s.public
	if addr == "" {
		addr = advertisedAddr(s.reached(local), requestHost)
	}
	if c := s.cache.Load(); c != nil && c.policy == p && c.addr == addr {
		return c.body, nil
	}
	body, err := pac.Render(p, pac.Options{Proxy: addr, Default: s.dflt})
	if err != nil {
		return nil, err
	}
	s.cache.Store(&pacCache{policy: p, addr: addr, body: body})
	return body, nil
}

// reached is the listener a connection to local arrived on: the one on
// exactly that address, else the one on all interfaces with its port,
// else (local unknown) the first.
func (s *pacServer) reached(local net.Addr) net.Addr {
	l, err := netip.ParseAddrPort(fmt.Sprint(local))
	if err == nil {
		for _, want := range []func(netip.AddrPort) bool{
			func(a netip.AddrPort) bool { return a.Addr().Unmap() == l.Addr().Unmap() },
			func(a netip.AddrPort) bool { return a.Addr().IsUnspecified() },
		} {
			for _, a := range s.listen {
				if ap, err := netip.ParseAddrPort(a.String()); err == nil && ap.Port() == l.Port() && want(ap) {
					return a
				}
			}
		}
	}
	return s.listen[0]
}

func advertisedAddr(listen net.Addr, requestHost string) string {
	host, port, _ := net.SplitHostPort(listen.String())
	if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() {
		return listen.String()
	}
	if h, _, err := net.SplitHostPort(requestHost); err == nil {
		return net.JoinHostPort(strings.Trim(h, "[]"), port)
	}
	if requestHost != "" {
		return net.JoinHostPort(strings.Trim(requestHost, "[]"), port)
	}
	return listen.String()
}
