package resolver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"
)

const (
	defaultDialTimeout = 10 * time.Second
	// minAttemptTimeout mirrors the net package: when several addresses share
	// the remaining time, each attempt gets at least this much (or all that is left).
	minAttemptTimeout = 2 * time.Second
)

// Dialer resolves a name once, checks every resolved address with the policy,
// and dials only checked addresses. A nil Policy behaves like the zero Policy
// (refuse every internal range).
type Dialer struct {
	Resolver *Resolver
	Policy   *Policy
	// Timeout bounds one DialContext or DialChecked call (resolution and
	// all attempts) whose context carries no deadline; default 10s. A
	// context's deadline is kept as it is.
	Timeout time.Duration
	// Observe, if non-nil, is called after every DialChecked with how long
	// connecting took and its error (nil on success); if nil, nothing is
	// reported.
	Observe func(d time.Duration, err error)
	// KeepAlive and KeepAliveConfig set TCP keep-alive on dialed
	// connections exactly as net.Dialer's fields of the same names do: the
	// zero values mean Go's default (probes after 15 s idle), a negative
	// KeepAlive with Enable false means none.
	KeepAlive       time.Duration
	KeepAliveConfig net.KeepAliveConfig

	// dial replaces net.Dialer.DialContext in tests (to assert that only
	// loopback addresses are ever dialed).
	dial func(ctx context.Context, network, address string) (net.Conn, error)
}

// DialContext dials "host:port" over TCP ("tcp", "tcp4" or "tcp6"). host may
// be a name or an IP literal (IP literals skip DNS but are still
// policy-checked); port must be numeric.
//
// If ANY resolved address is refused by the policy, the whole dial is refused
// with ErrPrivateDestination and nothing is dialed (a listed name pointing at
// an internal address signals poisoning). Otherwise it tries the addresses in
// order (IPv4 first), splitting the remaining time between them like the net
// package does, until one connects.
//
// Errors wrap ErrDNSFailure, ErrPrivateDestination (ErrSelfDestination),
// ErrUpstreamTimeout (dial timeout or context deadline, including during
// resolution) or ErrUpstreamUnreachable (refused, reset, no route, ...), with
// context like "dial host:port: ...". A cancelled ctx yields an error wrapping
// context.Canceled.
//
// The returned conn is the plain *net.TCPConn; conn.RemoteAddr() is the
// address actually dialed.
func (d *Dialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return nil, fmt.Errorf("dial %s: unsupported network %q", addr, network)
	}
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || port == 0 {
		return nil, fmt.Errorf("dial %s: invalid port %q", addr, portStr)
	}

	ctx, cancel := d.bound(ctx)
	defer cancel()
	checked, err := d.Lookup(ctx, host, uint16(port))
	if err != nil {
		return nil, err
	}
	targets := checked[:0:0]
	for _, ap := range checked {
		if (network == "tcp4" && !ap.Addr().Is4()) || (network == "tcp6" && !ap.Addr().Is6()) {
			continue
		}
		targets = append(targets, ap)
	}
	if len(targets) == 0 {
		return nil, fmt.Errorf("dial %s: %w: no address for network %s", addr, ErrDNSFailure, network)
	}
	return d.DialChecked(ctx, targets)
}

// bound gives ctx the dialer's Timeout unless it already carries a
// deadline: a request's one deadline, set at the proxy's front door, is
// not shortened or restarted here.
func (d *Dialer) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, d.timeout())
}

func (d *Dialer) timeout() time.Duration {
	if d.Timeout <= 0 {
		return defaultDialTimeout
	}
	return d.Timeout
}

