package auth

import (
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

const (
	// limiterSweepAt is the map size above which idle limiters are swept.
	limiterSweepAt = 10000
	// limiterIdle is how long a limiter must be unused to be swept even
	// if its bucket has not refilled yet.
	limiterIdle = 10 * time.Minute
)

// limiterSet holds a failed-attempt token bucket per client address.
// A client without an entry has a full bucket. It is safe for concurrent
// use.
type limiterSet struct {
	limit rate.Limit
	burst int

	mu        sync.Mutex
	m         map[netip.Addr]*clientLimiter
	nextSweep int
}

type clientLimiter struct {
	lim      *rate.Limiter
	pending  int // bcrypt checks in progress, each holding a token
	lastSeen time.Time
}

func newLimiterSet(limit rate.Limit, burst int) *limiterSet {
	return &limiterSet{
		limit:     limit,
		burst:     burst,
		m:         make(map[netip.Addr]*clientLimiter),
		nextSweep: limiterSweepAt,
	}
}

// allowed reports whether client has a token left. Tokens held by pending
// checks still count: a request may join an identical check in progress.
func (s *limiterSet) allowed(client netip.Addr, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.m[client]
	return !ok || c.lim.TokensAt(now) >= 1
}

// begin holds a token for a check about to run; false if none is free.
// Every successful begin must be followed by end.
func (s *limiterSet) begin(client netip.Addr, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.get(client, now)
	if c.lim.TokensAt(now)-float64(c.pending) < 1 {
		return false
	}
	c.pending++
	return true
}

// end releases the token held by begin, consuming it if the check failed.
func (s *limiterSet) end(client netip.Addr, now time.Time, failed bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.get(client, now)
	c.pending--
	if failed {
		c.lim.ReserveN(now, 1)
	}
}

// fail consumes one token for a failure that needed no bcrypt check.
func (s *limiterSet) fail(client netip.Addr, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.get(client, now).lim.ReserveN(now, 1)
}

// get returns client's limiter, creating it; s.mu must be held.
func (s *limiterSet) get(client netip.Addr, now time.Time) *clientLimiter {
	c, ok := s.m[client]
	if !ok {
		if len(s.m) >= s.nextSweep {
			s.sweep(now)
		}
		c = &clientLimiter{lim: rate.NewLimiter(s.limit, s.burst)}
		s.m[client] = c
	}
	c.lastSeen = now
	return c
}

// sweep drops limiters with nothing pending that are either full (the same
// as no entry) or idle for limiterIdle. The next sweep happens when the map
// has doubled, so a map of mostly active clients is not rescanned on every
// insertion.
func (s *limiterSet) sweep(now time.Time) {
	for addr, c := range s.m {
		if c.pending == 0 && (now.Sub(c.lastSeen) >= limiterIdle || c.lim.TokensAt(now) >= float64(s.burst)) {
			delete(s.m, addr)
		}
	}
	s.nextSweep = max(limiterSweepAt, 2*len(s.m))
}

// len returns the number of tracked clients (for tests).
func (s *limiterSet) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}
