package proxy

import (
	"context"
	"net"
	"sync"
	"time"
)

// tunnels tracks open raw tunnels so that shutdown can let them finish and
// then close the stragglers.
type tunnels struct {
	mu    sync.Mutex
	conns map[net.Conn]net.Conn // client → upstream
	idle  chan struct{}         // closed when the last tunnel ends during shutdown
}

func (t *tunnels) add(client, upstream net.Conn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.conns == nil {
		t.conns = map[net.Conn]net.Conn{}
	}
	t.conns[client] = upstream
}

func (t *tunnels) remove(client net.Conn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.conns, client)
	if len(t.conns) == 0 && t.idle != nil {
		close(t.idle)
		t.idle = nil
	}
}

// Active returns the number of open raw tunnels.
func (s *Server) Active() int {
	s.tunnels.mu.Lock()
	defer s.tunnels.mu.Unlock()
	return len(s.tunnels.conns)
}

// Shutdown waits until every open raw tunnel has ended or ctx is done, then
// closes what is left. Stop accepting first (http.Server.Shutdown): new
// tunnels are not refused here.
func (s *Server) Shutdown(ctx context.Context) error {
	t := &s.tunnels
	t.mu.Lock()
	if len(t.conns) == 0 {
		t.mu.Unlock()
		return nil
	}
	idle := make(chan struct{})
	t.idle = idle
	t.mu.Unlock()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
	}
	t.mu.Lock()
	for c, u := range t.conns {
		// Closing both ends makes each Relay return and log its tunnel.
		c.SetDeadline(time.Unix(1, 0))
		u.SetDeadline(time.Unix(1, 0))
		c.Close()
		u.Close()
	}
	t.mu.Unlock()
	return ctx.Err()
}
