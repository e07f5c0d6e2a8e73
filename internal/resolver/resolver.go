// Package resolver implements the gateway's own DNS resolution, the
// destination address policy, and a dialer that only dials addresses that
// passed the policy.
//
// The gateway never uses the system resolver for upstream connections: names
// are resolved by [Resolver] (github.com/miekg/dns, A and AAAA queried
// concurrently, EDNS0, TCP retry on truncation, server failover, a bounded
// TTL cache and singleflight de-duplication). Every resolved or literal
// address is then checked by [Policy], which refuses internal, special-purpose
// and translation ranges as well as the gateway's own listeners. [Dialer]
// combines the two: it resolves a name once, refuses the whole dial if any
// resolved address is refused, and dials only checked IP literals, so the
// address that is checked is the address that is connected to.
//
// All errors wrap exactly one of the package's sentinel errors (see
// [ErrDNSFailure] and friends) so callers can map them with errors.Is. The
// package does no logging.
package resolver

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sync/singleflight"
)

// Sentinel errors, one per failure reason. Errors returned by this package wrap
// one of them (ErrSelfDestination errors also satisfy
// errors.Is(err, ErrPrivateDestination)).
var (
	// ErrDNSFailure: NXDOMAIN, SERVFAIL, no A/AAAA records, or no server answered.
	ErrDNSFailure = errors.New("dns failure")
	// ErrPrivateDestination: a resolved or literal address is internal and not allowed.
	ErrPrivateDestination = errors.New("private destination")
	// ErrSelfDestination: the destination is one of the gateway's own listeners.
	ErrSelfDestination = errors.New("destination is the gateway itself")
	// ErrUpstreamUnreachable: connection refused, reset, no route to host, ...
	ErrUpstreamUnreachable = errors.New("upstream unreachable")
	// ErrUpstreamTimeout: the dial timed out or the context deadline expired.
	ErrUpstreamTimeout = errors.New("upstream timeout")
)

// Defaults applied by New for zero Options fields.
const (

	// ednsBufferSize is the EDNS0 UDP payload size recommended by DNS Flag Day 2020.
	ednsBufferSize = 1232
	// maxCNAMEHops bounds CNAME chain following inside one answer.
	maxCNAMEHops = 16
)

// Options configures a Resolver. Servers and Timeout are required. The other
// fields have no defaults of their own (the gateway's settings state them
// once, in internal/config): a zero value turns the feature off, as each field
// says.
type Options struct {
	Servers     []string      // "ip:port" of DNS servers, tried in order; required, each must be a literal IP:port
	Timeout     time.Duration // per query attempt (UDP and the TCP retry each get one); required, positive
	MinTTL      time.Duration // lower clamp for positive answers; zero: no floor (a TTL of 0 is not cached)
	MaxTTL      time.Duration // upper clamp for positive answers; zero: no ceiling (the answer's TTL stands)
	NegativeTTL time.Duration // how long failures (NXDOMAIN, SERVFAIL, no records) are cached; zero: not cached
	CacheSize   int           // max cached names; zero: nothing is cached
	// Now, if non-nil, is used as the clock for cache expiry; if nil, time.Now is used. (for tests)
	Now func() time.Time
	// Observe, if non-nil, is called once per name lookup with its result
	// (success, nxdomain, servfail, timeout, error) and duration, and with
	// "cache_hit" and zero for answers served from the cache; if nil,
	// nothing is reported.
	Observe func(result string, d time.Duration)
}

// Resolver resolves host names to addresses using the configured DNS servers.
// It is safe for concurrent use.
type Resolver struct {
	servers     []string
	timeout     time.Duration
	minTTL      time.Duration
	maxTTL      time.Duration
	negativeTTL time.Duration
	now         func() time.Time
	observe     func(string, time.Duration)

	udp   *dns.Client
	tcp   *dns.Client
	cache *cache
	group singleflight.Group

	// flights counts callers waiting for a lookup result, including lookups
	// that continue in the background after the caller's context ended;
	// tests wait on it before checking for goroutine leaks.
	flights sync.WaitGroup
}

