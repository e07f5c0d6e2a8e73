//go:build unix

package tlsbypass

import (
	"errors"
	"net"
	"os"
	"syscall"
)

// copy moves bytes from src to dst until src ends. It returns nil on EOF,
// after propagating the half-close to dst.
//
// Reads happen inside RawConn.Read's callback (filler): one read(2) per
// wake-up, into a pooled buffer that goes back to the pool whenever the
// socket has nothing more (EAGAIN), so a direction waiting for data holds
// no buffer. A read that fills the buffer suggests more is queued: the next
// read follows at once, or, with Options.Splice, what is queued is spliced.
func (r *relay) copy(dst, src net.Conn) (n int64, err error) {
	sc, ok := src.(syscall.Conn)
	if !ok {
		return r.copyConn(dst, src)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return 0, err
	}
	var sp *splicer
	if r.opts.Splice != nil {
		sp = newSplicer(dst, src)
	}
	f := &filler{}
	defer f.release()
	fill := f.fill // once per direction: waiting must not allocate
	src.SetReadDeadline(r.readDeadline())
	for {
		if err := raw.Read(fill); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				if err := r.expired(); err != nil {
					return n, err
				}
				src.SetReadDeadline(r.readDeadline())
				continue
			}
			return n, err
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
		full := f.n == len(*f.bp)
		nw, err := r.write(dst, (*f.bp)[:f.n])
		n += int64(nw)
		if err != nil {
			return n, err
		}
		if !full {
			f.release()
			continue
		}
		if sp != nil {
			queued, spliced, nw, err := r.splice(sp)
			n += nw
			if err != nil {
				return n, err
			}
			if spliced || queued == 0 {
				f.release()
			}
		}
	}
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
		f.bp = bufPool.Get().(*[]byte)
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
		bufPool.Put(f.bp)
		f.bp = nil
	}
}
