//go:build !linux

package tlsbypass

import (
	"errors"
	"net"
)

// spliceCopy is not available off Linux; Start never calls it there.
func (r *relay) spliceCopy(dst, src *net.TCPConn) (int64, error) {
	return 0, errors.New("splice: not supported on this platform")
}

const spliceSupported = false