// New validates opts and returns a Resolver.
func New(opts Options) (*Resolver, error) {
	if len(opts.Servers) == 0 {
		return nil, errors.New("resolver: no dns servers configured")
	}
	servers := make([]string, 0, len(opts.Servers))
	for _, s := range opts.Servers {
		ap, err := netip.ParseAddrPort(s)
		if err != nil {
			return nil, fmt.Errorf("resolver: dns server %q: want literal ip:port: %w", s, err)
		}
		if ap.Port() == 0 {
			return nil, fmt.Errorf("resolver: dns server %q: port 0", s)
		}
		servers = append(servers, ap.String())
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"timeout", opts.Timeout}, {"min ttl", opts.MinTTL}, {"max ttl", opts.MaxTTL}, {"negative ttl", opts.NegativeTTL}} {
		if d.v < 0 {
			return nil, fmt.Errorf("resolver: negative %s %v", d.name, d.v)
		}
	}
	if opts.Timeout == 0 {
		// miekg/dns would substitute its own 2s for a zero timeout: a
		// default stated a second time, out of sight; refuse instead.
		return nil, errors.New("resolver: no query timeout")
	}
	if opts.CacheSize < 0 {
		return nil, fmt.Errorf("resolver: negative cache size %d", opts.CacheSize)
	}
	r := &Resolver{
		servers:     servers,
		timeout:     opts.Timeout,
		minTTL:      opts.MinTTL,
		maxTTL:      opts.MaxTTL,
		negativeTTL: opts.NegativeTTL,
		now:         opts.Now,
		observe:     opts.Observe,
	}
	if r.maxTTL > 0 && r.minTTL > r.maxTTL {
		return nil, fmt.Errorf("resolver: min ttl %v above max ttl %v", r.minTTL, r.maxTTL)
	}
	if r.now == nil {
		r.now = time.Now
	}
	r.cache = newCache(opts.CacheSize)
	r.udp = &dns.Client{Net: "udp", UDPSize: ednsBufferSize, Timeout: r.timeout}
	r.tcp = &dns.Client{Net: "tcp", Timeout: r.timeout}
	return r, nil
}

// Resolve returns the A and AAAA addresses of host (a normalised, lower-case
// ASCII name without trailing dot; upper case and one trailing dot are
// tolerated), IPv4 first. An IP literal is returned as is without a query.
//
// Concurrent lookups of one name share one query per record type
// (singleflight). Results are cached for the minimum TTL over the answer
// records used, clamped to [MinTTL, MaxTTL]; NXDOMAIN, SERVFAIL and empty
// answers are cached for NegativeTTL. Failures where no server answered at all
// (timeouts, network errors) are not cached.
//
// The returned slice may be shared with the cache and other callers: it is
// read-only and must not be modified.
//
// If ctx ends before the lookup finishes, Resolve returns an error wrapping
// both ErrDNSFailure and ctx.Err(); the shared lookup continues in the
// background (bounded by the per-attempt timeout) and still fills the cache.
func (r *Resolver) Resolve(ctx context.Context, host string) ([]netip.Addr, error) {
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	if addrs, err, ok := r.cache.get(host, r.now()); ok {
		if r.observe != nil {
			r.observe("cache_hit", 0)
		}
		return addrs, err
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{ip}, nil
	}
	if !validHostname(host) {
		return nil, fmt.Errorf("resolve %q: %w: invalid host name", host, ErrDNSFailure)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("resolve %s: %w: %w", host, ErrDNSFailure, err)
	}
	bg := context.WithoutCancel(ctx)
	// Each caller holds one flights unit until the shared result exists, so
	// waiting on flights waits for lookups that callers gave up on.
	r.flights.Add(1)
	ch := r.group.DoChan(host, func() (any, error) {
		start := time.Now()
		addrs, result, err := r.lookup(bg, host)
		if r.observe != nil && result != "" {
			r.observe(result, time.Since(start))
		}
		return addrs, err
	})
	select {
	case res := <-ch:
		r.flights.Done()
		if res.Err != nil {
			return nil, res.Err
		}
		return res.Val.([]netip.Addr), nil
	case <-ctx.Done():
		go func() {
			<-ch
			r.flights.Done()
		}()
		return nil, fmt.Errorf("resolve %s: %w: %w", host, ErrDNSFailure, ctx.Err())
	}
}

// validHostname reports whether host is a plausible DNS name: ASCII letters,
// digits, '-' and '_', non-empty labels of at most 63 bytes, 253 bytes total.
func validHostname(host string) bool {
	if host == "" || len(host) > 253 {
		return false
	}
	label := 0
	for i := 0; i < len(host); i++ {
		switch c := host[i]; {
		case c == '.':
			if label == 0 {
				return false
			}
			label = 0
			continue
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '_':
		default:
			return false
		}
		label++
		if label > 63 {
			return false
		}
	}
	return label > 0
}

