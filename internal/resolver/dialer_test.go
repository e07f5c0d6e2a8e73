package resolver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// listenPair opens TCP listeners on 127.0.0.1 and 127.0.0.2 sharing one port.
func listenPair(t *testing.T) (ln1, ln2 *net.TCPListener, port int) {
	t.Helper()
	for attempt := 0; attempt < 20; attempt++ {
		a, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("listen 127.0.0.1: %v", err)
		}
		port = a.Addr().(*net.TCPAddr).Port
		b, err := net.Listen("tcp", fmt.Sprintf("127.0.0.2:%d", port))
		if err != nil {
			a.Close()
			continue
		}
		t.Cleanup(func() { a.Close(); b.Close() })
		return a.(*net.TCPListener), b.(*net.TCPListener), port
	}
	t.Fatal("no port free on both 127.0.0.1 and 127.0.0.2")
	return nil, nil, 0
}

// closedPort returns a port on 127.0.0.1 that nothing listens on.
func closedPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	return port
}

// acceptWithin returns a connection that reached ln within d, or nil.
func acceptWithin(t *testing.T, ln *net.TCPListener, d time.Duration) net.Conn {
	t.Helper()
	if err := ln.SetDeadline(time.Now().Add(d)); err != nil {
		t.Fatalf("SetDeadline: %v", err)
	}
	c, err := ln.Accept()
	if err != nil {
		return nil
	}
	return c
}

// loopbackOnly is a Dialer.dial hook that fails the test, without sending
// anything, if the dialer tries an address outside 127.0.0.0/8.
func loopbackOnly(t *testing.T) func(ctx context.Context, network, address string) (net.Conn, error) {
	return func(ctx context.Context, network, address string) (net.Conn, error) {
		ap, err := netip.ParseAddrPort(address)
		if err != nil || !ap.Addr().Is4() || !ap.Addr().IsLoopback() {
			t.Errorf("dialer tried %s %s; tests must only dial 127.0.0.0/8", network, address)
			return nil, errors.New("test refused non-loopback dial")
		}
		var nd net.Dialer
		return nd.DialContext(ctx, network, address)
	}
}

func TestDialer(t *testing.T) {
	srv := newDNSServer(t)
	srv.add(t,
		"ok.example. 60 IN A 127.0.0.1",
		"internal.example. 60 IN A 127.0.0.2",
		"mixed.example. 60 IN A 127.0.0.1",
		"mixed.example. 60 IN A 127.0.0.2",
		"mixed6.example. 60 IN A 127.0.0.1",
		"mixed6.example. 60 IN AAAA ::1",
		"multi.example. 60 IN A 127.0.0.3",
		"multi.example. 60 IN A 127.0.0.1",
		"metadata.example. 60 IN A 169.254.169.254",
	)
	srv.setNXDOMAIN("missing.example")
	r := newTestResolver(t, Options{Servers: []string{srv.addr}, Timeout: time.Second})
	ln1, ln2, port := listenPair(t)
	p := strconv.Itoa(port)
	refusedPort := strconv.Itoa(closedPort(t))
	only1 := []string{"127.0.0.1/32"}

	tests := []struct {
		name       string
		network    string
		addr       string
		allow      []string
		self       []string
		wantErr    error
		alsoErr    error              // a second sentinel the error must match
		wantRemote string             // listener address that must get the connection
		quiet      []*net.TCPListener // listeners that must see no connection
	}{
		{name: "allowed name connects", addr: "ok.example:" + p, allow: only1, wantRemote: "127.0.0.1:" + p},
		{name: "name with upper case and trailing dot", addr: "OK.example.:" + p, allow: only1, wantRemote: "127.0.0.1:" + p},
		{name: "name resolving to refused address", addr: "internal.example:" + p, allow: only1, wantErr: ErrPrivateDestination, quiet: []*net.TCPListener{ln1, ln2}},
		{name: "name resolving to allowed and refused addresses", addr: "mixed.example:" + p, allow: only1, wantErr: ErrPrivateDestination, quiet: []*net.TCPListener{ln1, ln2}},
		{name: "refused AAAA poisons the name", addr: "mixed6.example:" + p, allow: only1, wantErr: ErrPrivateDestination, quiet: []*net.TCPListener{ln1}},
		{name: "metadata address refused", addr: "metadata.example:80", allow: only1, wantErr: ErrPrivateDestination},
		{name: "next address after refused connection", addr: "multi.example:" + p, allow: []string{"127.0.0.0/8"}, wantRemote: "127.0.0.1:" + p},
		{name: "connection refused", addr: "ok.example:" + refusedPort, allow: only1, wantErr: ErrUpstreamUnreachable},
		{name: "NXDOMAIN", addr: "missing.example:" + p, allow: only1, wantErr: ErrDNSFailure},
		{name: "IP literal allowed", addr: "127.0.0.1:" + p, allow: only1, wantRemote: "127.0.0.1:" + p},
		{name: "IP literal refused", addr: "127.0.0.2:" + p, allow: only1, wantErr: ErrPrivateDestination, quiet: []*net.TCPListener{ln2}},
		{name: "IPv4-mapped literal refused", addr: "[::ffff:127.0.0.1]:" + p, allow: only1, wantErr: ErrPrivateDestination, quiet: []*net.TCPListener{ln1}},
		{name: "private literal refused", addr: "10.0.0.1:443", allow: only1, wantErr: ErrPrivateDestination},
		{name: "own listener refused", addr: "ok.example:" + p, allow: only1, self: []string{"127.0.0.1:" + p}, wantErr: ErrSelfDestination, alsoErr: ErrPrivateDestination, quiet: []*net.TCPListener{ln1}},
		{name: "own unspecified listener refused", addr: "127.0.0.1:" + p, allow: only1, self: []string{"0.0.0.0:" + p}, wantErr: ErrSelfDestination, alsoErr: ErrPrivateDestination, quiet: []*net.TCPListener{ln1}},
		{name: "tcp4 connects", network: "tcp4", addr: "ok.example:" + p, allow: only1, wantRemote: "127.0.0.1:" + p},
		{name: "tcp6 without IPv6 address", network: "tcp6", addr: "ok.example:" + p, allow: only1, wantErr: ErrDNSFailure},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pol := &Policy{AllowPrivate: prefixes(tt.allow...)}
			for _, s := range tt.self {
				pol.Self = append(pol.Self, netip.MustParseAddrPort(s))
			}
			d := &Dialer{Resolver: r, Policy: pol, Timeout: 5 * time.Second, dial: loopbackOnly(t)}
			network := tt.network
			if network == "" {
				network = "tcp"
			}
			conn, err := d.DialContext(context.Background(), network, tt.addr)
			if tt.wantErr != nil {
				if conn != nil {
					conn.Close()
				}
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("DialContext(%s) error = %v, want %v", tt.addr, err, tt.wantErr)
				}
				if tt.alsoErr != nil && !errors.Is(err, tt.alsoErr) {
					t.Errorf("DialContext(%s) error = %v, want it to match %v too", tt.addr, err, tt.alsoErr)
				}
				for _, ln := range tt.quiet {
					if c := acceptWithin(t, ln, 50*time.Millisecond); c != nil {
						c.Close()
						t.Errorf("listener %s got a connection, want none", ln.Addr())
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("DialContext(%s) error = %v, want nil", tt.addr, err)
			}
			defer conn.Close()
			if _, ok := conn.(*net.TCPConn); !ok {
				t.Errorf("conn type = %T, want *net.TCPConn", conn)
			}
			if got := conn.RemoteAddr().String(); got != tt.wantRemote {
				t.Errorf("RemoteAddr = %s, want %s", got, tt.wantRemote)
			}
			if c := acceptWithin(t, ln1, 2*time.Second); c == nil {
				t.Errorf("listener %s got no connection", ln1.Addr())
			} else {
				c.Close()
			}
		})
	}

	t.Run("IP literals skip DNS", func(t *testing.T) {
		if got := srv.count("127.0.0.1", dns.TypeA, ""); got != 0 {
			t.Errorf("queries for an IP literal = %d, want 0", got)
		}
	})
}

