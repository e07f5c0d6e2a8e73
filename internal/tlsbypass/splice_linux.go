package tlsbypass

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/defendergw/gateway/internal/bufpool"
)

// splicer moves one direction's bulk bytes with splice(2): kernel to kernel
// through a pipe, never copied into user space. It is consulted only while
// a direction is flowing (a read just filled the buffer), so it holds its
// pipe only for the bytes already queued: (*net.TCPConn).ReadFrom borrows a
// pipe from the runtime's pool for them and returns it once they are
// written. An idle tunnel keeps no pipe, unlike io.Copy between two
// TCPConns, whose splice holds a pipe pair per direction for the life of
// the copy.
type splicer struct {
	dst, src *net.TCPConn
	raw      syscall.RawConn
	queued   int
	inq      func(fd uintptr) // built once: asking must not allocate
	lr       io.LimitedReader
}

// newSplicer returns a splicer for a TCP-to-TCP direction, or nil.
//
//go:noinline
func newSplicer(dst, src net.Conn) *splicer {
	d, ok1 := dst.(*net.TCPConn)
	s, ok2 := src.(*net.TCPConn)
	if !ok1 || !ok2 {
		return nil
	}
	raw, err := s.SyscallConn()
	if err != nil {
		return nil
	}
	sp := &splicer{dst: d, src: s, raw: raw}
	sp.lr.R = s
	sp.inq = func(fd uintptr) {
		q, err := unix.IoctlGetInt(int(fd), unix.SIOCINQ)
		if err != nil {
			q = 0
		}
		sp.queued = q
	}
	return sp
}

// spliceMin is the smallest queue worth a pipe: more than one pooled
// buffer's worth. Smaller amounts cost the same two system calls either way.
const spliceMin = bufpool.Size

// splice moves the bytes queued on the source when there are at least
// spliceMin of them and a pipe is free (Options.Splice bounds them). It
// reports how many bytes were queued (0: the source is drained, wait for
// it), whether it spliced, and the bytes written.
//
// It is kept out of line so that the common path's stack stays shallow: an
// idle goroutine keeps the deepest stack it ever used, and Go stacks grow in
// powers of two from 2 KiB.
//
//go:noinline
func (r *relay) splice(sp *splicer) (queued int, spliced bool, n int64, err error) {
	if err := sp.raw.Control(sp.inq); err != nil {
		return 1, false, 0, nil // let the buffered read report it
	}
	if sp.queued < spliceMin || !r.opts.Splice.acquire() {
		return sp.queued, false, 0, nil
	}
	r.touch()
	wd := r.writeDeadline()
	sp.dst.SetWriteDeadline(wd)
	sp.lr.N = int64(sp.queued)
	n, err = sp.dst.ReadFrom(&sp.lr)
	r.opts.Splice.release()
	if err == nil || !errors.Is(err, os.ErrDeadlineExceeded) {
		return sp.queued, true, n, err
	}
	// ReadFrom both reads and writes: tell which deadline fired.
	if !wd.IsZero() && !time.Now().Before(wd) {
		return sp.queued, true, n, r.writeTimedOut()
	}
	// The source's read deadline (renewed only on waits).
	return sp.queued, true, n, r.readTimedOut(sp.src)
}
