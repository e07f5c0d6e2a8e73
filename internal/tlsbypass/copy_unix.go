//go:build unix

package tlsbypass

import (
	"errors"
	"net"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/defendergw/gateway/internal/bufpool"
)

// copy moves bytes from src to dst until src ends. It returns nil on EOF,
// after propagating the half-close to dst.
//
// A direction holds a buffer only across one read and one write. Reads
// happen inside RawConn.Read's callback (filler): one read(2) per wake-up,
// into a pooled buffer that goes back to the pool when the socket has
// nothing (EAGAIN), so a direction waiting for data holds nothing. A read
// that fills the buffer means a transfer is flowing: with Options.Splice
// what is queued is spliced. Once a write has waited longer than stallAfter
// (the reader is slower than the source), each following read of the flow
// first waits, holding nothing, until dst can take more, so a tunnel
// stalled on a slow reader keeps its bytes in the kernel's socket buffers
// rather than in a buffer of ours. Fast flows skip that wait: asking for
// room before every read costs a system call and, measured, a quarter of
// the throughput.
func (r *relay) copy(dst, src net.Conn) (n int64, err error) {
	sc, ok := src.(syscall.Conn)
	if !ok {
		return r.copyConn(dst, src)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return 0, err
	}
	// The splicer and the room waiter are made on first use: most
	// tunnels never move a bulk transfer, and an idle tunnel's size is
	// what it allocated.
	var sp *splicer
	var room *roomWaiter
	canSplice, canWait := r.opts.Splice != nil, true
	st := &struct { // one allocation for both callbacks' state
		filler
		flusher
	}{}
	f := &st.filler
	defer f.release()
	fill := f.fill // once per direction: waiting must not allocate
	var w *flusher
	if dc, ok := dst.(syscall.Conn); ok {
		if draw, err := dc.SyscallConn(); err == nil {
			w = &st.flusher
			w.raw, w.fn = draw, w.write
		}
	}
	flowing, stalled := false, false
	src.SetReadDeadline(r.readDeadline())
	for {
		if flowing && canSplice && sp == nil {
			if sp = newSplicer(dst, src); sp == nil {
				canSplice = false
			}
		}
		if flowing && sp != nil {
			queued, spliced, nw, err := r.splice(sp)
			n += nw
			switch {
			case err != nil:
				return n, err
			case spliced:
				continue // still flowing
			case queued == 0:
				flowing = false // drained
			}
		}
		if flowing && stalled && canWait && room == nil {
			if room = newRoomWaiter(dst); room == nil {
				canWait = false
			}
		}
		if flowing && stalled && room != nil {
			if err := r.waitRoom(dst, room); err != nil {
				return n, err
			}
		}
		if err := raw.Read(fill); err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				return n, err
			}
			if err := r.readTimedOut(src); err != nil {
				return n, err
			}
			continue
		}
		if f.err != nil {
			return n, &net.OpError{Op: "read", Net: "tcp", Source: src.LocalAddr(), Addr: src.RemoteAddr(),
				Err: os.NewSyscallError("read", f.err)}
		}
		if f.n == 0 {
			f.release()
			r.closeWrite(dst)
			return n, nil
		}
		flowing = f.n == len(*f.bp)
		var start time.Time
		if flowing && !stalled {
			start = time.Now() // only a flowing transfer can stall
		}
		nw, err := r.writeNow(dst, w, (*f.bp)[:f.n])
		f.release()
		stalled = flowing && (stalled || time.Since(start) > stallAfter)
		n += int64(nw)
		if err != nil {
			return n, err
		}
	}
}

// stallAfter is how long a write may wait before its flow counts as stalled
// on a slow reader: far above a loopback or LAN write, far below a reader
// on a congested WAN link.
const stallAfter = 20 * time.Millisecond

// roomWaiter is the RawConn.Write callback that reports whether a socket
// can take more bytes (POLLOUT, without blocking); when it cannot, the
// runtime poller waits for the next writability edge.
type roomWaiter struct {
	raw  syscall.RawConn
	fds  [1]unix.PollFd
	room func(fd uintptr) bool // built once: waiting must not allocate
}

