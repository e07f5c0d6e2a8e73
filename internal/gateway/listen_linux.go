package gateway

import (
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// listenConfig sets GATEWAY_TCP_KEEPALIVE once, on the listening socket:
// Linux copies the keep-alive switch and times into every socket accept
// returns (tcp(7)), so the net package is told not to set them again
// (KeepAlive -1), which saves three setsockopt calls per accepted
// connection. TestTCPKeepAlive reads them back from an accepted socket.
func listenConfig(keepAlive time.Duration) net.ListenConfig {
	if keepAlive <= 0 {
		return net.ListenConfig{KeepAlive: -1}
	}
	secs := int((keepAlive + time.Second - 1) / time.Second)
	return net.ListenConfig{
		KeepAlive: -1,
		Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				for _, o := range []struct{ level, opt, v int }{
					{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
					{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, secs},
					{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, secs},
				} {
					if serr = unix.SetsockoptInt(int(fd), o.level, o.opt, o.v); serr != nil {
						return
					}
				}
			})
			if err != nil {
				return err
			}
			return serr
		},
	}
}
