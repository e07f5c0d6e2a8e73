package resolver

// Hostile DNS answers at the resolver and dialer level: CNAME chains that end
// at internal addresses, out-of-chain records smuggled into an answer, CNAME
// loops and overlong chains, and answers that change between the check and
// the dial (DNS rebinding). Listeners on 127.0.0.1 and 127.0.0.2 share one
// port; the policy allows only 127.0.0.1, so 127.0.0.2 stands for an internal
// destination that must never see a connection.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// replace sets owner's records to lines, dropping earlier ones.
func (s *dnsServer) replace(t testing.TB, owner string, lines ...string) {
	t.Helper()
	s.mu.Lock()
	delete(s.zone, dns.Fqdn(strings.ToLower(owner)))
	s.mu.Unlock()
	s.add(t, lines...)
}

func TestAdversarialCNAMEChains(t *testing.T) {
	srv := newDNSServer(t)
	// Whole chains in one answer (the test server itself follows only 10
	// hops): long.example has 20 hops, short.example 15; the resolver
	// follows at most 16.
	for _, c := range []struct {
		name string
		hops int
	}{{"long", 20}, {"short", 15}} {
		prev := c.name + ".example."
		for i := 1; i <= c.hops; i++ {
			next := fmt.Sprintf("%s%d.example.", c.name, i)
			srv.injectAnswer(t, c.name+".example", prev+" 60 IN CNAME "+next)
			prev = next
		}
		srv.injectAnswer(t, c.name+".example", prev+" 60 IN A 127.0.0.1")
	}
	srv.add(t,
		// A listed-looking name aliased to an internal name.
		"listed.example. 60 IN CNAME internal.corp.",
		"internal.corp. 60 IN A 127.0.0.2",
		// Two hops, the last one internal.
		"hop1.example. 60 IN CNAME hop2.example.",
		"hop2.example. 60 IN CNAME db.corp.",
		"db.corp. 60 IN A 127.0.0.2",
		// Alias to an IPv4-mapped AAAA of an internal address.
		"mapped.example. 60 IN CNAME mapped.corp.",
		"mapped.corp. 60 IN AAAA ::ffff:127.0.0.2",
		// Alias whose target has an allowed and an internal address.
		"mixed.example. 60 IN CNAME mixed.corp.",
		"mixed.corp. 60 IN A 127.0.0.1",
		"mixed.corp. 60 IN A 127.0.0.2",
		// Owner has its own A besides a CNAME (broken zone): every address
		// in the chain counts.
		"both.example. 60 IN CNAME ok.corp.",
		"both.example. 60 IN A 127.0.0.2",
		"ok.corp. 60 IN A 127.0.0.1",
		// Alias to "localhost".
		"loop.example. 60 IN CNAME localhost.",
		"localhost. 60 IN A 127.0.0.2",
		// CNAME loop.
		"ping.example. 60 IN CNAME pong.example.",
		"pong.example. 60 IN CNAME ping.example.",
		// A clean alias.
		"clean.example. 60 IN CNAME clean.cdn.",
		"clean.cdn. 60 IN A 127.0.0.1",
		// An alias whose answer also carries records for names outside the
		// chain; they must be ignored.
		"inj.example. 60 IN CNAME inj.cdn.",
		"inj.cdn. 60 IN A 127.0.0.1",
	)
	srv.injectAnswer(t, "inj.example", "inj.example.evil. 60 IN A 127.0.0.2")
	srv.injectAnswer(t, "inj.example", "unrelated.corp. 60 IN A 127.0.0.2")
	srv.injectAnswer(t, "inj.example", "unrelated.corp. 60 IN CNAME inj.example.")
	// A CNAME for an unrelated owner pointing into an internal name must not
	// redirect the chain.
	srv.add(t, "redir.example. 60 IN A 127.0.0.1")
	srv.injectAnswer(t, "redir.example", "redirx.example. 60 IN CNAME internal.corp.")
	srv.injectAnswer(t, "redir.example", "internal.corp. 60 IN A 127.0.0.2")

	r := newTestResolver(t, Options{Servers: []string{srv.addr}, Timeout: time.Second})
	ln1, ln2, port := listenPair(t)
	p := strconv.Itoa(port)
	tests := []struct {
		name    string
		host    string
		wantErr error // nil: connects to 127.0.0.1
	}{
		{"alias to internal name", "listed.example", ErrPrivateDestination},
		{"two hops to internal name", "hop1.example", ErrPrivateDestination},
		{"alias to ipv4-mapped AAAA", "mapped.example", ErrPrivateDestination},
		{"alias to allowed and internal", "mixed.example", ErrPrivateDestination},
		{"owner A beside CNAME", "both.example", ErrPrivateDestination},
		{"alias to localhost", "loop.example", ErrPrivateDestination},
		{"cname loop", "ping.example", ErrDNSFailure},
		{"chain longer than the hop limit", "long.example", ErrDNSFailure},
		{"chain within the hop limit", "short.example", nil},
		{"clean alias", "clean.example", nil},
		{"records outside the chain ignored", "inj.example", nil},
		{"cname for another owner ignored", "redir.example", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := &Dialer{Resolver: r, Policy: &Policy{AllowPrivate: prefixes("127.0.0.1/32")}, Timeout: 3 * time.Second, dial: loopbackOnly(t)}
			conn, err := d.DialContext(context.Background(), "tcp", tt.host+":"+p)
			if tt.wantErr != nil {
				if conn != nil {
					conn.Close()
				}
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("DialContext(%s) = %v, want %v", tt.host, err, tt.wantErr)
				}
				for _, ln := range []*net.TCPListener{ln1, ln2} {
					if c := acceptWithin(t, ln, 50*time.Millisecond); c != nil {
						c.Close()
						t.Errorf("%s got a connection, want none", ln.Addr())
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("DialContext(%s) = %v, want a connection to 127.0.0.1", tt.host, err)
			}
			defer conn.Close()
			if got := conn.RemoteAddr().String(); got != "127.0.0.1:"+p {
				t.Errorf("connected to %s, want 127.0.0.1:%s", got, p)
			}
			if c := acceptWithin(t, ln1, 2*time.Second); c != nil {
				c.Close()
			}
			if c := acceptWithin(t, ln2, 50*time.Millisecond); c != nil {
				c.Close()
				t.Errorf("127.0.0.2 got a connection")
			}
		})
	}
}

