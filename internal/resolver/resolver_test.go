package resolver

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func addrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, 0, len(ss))
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func TestResolve(t *testing.T) {
	srv := newDNSServer(t)
	srv.add(t,
		"dual.example. 300 IN A 192.0.2.1",
		"dual.example. 300 IN AAAA 2001:db8::1",
		"dual.example. 300 IN A 192.0.2.2",
		"v4only.example. 300 IN A 198.51.100.4",
		"v6only.example. 300 IN AAAA 2001:db8::6",
		"www.example. 60 IN CNAME edge.cdn.example.",
		"edge.cdn.example. 60 IN CNAME host.cdn.example.",
		"host.cdn.example. 60 IN A 203.0.113.7",
		"host.cdn.example. 60 IN AAAA 2001:db8::7",
		"clean.example. 60 IN A 203.0.113.5",
		"nodata.example. 60 IN TXT \"no addresses here\"",
	)
	srv.injectAnswer(t, "clean.example", "evil.example. 60 IN A 10.6.6.6")
	srv.injectAnswer(t, "clean.example", "evil.example. 60 IN AAAA fd00::666")
	srv.setNXDOMAIN("missing.example")
	srv.setSERVFAIL("broken.example")
	r := newTestResolver(t, Options{Servers: []string{srv.addr}, Timeout: time.Second})

	tests := []struct {
		name    string
		host    string
		want    []netip.Addr
		wantErr error
	}{
		{name: "A and AAAA, IPv4 first", host: "dual.example", want: addrs("192.0.2.1", "192.0.2.2", "2001:db8::1")},
		{name: "A only", host: "v4only.example", want: addrs("198.51.100.4")},
		{name: "AAAA only", host: "v6only.example", want: addrs("2001:db8::6")},
		{name: "CNAME chain", host: "www.example", want: addrs("203.0.113.7", "2001:db8::7")},
		{name: "unrelated owners ignored", host: "clean.example", want: addrs("203.0.113.5")},
		{name: "upper case and trailing dot", host: "DUAL.Example.", want: addrs("192.0.2.1", "192.0.2.2", "2001:db8::1")},
		{name: "IPv4 literal", host: "192.0.2.99", want: addrs("192.0.2.99")},
		{name: "IPv6 literal", host: "2001:db8::99", want: addrs("2001:db8::99")},
		{name: "NXDOMAIN", host: "missing.example", wantErr: ErrDNSFailure},
		{name: "SERVFAIL", host: "broken.example", wantErr: ErrDNSFailure},
		{name: "no A/AAAA records", host: "nodata.example", wantErr: ErrDNSFailure},
		{name: "unknown name", host: "unknown.example", wantErr: ErrDNSFailure},
		{name: "invalid name", host: "bad name.example", wantErr: ErrDNSFailure},
		{name: "empty label", host: "a..example", wantErr: ErrDNSFailure},
		{name: "empty", host: "", wantErr: ErrDNSFailure},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := r.Resolve(context.Background(), tt.host)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Resolve(%q) error = %v, want %v", tt.host, err, tt.wantErr)
				}
				if got != nil {
					t.Errorf("Resolve(%q) = %v, want nil on error", tt.host, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("Resolve(%q) error = %v, want nil", tt.host, err)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("Resolve(%q) = %v, want %v", tt.host, got, tt.want)
			}
		})
	}
	if got := srv.count("192.0.2.99", dns.TypeA, ""); got != 0 {
		t.Errorf("queries for an IP literal = %d, want 0", got)
	}
}