//go:noinline
func newRoomWaiter(dst net.Conn) *roomWaiter {
	sc, ok := dst.(syscall.Conn)
	if !ok {
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	w := &roomWaiter{raw: raw}
	w.room = func(fd uintptr) bool {
		w.fds[0] = unix.PollFd{Fd: int32(fd), Events: unix.POLLOUT}
		n, err := unix.Poll(w.fds[:], 0)
		// An error, or a socket in error (POLLERR, POLLHUP), is for the
		// write that follows to report.
		return err != nil || n > 0
	}
	return w
}

// waitRoom waits, within the write deadline, until dst can take more.
func (r *relay) waitRoom(dst net.Conn, w *roomWaiter) error {
	dst.SetWriteDeadline(r.writeDeadline())
	err := w.raw.Write(w.room)
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		return r.writeTimedOut()
	}
	return nil // other errors are for the write to report
}

// flusher is copy's RawConn.Write callback: one write(2) that never waits.
// Most writes of a tunnel complete at once; only one that finds the socket
// full needs a write deadline, so the common case arms no timer (a
// deadline is a timer update under the runtime's timer lock, measured at
// about 7 % of the gateway's CPU when every write set one).
type flusher struct {
	raw syscall.RawConn
	fn  func(fd uintptr) bool // built once: writing must not allocate
	p   []byte
	n   int
	err error
}

func (w *flusher) write(fd uintptr) bool {
	for {
		n, err := syscall.Write(int(fd), w.p)
		if err == syscall.EINTR {
			continue
		}
		w.n, w.err = max(n, 0), err
		return true
	}
}

// writeNow writes p to dst without a deadline when the socket takes it at
// once; whatever is left waits for room within the write deadline (write).
func (r *relay) writeNow(dst net.Conn, w *flusher, p []byte) (int, error) {
	if w == nil {
		return r.write(dst, p)
	}
	r.touch()
	w.p, w.n, w.err = p, 0, nil
	err := w.raw.Write(w.fn)
	n, werr := w.n, w.err
	w.p = nil
	switch {
	case err == nil && werr == nil && n == len(p):
		return n, nil
	case err == nil && werr != nil && werr != syscall.EAGAIN:
		return n, &net.OpError{Op: "write", Net: "tcp", Source: dst.LocalAddr(), Addr: dst.RemoteAddr(),
			Err: os.NewSyscallError("write", werr)}
	}
	// The socket is full, or a deadline left from an earlier wait has
	// passed: the rest goes through write, with a fresh deadline.
	m, err := r.write(dst, p[n:])
	return n + m, err
}

// filler is copy's RawConn.Read callback: it reads what the socket has into
// a pooled buffer, or, when there is nothing (EAGAIN), returns the buffer to
// the pool and lets the runtime poller wait for the next readability edge.
// n == 0 with a nil err is EOF.
type filler struct {
	bp  *[]byte
	n   int
	err error
}

func (f *filler) fill(fd uintptr) bool {
	if f.bp == nil {
		f.bp = bufpool.Get()
	}
	for {
		n, err := syscall.Read(int(fd), *f.bp)
		switch err {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			f.release()
			return false
		}
		f.n, f.err = max(n, 0), err
		return true
	}
}

func (f *filler) release() {
	if f.bp != nil {
		bufpool.Put(f.bp)
		f.bp = nil
	}
}

// readAvailable reads what src has, with one read(2) when it has something:
// the pooled buffer is taken only once the socket is readable (filler), so
// a guarded direction waiting for the peer's next flight holds nothing. It
// returns the buffer and the bytes read (0 and a nil error: EOF), within
// the relay's idle limit.
func (r *relay) readAvailable(src net.Conn) (*[]byte, int, error) {
	sc, ok := src.(syscall.Conn)
	if !ok {
		return r.readAvailableConn(src)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil, 0, err
	}
	var f filler
	src.SetReadDeadline(r.readDeadline())
	for {
		if err := raw.Read(f.fill); err != nil {
			f.release()
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				return nil, 0, err
			}
			if err := r.readTimedOut(src); err != nil {
				return nil, 0, err
			}
			continue
		}
		if f.err != nil {
			f.release()
			return nil, 0, &net.OpError{Op: "read", Net: "tcp", Source: src.LocalAddr(), Addr: src.RemoteAddr(),
				Err: os.NewSyscallError("read", f.err)}
		}
		if f.n == 0 {
			f.release()
			return nil, 0, nil
		}
		return f.bp, f.n, nil
	}
}
