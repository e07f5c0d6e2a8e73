package auth

import (
	"net/netip"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

func TestLimiterSetBounded(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name     string
		limit    rate.Limit
		sweepAt  time.Duration // when the extra client arrives
		wantMax  int
		wantKept bool // client 0 (with a pending check) survives
	}{
		// 10/min refills a burst of 10 in one minute: full buckets are dropped.
		{"full buckets dropped", rate.Limit(10.0 / 60), 2 * time.Minute, 2, true},
		// 1/hour has not refilled, but the entries are idle for > 10 minutes.
		{"idle entries dropped", rate.Limit(1.0 / 3600), limiterIdle, 2, true},
		// Nothing refilled or idle yet: all kept, next sweep deferred.
		{"active entries kept", rate.Limit(1.0 / 3600), time.Minute, limiterSweepAt + 1, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newLimiterSet(tt.limit, 10)
			addr := func(i int) netip.Addr {
				return netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
			}
			if !s.begin(addr(0), t0) {
				t.Fatal("begin refused on a fresh client")
			}
			for i := 1; i < limiterSweepAt; i++ {
				s.fail(addr(i), t0)
			}
			if got := s.len(); got != limiterSweepAt {
				t.Fatalf("len = %d, want %d", got, limiterSweepAt)
			}
			s.fail(addr(limiterSweepAt), t0.Add(tt.sweepAt))
			if got := s.len(); got > tt.wantMax {
				t.Errorf("len after sweep = %d, want <= %d", got, tt.wantMax)
			}
			s.mu.Lock()
			_, kept := s.m[addr(0)]
			s.mu.Unlock()
			if kept != tt.wantKept {
				t.Errorf("client with pending check kept = %v, want %v", kept, tt.wantKept)
			}
			s.end(addr(0), t0.Add(tt.sweepAt), false)
		})
	}
}

func TestLimiterSetPending(t *testing.T) {
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	s := newLimiterSet(rate.Limit(1.0/60), 2)
	c := netip.MustParseAddr("2001:db8::1")
	steps := []struct {
		name string
		op   func() bool
		want bool
	}{
		{"allowed fresh", func() bool { return s.allowed(c, now) }, true},
		{"begin 1", func() bool { return s.begin(c, now) }, true},
		{"begin 2", func() bool { return s.begin(c, now) }, true},
		{"begin 3 refused: both tokens held", func() bool { return s.begin(c, now) }, false},
		{"allowed while held (may join a check)", func() bool { return s.allowed(c, now) }, true},
		{"success releases token", func() bool { s.end(c, now, false); return s.allowed(c, now) }, true},
		{"failure consumes token", func() bool { s.end(c, now, true); return s.begin(c, now) }, true},
		{"no token left", func() bool { s.end(c, now, true); return s.allowed(c, now) }, false},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			if got := st.op(); got != st.want {
				t.Errorf("got %v, want %v", got, st.want)
			}
		})
	}
}
