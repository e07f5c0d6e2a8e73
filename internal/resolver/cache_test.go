package resolver

import (
	"context"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func TestCacheBounded(t *testing.T) {
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name    string
		max     int
		puts    int
		ttl     time.Duration
		advance time.Duration // before the final put
		wantMax int
	}{
		{name: "arbitrary eviction keeps the bound", max: 8, puts: 100, ttl: time.Minute, wantMax: 8},
		{name: "expired entries swept first", max: 8, puts: 8, ttl: time.Second, advance: 2 * time.Second, wantMax: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCache(tt.max)
			for i := range tt.puts {
				c.put(string(rune('a'+i%26))+string(rune('0'+i/26)), nil, nil, now, tt.ttl)
			}
			c.put("last", addrs("192.0.2.1"), nil, now.Add(tt.advance), tt.ttl)
			if got := c.len(); got > tt.wantMax {
				t.Errorf("cache len = %d, want <= %d", got, tt.wantMax)
			}
			if got, _, ok := c.get("last", now.Add(tt.advance)); !ok || len(got) != 1 {
				t.Errorf("get(last) = %v, %v; want the stored entry", got, ok)
			}
		})
	}

	t.Run("resolver with tiny cache", func(t *testing.T) {
		srv := newDNSServer(t)
		names := []string{"a.example", "b.example", "c.example", "d.example", "e.example", "f.example"}
		for _, n := range names {
			srv.add(t, n+". 60 IN A 192.0.2.1")
		}
		r := newTestResolver(t, Options{Servers: []string{srv.addr}, Timeout: time.Second, CacheSize: 2})
		for _, n := range names {
			if _, err := r.Resolve(context.Background(), n); err != nil {
				t.Fatalf("Resolve(%s): %v", n, err)
			}
		}
		if got := r.cache.len(); got > 2 {
			t.Errorf("cache len = %d, want <= 2", got)
		}
	})
}

func BenchmarkResolveCacheHit(b *testing.B) {
	srv := newDNSServer(b)
	srv.add(b, "bench.example. 300 IN A 192.0.2.1", "bench.example. 300 IN AAAA 2001:db8::1")
	r := newTestResolver(b, Options{Servers: []string{srv.addr}, Timeout: time.Second})
	ctx := context.Background()
	if _, err := r.Resolve(ctx, "bench.example"); err != nil {
		b.Fatalf("warm-up Resolve: %v", err)
	}
	b.ReportAllocs()
	for b.Loop() {
		got, err := r.Resolve(ctx, "bench.example")
		if err != nil || len(got) != 2 {
			b.Fatalf("Resolve = %v, %v", got, err)
		}
	}
	if got := srv.count("bench.example", dns.TypeA, ""); got != 1 {
		b.Errorf("A queries = %d, want 1", got)
	}
}
