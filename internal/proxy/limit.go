package proxy

import (
	"errors"
	"net"
	"net/netip"
	"sync"
)

// Reasons for connections refused by the ConnLimiter.
const (
	ReasonOverloaded      = "overloaded"        // 503: GATEWAY_MAX_CONNS reached
	ReasonClientConnLimit = "client-conn-limit" // 429: GATEWAY_MAX_CONNS_PER_CLIENT reached
)

// ConnLimiter bounds concurrent client connections, in total and per client
// address, from accept until the connection (or the tunnel it became) ends.
// Connections over a limit get a complete HTTP answer and are closed at
// once; accepted connections are passed on unwrapped.
type ConnLimiter struct {
	// Max and PerClient are the limits; zero means no limit.
	Max, PerClient int
	// OnRefuse, if non-nil, is called with the reason of every refused
	// connection; if nil, nothing is called.
	OnRefuse func(reason string)

	mu        sync.Mutex
	live      map[net.Conn]netip.Addr
	perClient map[netip.Addr]int
}

// Active returns the number of connections currently counted.
func (l *ConnLimiter) Active() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.live)
}

// admit counts c, or says which limit it would exceed.
func (l *ConnLimiter) admit(c net.Conn) string {
	var a netip.Addr
	if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
		a = ap.Addr().Unmap()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.live == nil {
		l.live, l.perClient = map[net.Conn]netip.Addr{}, map[netip.Addr]int{}
	}
	switch {
	case l.Max > 0 && len(l.live) >= l.Max:
		return ReasonOverloaded
	case l.PerClient > 0 && l.perClient[a] >= l.PerClient:
		return ReasonClientConnLimit
	}
	l.live[c] = a
	l.perClient[a]++
	return ""
}

// Release stops counting c. It is idempotent: http.Server's ConnState and
// the end of a hijacked connection may both report the same connection.
func (l *ConnLimiter) Release(c net.Conn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	a, ok := l.live[c]
	if !ok {
		return
	}
	delete(l.live, c)
	if l.perClient[a]--; l.perClient[a] <= 0 {
		delete(l.perClient, a)
	}
}

// Listener returns ln with the limits applied at accept.
func (l *ConnLimiter) Listener(ln net.Listener) net.Listener {
	return &limitListener{Listener: ln, l: l}
}

type limitListener struct {
	net.Listener
	l *ConnLimiter
}

func (ll *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := ll.Listener.Accept()
		if err != nil {
			return nil, err
		}
		reason := ll.l.admit(c)
		if reason == "" {
			return c, nil
		}
		if ll.l.OnRefuse != nil {
			ll.l.OnRefuse(reason)
		}
		refuseErr := ErrOverloaded
		if reason == ReasonClientConnLimit {
			refuseErr = ErrClientConnLimit
		}
		// Answered before any request is read, off the accept loop.
		go newRefusal(refuseErr, c.LocalAddr().String(), nil, nil).closeWith(c, "HTTP/1.1")
	}
}

// Sentinels of the connection limits.
var (
	ErrOverloaded      = errors.New("the gateway is at its connection limit")
	ErrClientConnLimit = errors.New("this client address is at its connection limit")
)

func limitHint(reason string) string {
	if reason == ReasonClientConnLimit {
		return "this client address has too many open connections (GATEWAY_MAX_CONNS_PER_CLIENT); retry later."
	}
	return "the gateway is serving its maximum number of connections (GATEWAY_MAX_CONNS); retry later."
}