// lookup runs the A and AAAA queries for host, caches and returns the outcome
// and its result class for Observe ("" when served from the cache). It runs
// inside a singleflight call.
func (r *Resolver) lookup(ctx context.Context, host string) ([]netip.Addr, string, error) {
	// A flight that finished just before this one started has filled the cache.
	if addrs, err, ok := r.cache.get(host, r.now()); ok {
		return addrs, "", err
	}
	fqdn := dns.Fqdn(host)
	var aaaa familyResult
	done := make(chan struct{})
	go func() {
		defer close(done)
		aaaa = r.queryFamily(ctx, fqdn, dns.TypeAAAA)
	}()
	a := r.queryFamily(ctx, fqdn, dns.TypeA)
	<-done

	if len(a.addrs)+len(aaaa.addrs) > 0 {
		addrs := make([]netip.Addr, 0, len(a.addrs)+len(aaaa.addrs))
		addrs = append(append(addrs, a.addrs...), aaaa.addrs...)
		ttl := time.Duration(math.MaxInt64)
		for _, f := range []familyResult{a, aaaa} {
			if len(f.addrs) > 0 {
				ttl = min(ttl, f.ttl)
			}
		}
		if r.maxTTL > 0 {
			ttl = min(ttl, r.maxTTL)
		}
		ttl = max(ttl, r.minTTL)
		r.cache.put(host, addrs, nil, r.now(), ttl)
		return addrs, "success", nil
	}

	var err error
	result := "error"
	cacheable := a.answered && aaaa.answered
	switch {
	case a.rcode == dns.RcodeNameError || aaaa.rcode == dns.RcodeNameError:
		err = fmt.Errorf("resolve %s: %w: NXDOMAIN", host, ErrDNSFailure)
		cacheable, result = true, "nxdomain"
	case a.answered && aaaa.answered && a.rcode == dns.RcodeSuccess && aaaa.rcode == dns.RcodeSuccess:
		err = fmt.Errorf("resolve %s: %w: no A/AAAA records", host, ErrDNSFailure)
	default:
		// At least one family got no usable answer from any server.
		f := a
		if f.err == nil {
			f = aaaa
		}
		err = fmt.Errorf("resolve %s: %w: %v", host, ErrDNSFailure, f.err)
		var ne net.Error
		switch {
		case f.answered && f.rcode == dns.RcodeServerFailure:
			result = "servfail"
		case errors.As(f.err, &ne) && ne.Timeout(), errors.Is(f.err, context.DeadlineExceeded):
			result = "timeout"
		}
	}
	if cacheable {
		r.cache.put(host, nil, err, r.now(), r.negativeTTL)
	}
	return nil, result, err
}

// familyResult is the outcome of querying one record type across the servers.
type familyResult struct {
	addrs    []netip.Addr
	ttl      time.Duration // minimum TTL over the records used, if addrs is non-empty
	answered bool          // some server gave a verdict (NOERROR, NXDOMAIN, SERVFAIL, ...)
	rcode    int           // rcode of the final verdict, if answered
	err      error         // reason no addresses were found, when rcode is not NOERROR
}

// queryFamily asks the servers in order for qtype records of fqdn. It moves to
// the next server on timeout, network error, SERVFAIL, REFUSED or any other
// rcode except NOERROR and NXDOMAIN, which are final.
func (r *Resolver) queryFamily(ctx context.Context, fqdn string, qtype uint16) familyResult {
	var res familyResult
	for _, server := range r.servers {
		if ctx.Err() != nil {
			break
		}
		resp, err := r.exchange(ctx, fqdn, qtype, server)
		if err != nil {
			if !res.answered {
				res.err = fmt.Errorf("%s %s via %s: %w", fqdn, dns.TypeToString[qtype], server, err)
			}
			continue
		}
		res.answered = true
		res.rcode = resp.Rcode
		switch resp.Rcode {
		case dns.RcodeSuccess:
			res.addrs, res.ttl = extractAddrs(resp, fqdn, qtype)
			res.err = nil
			return res
		case dns.RcodeNameError:
			res.err = errors.New("NXDOMAIN")
			return res
		default:
			res.err = fmt.Errorf("server returned %s", dns.RcodeToString[resp.Rcode])
		}
	}
	if res.err == nil {
		res.err = errors.New("no server answered")
	}
	return res
}