func TestResolveTTLCache(t *testing.T) {
	tests := []struct {
		name          string
		records       []string
		minTTL        time.Duration
		maxTTL        time.Duration
		stillCachedAt time.Duration // query count must stay 1 at this age
		expiredAt     time.Duration // query count must be 2 at this age
	}{
		{
			name:          "minimum over A and AAAA",
			records:       []string{"n.example. 60 IN A 192.0.2.1", "n.example. 120 IN AAAA 2001:db8::1"},
			stillCachedAt: 59 * time.Second,
			expiredAt:     61 * time.Second,
		},
		{
			name:          "minimum over CNAME chain",
			records:       []string{"n.example. 30 IN CNAME t.example.", "t.example. 300 IN A 192.0.2.1"},
			stillCachedAt: 29 * time.Second,
			expiredAt:     31 * time.Second,
		},
		{
			name:          "clamped up to MinTTL",
			records:       []string{"n.example. 1 IN A 192.0.2.1"},
			minTTL:        10 * time.Second,
			stillCachedAt: 9 * time.Second,
			expiredAt:     11 * time.Second,
		},
		{
			name:          "zero TTL clamped up to MinTTL",
			records:       []string{"n.example. 0 IN A 192.0.2.1"},
			minTTL:        5 * time.Second,
			stillCachedAt: 4 * time.Second,
			expiredAt:     6 * time.Second,
		},
		{
			name:          "clamped down to MaxTTL",
			records:       []string{"n.example. 86400 IN A 192.0.2.1"},
			maxTTL:        5 * time.Minute,
			stillCachedAt: 5*time.Minute - time.Second,
			expiredAt:     5*time.Minute + time.Second,
		},
		{
			name:          "no MaxTTL: the answer's TTL stands",
			records:       []string{"n.example. 86400 IN A 192.0.2.1"},
			stillCachedAt: 24*time.Hour - time.Second,
			expiredAt:     24*time.Hour + time.Second,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newDNSServer(t)
			srv.add(t, tt.records...)
			clock := newFakeClock()
			r := newTestResolver(t, Options{
				Servers: []string{srv.addr}, Timeout: time.Second,
				MinTTL: tt.minTTL, MaxTTL: tt.maxTTL, Now: clock.Now,
			})
			start := clock.Now()
			steps := []struct {
				age  time.Duration
				want int
			}{{0, 1}, {tt.stillCachedAt, 1}, {tt.expiredAt, 2}}
			for _, st := range steps {
				clock.Advance(start.Add(st.age).Sub(clock.Now()))
				if _, err := r.Resolve(context.Background(), "n.example"); err != nil {
					t.Fatalf("Resolve at age %v: %v", st.age, err)
				}
				if got := srv.count("n.example", dns.TypeA, ""); got != st.want {
					t.Errorf("A queries at age %v = %d, want %d", st.age, got, st.want)
				}
			}
		})
	}
}

func TestResolveNegativeCache(t *testing.T) {
	const negTTL = 10 * time.Second
	tests := []struct {
		name  string
		setup func(s *dnsServer)
	}{
		{name: "NXDOMAIN", setup: func(s *dnsServer) { s.setNXDOMAIN("neg.example") }},
		{name: "SERVFAIL", setup: func(s *dnsServer) { s.setSERVFAIL("neg.example") }},
		{name: "REFUSED", setup: func(s *dnsServer) { s.setRcode("neg.example", dns.RcodeRefused) }},
		{name: "no records", setup: func(*dnsServer) {}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newDNSServer(t)
			tt.setup(srv)
			clock := newFakeClock()
			r := newTestResolver(t, Options{Servers: []string{srv.addr}, Timeout: time.Second, NegativeTTL: negTTL, Now: clock.Now})
			steps := []struct {
				advance time.Duration
				want    int
			}{{0, 1}, {negTTL - time.Second, 1}, {2 * time.Second, 2}}
			for i, st := range steps {
				clock.Advance(st.advance)
				_, err := r.Resolve(context.Background(), "neg.example")
				if !errors.Is(err, ErrDNSFailure) {
					t.Fatalf("step %d: Resolve error = %v, want %v", i, err, ErrDNSFailure)
				}
				if got := srv.count("neg.example", dns.TypeA, ""); got != st.want {
					t.Errorf("step %d: A queries = %d, want %d", i, got, st.want)
				}
			}
		})
	}

	t.Run("timeouts are not cached", func(t *testing.T) {
		srv := newDNSServer(t)
		srv.add(t, "slow.example. 60 IN A 192.0.2.1")
		srv.setDelay(time.Second)
		r := newTestResolver(t, Options{Servers: []string{srv.addr}, Timeout: 50 * time.Millisecond})
		for i := 1; i <= 2; i++ {
			if _, err := r.Resolve(context.Background(), "slow.example"); !errors.Is(err, ErrDNSFailure) {
				t.Fatalf("Resolve #%d error = %v, want %v", i, err, ErrDNSFailure)
			}
			if got := srv.count("slow.example", dns.TypeA, ""); got != i {
				t.Errorf("A queries after Resolve #%d = %d, want %d", i, got, i)
			}
		}
	})
}