// Lookup resolves host (a name or an IP literal) and checks every address
// with the policy for port. It returns the checked destinations, IPv4 first,
// or an error wrapping ErrDNSFailure, ErrPrivateDestination or (deadline
// while resolving) ErrUpstreamTimeout. If any address is refused, none is
// returned. Callers that must answer before connecting (a verified tunnel
// answers 200, reads the ClientHello, and only then connects) call Lookup
// early and DialChecked later, still dialing only what was checked.
func (d *Dialer) Lookup(ctx context.Context, host string, port uint16) ([]netip.AddrPort, error) {
	addr := net.JoinHostPort(host, strconv.Itoa(int(port)))
	var addrs []netip.Addr
	if ip, perr := netip.ParseAddr(host); perr == nil {
		addrs = []netip.Addr{ip}
	} else {
		if d.Resolver == nil {
			return nil, fmt.Errorf("dial %s: %w: no resolver configured", addr, ErrDNSFailure)
		}
		var err error
		addrs, err = d.Resolver.Resolve(ctx, host)
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) {
				return nil, fmt.Errorf("dial %s: %w: while resolving: %w", addr, ErrUpstreamTimeout, context.DeadlineExceeded)
			}
			if errors.Is(err, context.Canceled) {
				return nil, fmt.Errorf("dial %s: while resolving: %w", addr, context.Canceled)
			}
			return nil, fmt.Errorf("dial %s: %w", addr, err)
		}
	}
	// Check every address before dialing any of them.
	targets := make([]netip.AddrPort, 0, len(addrs))
	for _, ip := range addrs {
		ap := netip.AddrPortFrom(ip, port)
		if err := d.Policy.CheckAddrPort(ap); err != nil {
			return nil, fmt.Errorf("dial %s: %w", addr, err)
		}
		targets = append(targets, ap)
	}
	if len(targets) == 0 {
		return nil, fmt.Errorf("dial %s: %w: no address", addr, ErrDNSFailure)
	}
	return targets, nil
}

// DialChecked connects to the first reachable destination of targets, which
// must come from Lookup. It splits the remaining time between them like the
// net package does and bounds the whole attempt by ctx's deadline, or by
// Timeout if it has none.
func (d *Dialer) DialChecked(ctx context.Context, targets []netip.AddrPort) (net.Conn, error) {
	if len(targets) == 0 {
		return nil, fmt.Errorf("dial: %w: no address", ErrDNSFailure)
	}
	ctx, cancel := d.bound(ctx)
	defer cancel()
	start := time.Now()
	conn, err := d.dialTargets(ctx, targets)
	if d.Observe != nil {
		d.Observe(time.Since(start), err)
	}
	return conn, err
}

func (d *Dialer) dialTargets(ctx context.Context, targets []netip.AddrPort) (net.Conn, error) {
	var firstErr error
	for i, ap := range targets {
		conn, err := d.dialOne(ctx, ap, len(targets)-i)
		if err == nil {
			return conn, nil
		}
		if firstErr == nil {
			firstErr = err
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, classifyDialError(targets[0].String(), firstErr)
}

// dialOne connects to ap, bounded by a share of ctx's remaining time.
func (d *Dialer) dialOne(ctx context.Context, ap netip.AddrPort, remaining int) (net.Conn, error) {
	if deadline, ok := ctx.Deadline(); ok {
		now := time.Now()
		left := deadline.Sub(now)
		if left <= 0 {
			return nil, context.DeadlineExceeded
		}
		share := left / time.Duration(remaining)
		if share < minAttemptTimeout {
			share = min(left, minAttemptTimeout)
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, now.Add(share))
		defer cancel()
	}
	network := "tcp4"
	if ap.Addr().Is6() {
		network = "tcp6"
	}
	if d.dial != nil {
		return d.dial(ctx, network, ap.String())
	}
	nd := net.Dialer{KeepAlive: d.KeepAlive, KeepAliveConfig: d.KeepAliveConfig}
	return nd.DialContext(ctx, network, ap.String())
}

// classifyDialError maps a connection error to ErrUpstreamTimeout or
// ErrUpstreamUnreachable (context.Canceled is passed through).
func classifyDialError(addr string, err error) error {
	if errors.Is(err, context.Canceled) {
		return fmt.Errorf("dial %s: %w", addr, err)
	}
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		return fmt.Errorf("dial %s: %w: %w", addr, ErrUpstreamTimeout, err)
	}
	return fmt.Errorf("dial %s: %w: %w", addr, ErrUpstreamUnreachable, err)
}
