package lab

import (
	"context"
	"net"
	"net/netip"
	"strconv"
)

// Dialer is the gateway's checked dialer (resolver.Dialer).
type Dialer interface {
	Lookup(ctx context.Context, host string, port uint16) ([]netip.AddrPort, error)
	DialChecked(ctx context.Context, addrs []netip.AddrPort) (net.Conn, error)
	DialContext(ctx context.Context, network, addr string) (net.Conn, error)
}

// PortMap sends the catalog's ports to the lab's endpoints: the gateway
// decides on the port the client asked for (443, 80); the lookup and the
// address checks then run on the mapped port, so the gateway's own
// listeners stay refused.
type PortMap struct {
	Dialer
	// Ports maps a port the gateway decided on to the endpoint's.
	Ports map[uint16]uint16
	// Map, if non-nil, maps ports instead of Ports (for tests that change
	// the mapping while the gateway runs); if nil, Ports is read.
	Map func(port uint16) uint16
}

func (p PortMap) mapped(port uint16) uint16 {
	if p.Map != nil {
		return p.Map(port)
	}
	if m, ok := p.Ports[port]; ok {
		return m
	}
	return port
}

// Lookup implements Dialer.
func (p PortMap) Lookup(ctx context.Context, host string, port uint16) ([]netip.AddrPort, error) {
	return p.Dialer.Lookup(ctx, host, p.mapped(port))
}

// DialContext implements Dialer.
func (p PortMap) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return nil, err
	}
	return p.Dialer.DialContext(ctx, network, net.JoinHostPort(host, strconv.Itoa(int(p.mapped(uint16(n))))))
}