func TestResolveSingleflight(t *testing.T) {
	srv := newDNSServer(t)
	srv.add(t, "sf.example. 60 IN A 192.0.2.1", "sf.example. 60 IN AAAA 2001:db8::1")
	srv.setDelay(100 * time.Millisecond)
	r := newTestResolver(t, Options{Servers: []string{srv.addr}, Timeout: time.Second})

	const callers = 50
	want := addrs("192.0.2.1", "2001:db8::1")
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	results := make(chan []netip.Addr, callers)
	for range callers {
		wg.Go(func() {
			got, err := r.Resolve(context.Background(), "sf.example")
			errs <- err
			results <- got
		})
	}
	wg.Wait()
	close(errs)
	close(results)
	for err := range errs {
		if err != nil {
			t.Errorf("Resolve error = %v, want nil", err)
		}
	}
	for got := range results {
		if !slices.Equal(got, want) {
			t.Errorf("Resolve = %v, want %v", got, want)
		}
	}
	for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
		if got := srv.count("sf.example", qt, ""); got != 1 {
			t.Errorf("%s queries = %d, want 1", dns.TypeToString[qt], got)
		}
	}
}

func TestResolveTCPRetryOnTruncation(t *testing.T) {
	srv := newDNSServer(t)
	srv.add(t, "big.example. 60 IN A 192.0.2.1", "big.example. 60 IN AAAA 2001:db8::1")
	srv.setTruncate("big.example")
	r := newTestResolver(t, Options{Servers: []string{srv.addr}, Timeout: time.Second})

	got, err := r.Resolve(context.Background(), "big.example")
	if err != nil {
		t.Fatalf("Resolve error = %v, want nil", err)
	}
	if want := addrs("192.0.2.1", "2001:db8::1"); !slices.Equal(got, want) {
		t.Errorf("Resolve = %v, want %v", got, want)
	}
	for _, proto := range []string{"udp", "tcp"} {
		for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
			if got := srv.count("big.example", qt, proto); got != 1 {
				t.Errorf("%s %s queries = %d, want 1", proto, dns.TypeToString[qt], got)
			}
		}
	}
}

func TestResolveFailover(t *testing.T) {
	tests := []struct {
		name      string
		first     func(t *testing.T) string // address of the first server
		wantAddrs []netip.Addr
		wantErr   error
		wantNext  int // A queries expected at the second server
	}{
		{
			name:      "first server never answers",
			first:     func(t *testing.T) string { return newBlackhole(t) },
			wantAddrs: addrs("192.0.2.1"),
			wantNext:  1,
		},
		{
			name: "first server SERVFAIL",
			first: func(t *testing.T) string {
				s := newDNSServer(t)
				s.setSERVFAIL("fo.example")
				return s.addr
			},
			wantAddrs: addrs("192.0.2.1"),
			wantNext:  1,
		},
		{
			name: "first server REFUSED",
			first: func(t *testing.T) string {
				s := newDNSServer(t)
				s.setRcode("fo.example", dns.RcodeRefused)
				return s.addr
			},
			wantAddrs: addrs("192.0.2.1"),
			wantNext:  1,
		},
		{
			name: "NXDOMAIN from first server is final",
			first: func(t *testing.T) string {
				s := newDNSServer(t)
				s.setNXDOMAIN("fo.example")
				return s.addr
			},
			wantErr:  ErrDNSFailure,
			wantNext: 0,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			first := tt.first(t)
			second := newDNSServer(t)
			second.add(t, "fo.example. 60 IN A 192.0.2.1")
			r := newTestResolver(t, Options{Servers: []string{first, second.addr}, Timeout: 200 * time.Millisecond})

			start := time.Now()
			got, err := r.Resolve(context.Background(), "fo.example")
			if elapsed := time.Since(start); elapsed > 2*time.Second {
				t.Errorf("Resolve took %v, want < 2s", elapsed)
			}
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Errorf("Resolve error = %v, want %v", err, tt.wantErr)
				}
			} else if err != nil || !slices.Equal(got, tt.wantAddrs) {
				t.Errorf("Resolve = %v, %v; want %v, nil", got, err, tt.wantAddrs)
			}
			if got := second.count("fo.example", dns.TypeA, ""); got != tt.wantNext {
				t.Errorf("A queries at second server = %d, want %d", got, tt.wantNext)
			}
		})
	}
}

