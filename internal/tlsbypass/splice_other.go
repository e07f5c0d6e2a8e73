//go:build !linux

package tlsbypass

import (
	"errors"
	"net"
	"syscall"
)

// spliceCopy is not available off Linux; Start never calls it there.
func (r *relay) spliceCopy(dst, src *net.TCPConn, raw syscall.RawConn) (int64, error) {
	return 0, errors.New("splice: not supported on this platform")
}

const spliceSupported = false
