package upstream

import (
	"sync"
	"time"
)

// pool keeps idle keep-alive connections per host:port, most recently used
// last, and closes those idle longer than the idle timeout.
type pool struct {
	mu              sync.Mutex
	idle            map[string][]*conn
	n               int
	max, maxPerHost int
	timeout         time.Duration
	sweeper         *time.Timer // runs while the pool is not empty
}

func (p *pool) init(timeout time.Duration, max, maxPerHost int) {
	p.idle = make(map[string][]*conn)
	p.timeout, p.max, p.maxPerHost = timeout, max, maxPerHost
}

// get takes the most recently used connection to addr that has not been
// idle too long, or returns nil.
func (p *pool) get(addr string) *conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	list := p.idle[addr]
	for len(list) > 0 {
		pc := list[len(list)-1]
		list[len(list)-1] = nil
		list = list[:len(list)-1]
		p.n--
		if time.Since(pc.idleAt) < p.timeout {
			p.store(addr, list)
			return pc
		}
		pc.nc.Close()
	}
	p.store(addr, list)
	return nil
}

func (p *pool) store(addr string, list []*conn) {
	if len(list) == 0 {
		delete(p.idle, addr)
		return
	}
	p.idle[addr] = list
}

// put pools pc; it reports false (and pools nothing) when the pool is full.
func (p *pool) put(pc *conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.n >= p.max || len(p.idle[pc.addr]) >= p.maxPerHost {
		return false
	}
	pc.idleAt = time.Now()
	p.idle[pc.addr] = append(p.idle[pc.addr], pc)
	p.n++
	if p.sweeper == nil {
		p.sweeper = time.AfterFunc(p.timeout, p.sweep)
	}
	return true
}

// sweep closes connections idle past the timeout, so an origin's idle
// sockets are not held open after nobody needs them, and runs again while
// any remain.
func (p *pool) sweep() {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	next := time.Duration(0)
	for addr, list := range p.idle {
		// The list is ordered by idleAt: expired ones are at the front.
		i := 0
		for i < len(list) && now.Sub(list[i].idleAt) >= p.timeout {
			list[i].nc.Close()
			i++
		}
		p.n -= i
		list = append(list[:0], list[i:]...)
		clear(list[len(list):cap(list)])
		p.store(addr, list)
		if len(list) > 0 {
			if d := p.timeout - now.Sub(list[0].idleAt); next == 0 || d < next {
				next = d
			}
		}
	}
	if next > 0 {
		p.sweeper.Reset(next)
	} else {
		p.sweeper = nil
	}
}

// closeAll closes every pooled connection; later puts still pool (the
// client stays usable), as with http.Transport.CloseIdleConnections.
func (p *pool) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for addr, list := range p.idle {
		for _, pc := range list {
			pc.nc.Close()
		}
		delete(p.idle, addr)
	}
	p.n = 0
}
