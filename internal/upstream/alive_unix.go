//go:build unix

package upstream

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// alive reports whether a pooled connection can carry a request: the
// origin has neither closed it nor sent anything unasked while it was idle.
// One non-blocking MSG_PEEK answers both without a goroutine per idle
// connection (http.Transport keeps a reader goroutine parked on each).
func (pc *conn) alive() bool {
	sc, ok := pc.nc.(syscall.Conn)
	if !ok {
		return true
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	var buf [1]byte
	live := false
	err = raw.Read(func(fd uintptr) bool {
		_, _, err := unix.Recvfrom(int(fd), buf[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		// EAGAIN: nothing queued and the peer has not closed. Success
		// means a FIN (0 bytes) or bytes nobody asked for; any other
		// error (ECONNRESET) a dead connection.
		live = err == unix.EAGAIN || err == unix.EWOULDBLOCK
		return true
	})
	return err == nil && live
}