// exchange sends one query to server over UDP and retries over TCP if the
// reply is truncated. Each attempt is bounded by r.timeout and ctx.
func (r *Resolver) exchange(ctx context.Context, fqdn string, qtype uint16, server string) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(fqdn, qtype)
	m.RecursionDesired = true
	m.SetEdns0(ednsBufferSize, false)

	resp, err := r.exchangeOnce(ctx, r.udp, m, server)
	// A truncated UDP reply may also fail to unpack completely; retry over TCP either way.
	if resp != nil && resp.Truncated {
		resp, err = r.exchangeOnce(ctx, r.tcp, m, server)
	}
	if err != nil {
		return nil, err
	}
	if resp.Rcode == dns.RcodeSuccess || resp.Rcode == dns.RcodeNameError {
		if len(resp.Question) != 1 || resp.Question[0].Qtype != qtype || !strings.EqualFold(resp.Question[0].Name, fqdn) {
			return nil, errors.New("reply does not match the question")
		}
		if resp.Truncated {
			return nil, errors.New("truncated reply over tcp")
		}
	}
	return resp, nil
}

func (r *Resolver) exchangeOnce(ctx context.Context, c *dns.Client, m *dns.Msg, server string) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	resp, _, err := c.ExchangeContext(ctx, m, server)
	return resp, err
}

// extractAddrs collects the qtype records of the answer section that belong to
// the CNAME chain starting at fqdn, and the minimum TTL over the chain and the
// address records. Records for unrelated owner names are ignored.
func extractAddrs(resp *dns.Msg, fqdn string, qtype uint16) ([]netip.Addr, time.Duration) {
	chain := []string{fqdn}
	minTTL := ^uint32(0)
	target := fqdn
	for hop := 0; hop < maxCNAMEHops; hop++ {
		next := ""
		for _, rr := range resp.Answer {
			if c, ok := rr.(*dns.CNAME); ok && strings.EqualFold(c.Hdr.Name, target) {
				next = c.Target
				minTTL = min(minTTL, c.Hdr.Ttl)
				break
			}
		}
		if next == "" {
			break
		}
		target = next
		chain = append(chain, next)
	}
	inChain := func(name string) bool {
		for _, n := range chain {
			if strings.EqualFold(n, name) {
				return true
			}
		}
		return false
	}
	var addrs []netip.Addr
	for _, rr := range resp.Answer {
		h := rr.Header()
		if h.Rrtype != qtype || h.Class != dns.ClassINET || !inChain(h.Name) {
			continue
		}
		var ip netip.Addr
		var ok bool
		switch v := rr.(type) {
		case *dns.A:
			ip, ok = netip.AddrFromSlice(v.A.To4())
		case *dns.AAAA:
			ip, ok = netip.AddrFromSlice(v.AAAA.To16())
		}
		if !ok || containsAddr(addrs, ip) {
			continue
		}
		addrs = append(addrs, ip)
		minTTL = min(minTTL, h.Ttl)
	}
	if len(addrs) == 0 {
		return nil, 0
	}
	return addrs, time.Duration(minTTL) * time.Second
}

func containsAddr(addrs []netip.Addr, ip netip.Addr) bool {
	for _, a := range addrs {
		if a == ip {
			return true
		}
	}
	return false
}

// Ping checks that at least one DNS server answers (any rcode) within the
// per-attempt timeout and ctx. Servers are tried in order.
func (r *Resolver) Ping(ctx context.Context) error {
	m := new(dns.Msg)
	m.SetQuestion(".", dns.TypeNS)
	m.RecursionDesired = true
	m.SetEdns0(ednsBufferSize, false)
	var lastErr error
	for _, server := range r.servers {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("ping dns: %w: %w", ErrDNSFailure, err)
		}
		_, err := r.exchangeOnce(ctx, r.udp, m, server)
		if err == nil {
			return nil
		}
		lastErr = fmt.Errorf("%s: %v", server, err)
	}
	return fmt.Errorf("ping dns: %w: no server answered (last: %v)", ErrDNSFailure, lastErr)
}

// ServersFromResolvConf reads the nameserver lines of a resolv.conf(5) file and
// returns them as "ip:port" strings suitable for Options.Servers.
func ServersFromResolvConf(path string) ([]string, error) {
	cfg, err := dns.ClientConfigFromFile(path)
	if err != nil {
		return nil, fmt.Errorf("read resolv.conf %s: %w", path, err)
	}
	if len(cfg.Servers) == 0 {
		return nil, fmt.Errorf("read resolv.conf %s: no nameserver entries", path)
	}
	port := cfg.Port
	if port == "" {
		port = "53"
	}
	out := make([]string, 0, len(cfg.Servers))
	for _, s := range cfg.Servers {
		hp := net.JoinHostPort(s, port)
		ap, err := netip.ParseAddrPort(hp)
		if err != nil {
			return nil, fmt.Errorf("read resolv.conf %s: nameserver %q is not an ip address: %w", path, s, err)
		}
		out = append(out, ap.String())
	}
	return out, nil
}
