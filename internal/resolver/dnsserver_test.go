package resolver

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/goleak"

	"github.com/defendergw/gateway/internal/lab"
	"github.com/defendergw/gateway/internal/testutil/fakeclock"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// dnsServer is a real miekg/dns server on 127.0.0.1 (UDP and TCP on the same
// port) serving a zone the test controls.
type dnsServer struct {
	addr string // "127.0.0.1:port", for Options.Servers

	mu       sync.Mutex
	zone     map[string][]dns.RR // owner (lower-case fqdn) → records (A, AAAA, CNAME)
	inject   map[string][]dns.RR // qname → extra answer records, e.g. for unrelated owners
	rcodes   map[string]int      // qname → forced rcode (NXDOMAIN, SERVFAIL, REFUSED, ...)
	truncate map[string]bool     // qname → UDP answers are empty with the TC bit set
	delay    time.Duration       // every answer is delayed this long
	queries  map[queryKey]int
	stop     chan struct{}
}

type queryKey struct {
	name  string // lower-case fqdn
	qtype uint16
	proto string // "udp" or "tcp"
}

func newDNSServer(t testing.TB) *dnsServer {
	t.Helper()
	s := &dnsServer{
		zone:     map[string][]dns.RR{},
		inject:   map[string][]dns.RR{},
		rcodes:   map[string]int{},
		truncate: map[string]bool{},
		queries:  map[queryKey]int{},
		stop:     make(chan struct{}),
	}
	pc, ln, err := lab.ListenUDPTCP("127.0.0.1")
	if err != nil {
		t.Fatalf("listen udp and tcp: %v", err)
	}
	s.addr = pc.LocalAddr().String()

	servers := []*dns.Server{
		{PacketConn: pc, Handler: s},
		{Listener: ln, Handler: s},
	}
	var wg sync.WaitGroup
	for _, srv := range servers {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = srv.ActivateAndServe()
		}()
		<-started
	}
	t.Cleanup(func() {
		close(s.stop)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for _, srv := range servers {
			if err := srv.ShutdownContext(ctx); err != nil {
				t.Errorf("dns server shutdown: %v", err)
			}
		}
		wg.Wait()
	})
	return s
}

// add parses zone-file lines such as "a.example. 60 IN A 192.0.2.1" into the zone.
func (s *dnsServer) add(t testing.TB, lines ...string) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range lines {
		rr, err := dns.NewRR(l)
		if err != nil {
			t.Fatalf("bad RR %q: %v", l, err)
		}
		owner := strings.ToLower(rr.Header().Name)
		s.zone[owner] = append(s.zone[owner], rr)
	}
}

// injectAnswer makes answers for qname also carry the record in line.
func (s *dnsServer) injectAnswer(t testing.TB, qname, line string) {
	t.Helper()
	rr, err := dns.NewRR(line)
	if err != nil {
		t.Fatalf("bad RR %q: %v", line, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.inject[dns.Fqdn(qname)] = append(s.inject[dns.Fqdn(qname)], rr)
}

func (s *dnsServer) setRcode(name string, rcode int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rcodes[dns.Fqdn(name)] = rcode
}

func (s *dnsServer) setNXDOMAIN(name string) { s.setRcode(name, dns.RcodeNameError) }
func (s *dnsServer) setSERVFAIL(name string) { s.setRcode(name, dns.RcodeServerFailure) }

func (s *dnsServer) setTruncate(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.truncate[dns.Fqdn(name)] = true
}

func (s *dnsServer) setDelay(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.delay = d
}

// count returns how many queries for name/qtype arrived over proto ("" = both).
func (s *dnsServer) count(name string, qtype uint16, proto string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for k, v := range s.queries {
		if k.name == dns.Fqdn(name) && k.qtype == qtype && (proto == "" || k.proto == proto) {
			n += v
		}
	}
	return n
}

// total returns the number of queries received.
func (s *dnsServer) total() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, v := range s.queries {
		n += v
	}
	return n
}

func (s *dnsServer) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	if len(req.Question) != 1 {
		m := new(dns.Msg)
		m.SetRcode(req, dns.RcodeFormatError)
		_ = w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	proto := w.LocalAddr().Network()

	s.mu.Lock()
	s.queries[queryKey{name, q.Qtype, proto}]++
	delay := s.delay
	rcode, forced := s.rcodes[name]
	truncate := s.truncate[name] && proto == "udp"
	var answer []dns.RR
	if !forced && !truncate {
		answer = s.answerLocked(name, q.Qtype)
	}
	s.mu.Unlock()

	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-s.stop:
			return
		}
	}
	m := new(dns.Msg)
	m.SetReply(req)
	m.RecursionAvailable = true
	switch {
	case forced:
		m.Rcode = rcode
	case truncate:
		m.Truncated = true
	default:
		m.Answer = answer
	}
	_ = w.WriteMsg(m)
}

// answerLocked follows CNAMEs from name and returns the chain plus the qtype
// records of its end, then any injected records.
func (s *dnsServer) answerLocked(name string, qtype uint16) []dns.RR {
	var out []dns.RR
	cur := name
	for hop := 0; hop < 10; hop++ {
		next := ""
		for _, rr := range s.zone[cur] {
			if rr.Header().Rrtype == qtype {
				out = append(out, dns.Copy(rr))
			}
			if c, ok := rr.(*dns.CNAME); ok && qtype != dns.TypeCNAME {
				out = append(out, dns.Copy(rr))
				next = strings.ToLower(c.Target)
			}
		}
		if next == "" {
			break
		}
		cur = next
	}
	for _, rr := range s.inject[name] {
		out = append(out, dns.Copy(rr))
	}
	return out
}

// newBlackhole returns the address of a UDP socket on 127.0.0.1 that never replies.
func newBlackhole(t testing.TB) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen udp: %v", err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc.LocalAddr().String()
}

// newFakeClock starts the tests' clock at a fixed instant.
func newFakeClock() *fakeclock.Clock {
	return fakeclock.New(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC))
}

// newTestResolver builds a Resolver and makes the test wait for its background
// lookups before goroutine leak checks.
// newTestResolver builds a Resolver from opts; a zero CacheSize becomes 100
// (the tests' own choice), so tests see caching unless they turn it off with
// noCache.
func newTestResolver(t testing.TB, opts Options) *Resolver {
	t.Helper()
	switch opts.CacheSize {
	case 0:
		opts.CacheSize = 100
	case noCache:
		opts.CacheSize = 0
	}
	r, err := New(opts)
	if err != nil {
		t.Fatalf("New(%+v): %v", opts, err)
	}
	t.Cleanup(r.flights.Wait)
	return r
}

// noCache, as a test's Options.CacheSize, builds a Resolver that caches nothing.
const noCache = -1 << 31
