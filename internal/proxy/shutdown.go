package proxy

import (
	"context"
	"net"
	"slices"
	"sync"
	"time"
)

// tunnels tracks open raw tunnels so that shutdown can let them finish and
// then close the stragglers, and so that the status page can list them.
type tunnels struct {
	mu    sync.Mutex
	conns map[net.Conn]openTunnel // by client connection
	idle  chan struct{}           // closed when the last tunnel ends during shutdown
}

// openTunnel is what the set holds per tunnel: the upstream end and the
// request state the relay's end callback holds anyway (no copy), and when it
// opened.
type openTunnel struct {
	upstream net.Conn
	st       *reqState
	since    time.Time
}

func (t *tunnels) add(client, upstream net.Conn, st *reqState) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.conns == nil {
		t.conns = map[net.Conn]openTunnel{}
	}
	t.conns[client] = openTunnel{upstream, st, time.Now()}
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
	for c, ot := range t.conns {
		// Closing both ends makes each Relay return and log its tunnel.
		u := ot.upstream
		c.SetDeadline(time.Unix(1, 0))
		u.SetDeadline(time.Unix(1, 0))
		c.Close()
		u.Close()
	}
	t.mu.Unlock()
	return ctx.Err()
}

// Tunnel describes one open raw tunnel.
type Tunnel struct {
	Client  string    `json:"client"`  // the client's address
	Target  string    `json:"target"`  // host:port of the CONNECT
	Service string    `json:"service"` // catalog service id ("" when unlisted)
	TLS     string    `json:"tls"`     // bypass or verified-mode name
	Since   time.Time `json:"since"`
}

// TunnelSummary is a bounded view of the open raw tunnels.
type TunnelSummary struct {
	Total     int                  `json:"total"`
	ByService map[string]int       `json:"by_service"` // service id ("" unlisted) → open tunnels
	Newest    map[string]time.Time `json:"newest"`     // service id → when its newest open tunnel opened
	Oldest    []Tunnel             `json:"oldest"`     // at most the limit asked for, oldest first
}

// Tunnels summarises the open raw tunnels, listing at most limit of them
// (the longest-lived first). Its cost is one pass over the set under the
// lock; the strings are formatted after it is released.
func (s *Server) Tunnels(limit int) TunnelSummary {
	type entry struct {
		client net.Conn
		ot     openTunnel
	}
	sum := TunnelSummary{ByService: map[string]int{}, Newest: map[string]time.Time{}}
	var all []entry
	t := &s.tunnels
	t.mu.Lock()
	sum.Total = len(t.conns)
	for c, ot := range t.conns {
		svc := ot.st.decision.Service()
		sum.ByService[svc]++
		if ot.since.After(sum.Newest[svc]) {
			sum.Newest[svc] = ot.since
		}
		if limit > 0 {
			all = append(all, entry{c, ot})
		}
	}
	t.mu.Unlock()
	slices.SortFunc(all, func(a, b entry) int { return a.ot.since.Compare(b.ot.since) })
	if len(all) > limit {
		all = all[:limit]
	}
	for _, e := range all {
		sum.Oldest = append(sum.Oldest, Tunnel{Client: e.client.RemoteAddr().String(),
			Target: e.ot.st.target.HostPort(), Service: e.ot.st.decision.Service(),
			TLS: e.ot.st.mode.String(), Since: e.ot.since})
	}
	return sum
}
