//go:build !unix

package tlsbypass

import "net"

// copy moves bytes from src to dst until src ends, through a pooled buffer
// (the wait-then-borrow copy needs a Unix read(2)).
func (r *relay) copy(dst, src net.Conn) (int64, error) { return r.copyConn(dst, src) }

// readAvailable reads what src has into a pooled buffer, held while the read
// waits (the wait-then-borrow read needs a Unix read(2)).
func (r *relay) readAvailable(src net.Conn) (*[]byte, int, error) { return r.readAvailableConn(src) }
