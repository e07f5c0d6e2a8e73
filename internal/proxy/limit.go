package proxy

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/defendergw/gateway/internal/reason"
)

const (
	// limitRefusalTime bounds a refusal at a limit from accept to close: a
	// flood of connections must not hold descriptors the admitted tunnels
	// need.
	limitRefusalTime = 100 * time.Millisecond
	// maxRefusing bounds refusals in flight; past it a connection is closed
	// without an answer (a flood gets no more than this many descriptors).
	maxRefusing = 256
	// acceptErrorInterval is how often OnAcceptError may be called.
	acceptErrorInterval = 10 * time.Second
)

// ConnLimiter bounds concurrent client connections, in total and per client
// address, from accept until the connection (or the tunnel it became) ends.
// Connections over a limit get a complete HTTP answer and are closed at
// once; accepted connections are passed on unwrapped.
type ConnLimiter struct {
	// Max and PerClient are the limits; zero means no limit.
	Max, PerClient int
	// OnRefuse, if non-nil, is called with the reason of every refused
	// connection (reason.Overloaded or reason.ClientConnLimit); if nil,
	// nothing is called.
	OnRefuse func(reason.Code)
	// OnAcceptError, if non-nil, is called when accepting fails because the
	// process or system is out of file descriptors (EMFILE, ENFILE, also
	// ENOBUFS and ENOMEM), at most once per 10 s, with the error and how
	// many accepts failed since the last call; the listener keeps retrying
	// with a backoff and the connections already held keep being served.
	// If nil, nothing is called.
	OnAcceptError func(err error, failures int)

	refusing atomic.Int32 // refusals in flight

	errMu      sync.Mutex
	errLast    time.Time
	errPending int

	mu        sync.Mutex
	live      map[net.Conn]netip.Addr
	perClient map[netip.Addr]int
}

// Active returns the number of connections currently counted.
func (l *ConnLimiter) Active() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.live)
}

// admit counts c, or says which limit it would exceed.
func (l *ConnLimiter) admit(c net.Conn) reason.Code {
	var a netip.Addr
	if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
		a = ap.Addr().Unmap()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.live == nil {
		l.live, l.perClient = map[net.Conn]netip.Addr{}, map[netip.Addr]int{}
	}
	switch {
	case l.Max > 0 && len(l.live) >= l.Max:
		return reason.Overloaded
	case l.PerClient > 0 && l.perClient[a] >= l.PerClient:
		return reason.ClientConnLimit
	}
	l.live[c] = a
	l.perClient[a]++
	return reason.None
}

// Release stops counting c. It is idempotent: http.Server's ConnState and
// the end of a hijacked connection may both report the same connection.
func (l *ConnLimiter) Release(c net.Conn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	a, ok := l.live[c]
	if !ok {
		return
	}
	delete(l.live, c)
	if l.perClient[a]--; l.perClient[a] <= 0 {
		delete(l.perClient, a)
	}
}

// Listener returns ln with the limits applied at accept.
func (l *ConnLimiter) Listener(ln net.Listener) net.Listener {
	return &limitListener{Listener: ln, l: l}
}

// SilentListener is Listener for the transparent listener: a connection
// over a limit is closed without an answer, since an intercepted client
// may be speaking TLS, to which an HTTP answer is noise. It is counted the
// same (OnRefuse).
func (l *ConnLimiter) SilentListener(ln net.Listener) net.Listener {
	return &limitListener{Listener: ln, l: l, silent: true}
}

type limitListener struct {
	net.Listener
	l      *ConnLimiter
	silent bool
}

func (ll *limitListener) Accept() (net.Conn, error) {
	backoff := time.Duration(0)
	for {
		c, err := ll.Listener.Accept()
		if err != nil {
			if !outOfDescriptors(err) {
				return nil, err
			}
			// Serve what is held; try again a little later (as net/http
			// does, but without a log line per attempt).
			ll.l.acceptFailed(err)
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		rc := ll.l.admit(c)
		if rc == reason.None {
			return c, nil
		}
		if ll.l.OnRefuse != nil {
			ll.l.OnRefuse(rc)
		}
		if ll.silent {
			c.Close()
			continue
		}
		if ll.l.refusing.Add(1) > maxRefusing {
			// A flood: no descriptor stays open for it, not even to answer.
			ll.l.refusing.Add(-1)
			c.Close()
			continue
		}
		// Answered before any request is read, off the accept loop.
		go func() {
			defer ll.l.refusing.Add(-1)
			refuseAtLimit(c, renderRefusal(rc, rc.Status(), c.LocalAddr().String(), nil, nil))
		}()
	}
}

// refuseAtLimit answers a connection refused at a limit and closes it within
// limitRefusalTime. The answer is small, so a new connection's socket
// buffer takes it at once; what the client already sent is drained briefly
// before the close, so that unread data does not turn the close into a
// reset that loses the answer.
func refuseAtLimit(c net.Conn, f refusal) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(limitRefusalTime))
	if f.write(c, "HTTP/1.1") != nil {
		return
	}
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	io.Copy(io.Discard, io.LimitReader(c, 64<<10))
}

// outOfDescriptors reports an accept error that a full descriptor table (or
// kernel memory) causes: the listener is fine, the process is not.
func outOfDescriptors(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM)
}

// acceptFailed counts a failed accept and reports them at most once per
// acceptErrorInterval.
func (l *ConnLimiter) acceptFailed(err error) {
	l.errMu.Lock()
	l.errPending++
	report := l.OnAcceptError != nil && time.Since(l.errLast) >= acceptErrorInterval
	n := l.errPending
	if report {
		l.errLast, l.errPending = time.Now(), 0
	}
	l.errMu.Unlock()
	if report {
		l.OnAcceptError(err, n)
	}
}

// Sentinels of the connection limits.
var (
	ErrOverloaded      = errors.New("the gateway is at its connection limit")
	ErrClientConnLimit = errors.New("this client address is at its connection limit")
)