func TestAdversarialRebinding(t *testing.T) {
	srv := newDNSServer(t)
	clock := newFakeClock()
	r := newTestResolver(t, Options{Servers: []string{srv.addr}, Timeout: time.Second,
		MinTTL: time.Second, MaxTTL: time.Second, Now: clock.Now})
	ln1, ln2, port := listenPair(t)
	d := &Dialer{Resolver: r, Policy: &Policy{AllowPrivate: prefixes("127.0.0.1/32")}, Timeout: 3 * time.Second, dial: loopbackOnly(t)}

	t.Run("checked address is dialed after the answer changed", func(t *testing.T) {
		srv.replace(t, "rebind.example", "rebind.example. 0 IN A 127.0.0.1")
		checked, err := d.Lookup(context.Background(), "rebind.example", uint16(port))
		if err != nil {
			t.Fatal(err)
		}
		// The answer flips to an internal address and the cache expires.
		srv.replace(t, "rebind.example", "rebind.example. 0 IN A 127.0.0.2")
		clock.Advance(time.Hour)
		q := srv.count("rebind.example", dns.TypeA, "")
		conn, err := d.DialChecked(context.Background(), checked)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if got := conn.RemoteAddr().String(); got != "127.0.0.1:"+strconv.Itoa(port) {
			t.Errorf("dialed %s, want the checked 127.0.0.1", got)
		}
		if n := srv.count("rebind.example", dns.TypeA, "") - q; n != 0 {
			t.Errorf("DialChecked resolved again (%d queries)", n)
		}
		if c := acceptWithin(t, ln1, 2*time.Second); c != nil {
			c.Close()
		}
		if c := acceptWithin(t, ln2, 50*time.Millisecond); c != nil {
			c.Close()
			t.Errorf("127.0.0.2 got a connection")
		}
	})
	t.Run("next lookup sees the new answer and refuses", func(t *testing.T) {
		_, err := d.DialContext(context.Background(), "tcp", "rebind.example:"+strconv.Itoa(port))
		if !errors.Is(err, ErrPrivateDestination) {
			t.Fatalf("err = %v, want ErrPrivateDestination", err)
		}
		if c := acceptWithin(t, ln2, 50*time.Millisecond); c != nil {
			c.Close()
			t.Errorf("127.0.0.2 got a connection")
		}
	})
	t.Run("zero TTL is clamped, not a cache bypass", func(t *testing.T) {
		srv.replace(t, "zero.example", "zero.example. 0 IN A 127.0.0.1")
		if _, err := d.Lookup(context.Background(), "zero.example", uint16(port)); err != nil {
			t.Fatal(err)
		}
		srv.replace(t, "zero.example", "zero.example. 0 IN A 127.0.0.2")
		// Within MinTTL the cached, checked answer is served.
		q := srv.count("zero.example", dns.TypeA, "")
		got, err := d.Lookup(context.Background(), "zero.example", uint16(port))
		if err != nil || len(got) != 1 || got[0].Addr().String() != "127.0.0.1" {
			t.Errorf("within MinTTL: %v %v, want the cached 127.0.0.1", got, err)
		}
		if n := srv.count("zero.example", dns.TypeA, "") - q; n != 0 {
			t.Errorf("zero TTL answer was not cached (%d new queries)", n)
		}
	})
}