func TestResolveTimeout(t *testing.T) {
	tests := []struct {
		name       string
		servers    int
		timeout    time.Duration
		ctxTimeout time.Duration
		wantCtxErr error
	}{
		{name: "all servers time out", servers: 2, timeout: 100 * time.Millisecond},
		{name: "context deadline before server timeout", servers: 1, timeout: 300 * time.Millisecond, ctxTimeout: 50 * time.Millisecond, wantCtxErr: context.DeadlineExceeded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var servers []string
			for range tt.servers {
				servers = append(servers, newBlackhole(t))
			}
			r := newTestResolver(t, Options{Servers: servers, Timeout: tt.timeout})
			ctx := context.Background()
			if tt.ctxTimeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tt.ctxTimeout)
				defer cancel()
			}
			start := time.Now()
			_, err := r.Resolve(ctx, "timeout.example")
			elapsed := time.Since(start)
			if !errors.Is(err, ErrDNSFailure) {
				t.Errorf("Resolve error = %v, want %v", err, ErrDNSFailure)
			}
			if tt.wantCtxErr != nil && !errors.Is(err, tt.wantCtxErr) {
				t.Errorf("Resolve error = %v, want it to wrap %v", err, tt.wantCtxErr)
			}
			if limit := time.Second; elapsed > limit {
				t.Errorf("Resolve took %v, want < %v", elapsed, limit)
			}
		})
	}
}

func TestPing(t *testing.T) {
	tests := []struct {
		name    string
		servers func(t *testing.T) []string
		wantErr error
	}{
		{name: "server answers", servers: func(t *testing.T) []string { return []string{newDNSServer(t).addr} }},
		{name: "second server answers", servers: func(t *testing.T) []string { return []string{newBlackhole(t), newDNSServer(t).addr} }},
		{name: "no server answers", servers: func(t *testing.T) []string { return []string{newBlackhole(t)} }, wantErr: ErrDNSFailure},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newTestResolver(t, Options{Servers: tt.servers(t), Timeout: 100 * time.Millisecond})
			start := time.Now()
			err := r.Ping(context.Background())
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
				t.Errorf("Ping error = %v, want %v", err, tt.wantErr)
			}
			if elapsed := time.Since(start); elapsed > time.Second {
				t.Errorf("Ping took %v, want < 1s", elapsed)
			}
		})
	}
}

func TestResolveObserve(t *testing.T) {
	srv := newDNSServer(t)
	srv.add(t, "ok.example. 300 IN A 192.0.2.1")
	srv.setNXDOMAIN("missing.example")
	srv.setSERVFAIL("broken.example")
	var mu sync.Mutex
	var got []string
	r := newTestResolver(t, Options{Servers: []string{srv.addr}, Timeout: time.Second,
		Observe: func(result string, d time.Duration) {
			mu.Lock()
			defer mu.Unlock()
			got = append(got, result)
		}})
	ctx := context.Background()
	r.Resolve(ctx, "ok.example")
	r.Resolve(ctx, "ok.example")
	r.Resolve(ctx, "missing.example")
	r.Resolve(ctx, "broken.example")
	mu.Lock()
	defer mu.Unlock()
	want := []string{"success", "cache_hit", "nxdomain", "servfail"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("observed %v, want %v", got, want)
	}
}

// TestZeroOptionsTurnCachingOff: the package has no defaults of its own, so a
// zero cache size, MinTTL or NegativeTTL means "not cached", never a hidden
// value (the gateway's defaults live in internal/config's env tags).
func TestZeroOptionsTurnCachingOff(t *testing.T) {
	tests := []struct {
		name   string
		opts   Options
		setup  func(*dnsServer)
		host   string
		failed bool
	}{
		{name: "zero cache size", opts: Options{CacheSize: noCache, MinTTL: time.Minute}, host: "n.example",
			setup: func(s *dnsServer) { s.add(t, "n.example. 300 IN A 192.0.2.1") }},
		{name: "zero MinTTL and a TTL of 0", host: "n.example",
			setup: func(s *dnsServer) { s.add(t, "n.example. 0 IN A 192.0.2.1") }},
		{name: "zero NegativeTTL", host: "neg.example", failed: true,
			setup: func(s *dnsServer) { s.setNXDOMAIN("neg.example") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newDNSServer(t)
			tt.setup(srv)
			opts := tt.opts
			opts.Servers, opts.Timeout = []string{srv.addr}, time.Second
			r := newTestResolver(t, opts)
			for i := range 2 {
				_, err := r.Resolve(context.Background(), tt.host)
				if gotFailed := err != nil; gotFailed != tt.failed {
					t.Fatalf("lookup %d: err = %v, want failure %v", i, err, tt.failed)
				}
			}
			if got := srv.count(tt.host, dns.TypeA, ""); got != 2 {
				t.Errorf("A queries for two lookups = %d, want 2 (nothing cached)", got)
			}
		})
	}
}
