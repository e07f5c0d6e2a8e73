package tlsbypass

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// spliceCopy moves bytes from src to dst with splice(2) through a pipe the
// kernel never copies into user space, holding the pipe only while bytes
// move: the direction waits for readability holding nothing, asks the socket
// how many bytes are queued (SIOCINQ), and hands exactly that many to
// (*net.TCPConn).ReadFrom, which splices them through a pipe borrowed from
// the runtime's pipe pool and returns it when they are written. A tunnel that
// goes idle therefore keeps no pipe, unlike io.Copy between two TCPConns,
// whose splice holds a pipe pair per direction for the life of the copy.
//
// A burst smaller than spliceMin, or one that finds every pipe allowed by
// Options.Splice in use, is copied through a pooled buffer instead.
//
// The result is the same as the buffered copy's: nil on EOF after the half-close
// is propagated, an error otherwise.
// spliceMin is the smallest burst worth a pipe: one pooled buffer's worth.
const spliceMin = bufSize

func (r *relay) spliceCopy(dst, src *net.TCPConn) (n int64, err error) {
	raw, err := src.SyscallConn()
	if err != nil {
		return 0, err
	}
	var avail int
	var eof bool
	var perr error
	var b [1]byte
	// ready runs on every wait; it is built once per direction so that
	// waiting does not allocate.
	ready := func(fd uintptr) bool {
		q, err := unix.IoctlGetInt(int(fd), unix.SIOCINQ)
		if err == nil && q > 0 {
			avail = q
			return true
		}
		// Nothing queued: wait, unless the socket has reached EOF or
		// holds an error, which a non-blocking peek reports.
		nr, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case err == syscall.EAGAIN:
			return false
		case err != nil:
			perr = err
		case nr == 0:
			eof = true
		default:
			avail = nr // arrived after the ioctl
		}
		return true
	}
	lr := &io.LimitedReader{R: src}
	src.SetReadDeadline(r.readDeadline())
	for {
		if err := raw.Read(ready); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				if err := r.expired(); err != nil {
					return n, err
				}
				src.SetReadDeadline(r.readDeadline())
				continue
			}
			return n, fmt.Errorf("read %s: %w", src.RemoteAddr(), err)
		}
		switch {
		case perr != nil:
			// The peek consumed the socket's pending error (a reset):
			// a read would now report a clean EOF instead.
			return n, fmt.Errorf("read %s: %w", src.RemoteAddr(), perr)
		case eof:
			dst.CloseWrite()
			return n, nil
		}
		if avail < spliceMin || !r.opts.Splice.acquire() {
			// A burst that one buffer holds costs the same two system
			// calls either way, and keeps the goroutine's stack shallow
			// (an idle tunnel's size is mostly its two stacks). Larger
			// bursts are spliced unless every pipe is busy.
			bp := bufPool.Get().(*[]byte)
			nr, rerr := src.Read((*bp)[:min(avail, len(*bp))])
			var werr error
			if nr > 0 {
				var nw int
				nw, werr = r.write(dst, (*bp)[:nr])
				n += int64(nw)
			}
			bufPool.Put(bp)
			switch {
			case werr != nil:
				return n, werr
			case rerr != nil && !errors.Is(rerr, os.ErrDeadlineExceeded):
				return n, rerr // EOF cannot come before the queued bytes
			}
			continue
		}
		r.touch()
		wd := r.writeDeadline()
		dst.SetWriteDeadline(wd)
		lr.N = int64(avail)
		nw, err := dst.ReadFrom(lr)
		r.opts.Splice.release()
		n += nw
		if err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				return n, err
			}
			if err := r.expired(); err != nil {
				return n, err
			}
			if !wd.IsZero() && !time.Now().Before(wd) {
				// The peer stopped reading for a whole idle period.
				return n, errIdle
			}
			// ReadFrom both reads and writes: src's read deadline passed
			// (it is renewed only on waits), not dst's write deadline.
			src.SetReadDeadline(r.readDeadline())
		}
	}
}

const spliceSupported = true
