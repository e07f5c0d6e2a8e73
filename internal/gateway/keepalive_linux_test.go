package gateway

import (
	"context"
	"log/slog"
	"net"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/defendergw/gateway/internal/config"
	"github.com/defendergw/gateway/internal/proxy"
	"github.com/defendergw/gateway/internal/testutil"
)

// TestTCPKeepAlive reads the keep-alive options back from the gateway's own
// sockets: a client connection its listener accepted and an upstream
// connection its checked dialer made.
func TestTCPKeepAlive(t *testing.T) {
	upstream := testutil.Listen(t, "127.0.0.1:0")
	for _, tc := range []struct {
		name     string
		value    string // GATEWAY_TCP_KEEPALIVE; "" leaves the default
		wantOn   bool
		wantIdle int // seconds
	}{
		{"default", "", true, 30},
		{"45s", "45s", true, 45},
		{"off", "0", false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{
				"GATEWAY_LISTEN": "127.0.0.1:0", "GATEWAY_ADMIN_LISTEN": "off", "GATEWAY_DNS_SERVERS": "127.0.0.1:53",
				"GATEWAY_ALLOW_PRIVATE_DESTINATIONS": "127.0.0.0/8",
			}
			if tc.value != "" {
				env["GATEWAY_TCP_KEEPALIVE"] = tc.value
			}
			cfg, _, err := config.Load(env)
			if err != nil {
				t.Fatal(err)
			}
			var dialer proxy.Dialer
			g, err := New(Options{Config: cfg, Logger: slog.New(slog.DiscardHandler), WrapDialer: func(d proxy.Dialer) proxy.Dialer { dialer = d; return d }})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(g.Close)

			client, err := net.Dial("tcp", g.lns[0].Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			accepted, err := g.lns[0].Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer accepted.Close()
			out, err := dialer.DialContext(context.Background(), "tcp", upstream.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer out.Close()

			for side, c := range map[string]net.Conn{"accepted client": accepted, "dialed upstream": out} {
				on, idle, intvl := keepAliveOf(t, c)
				if on != tc.wantOn {
					t.Errorf("%s: SO_KEEPALIVE = %v, want %v", side, on, tc.wantOn)
				}
				if tc.wantOn && (idle != tc.wantIdle || intvl != tc.wantIdle) {
					t.Errorf("%s: TCP_KEEPIDLE %d s, TCP_KEEPINTVL %d s, want %d s each", side, idle, intvl, tc.wantIdle)
				}
			}
		})
	}
}

func keepAliveOf(t *testing.T, c net.Conn) (on bool, idle, intvl int) {
	t.Helper()
	raw, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var errs []error
	raw.Control(func(fd uintptr) {
		v, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_KEEPALIVE)
		errs = append(errs, err)
		on = v != 0
		idle, err = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
		errs = append(errs, err)
		intvl, err = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_KEEPINTVL)
		errs = append(errs, err)
	})
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	return on, idle, intvl
}