func TestDialerInvalidInput(t *testing.T) {
	d := &Dialer{Policy: &Policy{}, dial: loopbackOnly(t)}
	tests := []struct {
		name    string
		network string
		addr    string
	}{
		{name: "udp network", network: "udp", addr: "127.0.0.1:53"},
		{name: "missing port", network: "tcp", addr: "127.0.0.1"},
		{name: "named port", network: "tcp", addr: "127.0.0.1:https"},
		{name: "port zero", network: "tcp", addr: "127.0.0.1:0"},
		{name: "name without resolver", network: "tcp", addr: "ok.example:443"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn, err := d.DialContext(context.Background(), tt.network, tt.addr)
			if err == nil {
				conn.Close()
				t.Fatalf("DialContext(%s, %s) error = nil, want error", tt.network, tt.addr)
			}
		})
	}
}

func TestDialerTimeout(t *testing.T) {
	srv := newDNSServer(t)
	srv.add(t, "slow.example. 60 IN A 127.0.0.1")
	srv.setDelay(500 * time.Millisecond)
	r := newTestResolver(t, Options{Servers: []string{srv.addr}, Timeout: time.Second})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	pol := &Policy{AllowPrivate: prefixes("127.0.0.1/32")}

	expired, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	tests := []struct {
		name    string
		ctx     context.Context
		timeout time.Duration
		addr    string
	}{
		{name: "context deadline already passed", ctx: expired, timeout: 5 * time.Second, addr: "127.0.0.1:" + port},
		{name: "Dialer.Timeout expires during DNS", ctx: context.Background(), timeout: 100 * time.Millisecond, addr: "slow.example:" + port},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := &Dialer{Resolver: r, Policy: pol, Timeout: tt.timeout, dial: loopbackOnly(t)}
			start := time.Now()
			conn, err := d.DialContext(tt.ctx, "tcp", tt.addr)
			if conn != nil {
				conn.Close()
			}
			if !errors.Is(err, ErrUpstreamTimeout) {
				t.Errorf("DialContext(%s) error = %v, want %v", tt.addr, err, ErrUpstreamTimeout)
			}
			if elapsed := time.Since(start); elapsed > time.Second {
				t.Errorf("DialContext took %v, want < 1s", elapsed)
			}
		})
	}

	t.Run("cancelled context", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		d := &Dialer{Resolver: r, Policy: pol, dial: loopbackOnly(t)}
		_, err := d.DialContext(ctx, "tcp", "127.0.0.1:"+port)
		if !errors.Is(err, context.Canceled) {
			t.Errorf("DialContext error = %v, want %v", err, context.Canceled)
		}
	})
}
