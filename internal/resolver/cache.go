package resolver

import (
	"net/netip"
	"sync"
	"time"
)

// cache is a bounded map from host name to a resolution outcome (addresses or
// an error) with an absolute expiry time. When full, expired entries are
// dropped first and then arbitrary entries (Go map iteration order) until an
// eighth of the capacity is free, so eviction is amortised O(1) per insert.
type cache struct {
	mu      sync.RWMutex
	max     int
	entries map[string]cacheEntry
}

type cacheEntry struct {
	addrs   []netip.Addr // read-only once stored; handed out to callers as is
	err     error
	expires time.Time
}

func newCache(max int) *cache {
	return &cache{max: max, entries: make(map[string]cacheEntry, min(max, 1024))}
}

// get returns the cached outcome for host if present and not expired at now.
// It does not allocate.
func (c *cache) get(host string, now time.Time) ([]netip.Addr, error, bool) {
	c.mu.RLock()
	e, ok := c.entries[host]
	c.mu.RUnlock()
	if !ok || !now.Before(e.expires) {
		return nil, nil, false
	}
	return e.addrs, e.err, true
}

// put stores an outcome for host, valid for ttl from now.
func (c *cache) put(host string, addrs []netip.Addr, err error, now time.Time, ttl time.Duration) {
	if c.max == 0 || ttl <= 0 {
		return // caching is off, or the answer may not be kept (TTL 0, RFC 1035 section 3.2.1)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.entries[host]; !ok && len(c.entries) >= c.max {
		c.evictLocked(now)
	}
	c.entries[host] = cacheEntry{addrs: addrs, err: err, expires: now.Add(ttl)}
}

// evictLocked drops expired entries and then arbitrary ones until at least an
// eighth of the capacity is free.
func (c *cache) evictLocked(now time.Time) {
	target := c.max - max(c.max/8, 1)
	for k, e := range c.entries {
		if !now.Before(e.expires) {
			delete(c.entries, k)
		}
	}
	for k := range c.entries {
		if len(c.entries) <= target {
			break
		}
		delete(c.entries, k)
	}
}

// len returns the number of stored entries, expired or not.
func (c *cache) len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.entries)
}
