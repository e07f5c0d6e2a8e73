package auth

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

func TestAuthenticate(t *testing.T) {
	path := writeFile(t, htpasswd(t, "alice", "s3cret", "bob", "pa:ss"))
	a := newAuth(t, Options{File: path})

	tests := []struct {
		name     string
		header   string
		wantUser string
		wantErr  error
	}{
		{"success", basic("alice", "s3cret"), "alice", nil},
		{"success lowercase scheme", "basic " + base64.StdEncoding.EncodeToString([]byte("alice:s3cret")), "alice", nil},
		{"password containing colon", basic("bob", "pa:ss"), "bob", nil},
		{"wrong password", basic("alice", "wrong"), "", ErrBadCredentials},
		{"password of other user", basic("alice", "pa:ss"), "", ErrBadCredentials},
		{"unknown user", basic("mallory", "s3cret"), "", ErrBadCredentials},
		{"empty user", basic("", "s3cret"), "", ErrBadCredentials},
		{"not Basic", "Bearer abc", "", ErrBadCredentials},
		{"Basic without space", "Basic" + base64.StdEncoding.EncodeToString([]byte("alice:s3cret")), "", ErrBadCredentials},
		{"bad base64", "Basic !!!not-base64", "", ErrBadCredentials},
		{"URL base64", "Basic " + base64.URLEncoding.EncodeToString([]byte("alice:s3cret??>")), "", ErrBadCredentials},
		{"no colon", "Basic " + base64.StdEncoding.EncodeToString([]byte("alice")), "", ErrBadCredentials},
		{"missing", "", "", ErrNoCredentials},
		{"blank", "   ", "", ErrNoCredentials},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Distinct client per case so failures do not exhaust a limiter.
			client := netip.AddrFrom4([4]byte{198, 51, 100, byte(i)})
			user, err := a.Authenticate(tt.header, client)
			if !errors.Is(err, tt.wantErr) || (err == nil) != (tt.wantErr == nil) {
				t.Fatalf("Authenticate err = %v, want %v", err, tt.wantErr)
			}
			if user != tt.wantUser {
				t.Errorf("Authenticate user = %q, want %q", user, tt.wantUser)
			}
		})
	}
}

func TestUnknownUserRunsBcryptAtFileCost(t *testing.T) {
	const cost = bcrypt.MinCost + 1
	path := writeFile(t, "alice:"+bcryptHashCost(t, "pw", cost)+"\n")
	a := newAuth(t, Options{File: path})
	if got, err := bcrypt.Cost(a.dummy); err != nil || got != cost {
		t.Fatalf("dummy hash cost = %d, %v; want %d", got, err, cost)
	}
	for _, tt := range []struct{ name, user string }{{"unknown user", "nobody"}, {"known user", "alice"}} {
		t.Run(tt.name, func(t *testing.T) {
			before := a.bcryptCalls.Load()
			if _, err := a.Authenticate(basic(tt.user, "wrong"), client1); !errors.Is(err, ErrBadCredentials) {
				t.Fatalf("err = %v, want ErrBadCredentials", err)
			}
			if got := a.bcryptCalls.Load() - before; got != 1 {
				t.Errorf("bcrypt comparisons = %d, want 1", got)
			}
		})
	}
}

func TestNoCredentialsNotCounted(t *testing.T) {
	path := writeFile(t, htpasswd(t, "alice", "pw"))
	a := newAuth(t, Options{File: path, FailureBurst: 1, Now: newFakeClock().Now})
	for i := 0; i < 20; i++ {
		if _, err := a.Authenticate("", client1); !errors.Is(err, ErrNoCredentials) {
			t.Fatalf("attempt %d: err = %v, want ErrNoCredentials", i, err)
		}
	}
	if user, err := a.Authenticate(basic("alice", "pw"), client1); err != nil || user != "alice" {
		t.Fatalf("after missing headers: got (%q, %v), want (alice, nil)", user, err)
	}
}

func TestRateLimit(t *testing.T) {
	path := writeFile(t, htpasswd(t, "alice", "pw"))
	clock := newFakeClock()
	// 6 per minute: one token every 10s.
	a := newAuth(t, Options{File: path, FailuresPerMinute: 6, FailureBurst: 3, Now: clock.Now})

	failures := []struct {
		name   string
		header string
	}{
		{"wrong password", basic("alice", "x")},
		{"unknown user", basic("bob", "pw")},
		{"malformed", "Basic %%%"},
	}
	for _, f := range failures {
		t.Run("failure "+f.name, func(t *testing.T) {
			if _, err := a.Authenticate(f.header, client1); !errors.Is(err, ErrBadCredentials) {
				t.Fatalf("err = %v, want ErrBadCredentials", err)
			}
		})
	}

	steps := []struct {
		name    string
		advance time.Duration
		client  netip.Addr
		header  string
		wantErr error
	}{
		{"correct credentials limited", 0, client1, basic("alice", "pw"), ErrRateLimited},
		{"limited again", 0, client1, basic("alice", "x"), ErrRateLimited},
		{"IPv4-mapped form limited", 0, netip.MustParseAddr("::ffff:192.0.2.1"), basic("alice", "pw"), ErrRateLimited},
		{"other client unaffected", 0, client2, basic("alice", "pw"), nil},
		{"still limited after 9s", 9 * time.Second, client1, basic("alice", "pw"), ErrRateLimited},
		{"refilled after 10s", 1 * time.Second, client1, basic("alice", "pw"), nil},
		{"failure uses the refilled token", 0, client1, basic("alice", "x"), ErrBadCredentials},
		{"limited after that", 0, client1, basic("alice", "pw"), ErrRateLimited},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			clock.Advance(s.advance)
			before := a.bcryptCalls.Load()
			_, err := a.Authenticate(s.header, s.client)
			if !errors.Is(err, s.wantErr) || (err == nil) != (s.wantErr == nil) {
				t.Fatalf("err = %v, want %v", err, s.wantErr)
			}
			if s.wantErr == ErrRateLimited && a.bcryptCalls.Load() != before {
				t.Errorf("rate-limited attempt ran bcrypt")
			}
		})
	}
}

// Parallel guesses must not all slip past the limiter before the first
// failure is recorded.
func TestRateLimitConcurrentGuesses(t *testing.T) {
	path := writeFile(t, htpasswd(t, "alice", "pw"))
	a := newAuth(t, Options{File: path, FailureBurst: 3, Now: newFakeClock().Now})

	const n = 40
	var bad, limited atomic.Int64
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			_, err := a.Authenticate(basic("alice", fmt.Sprint("guess", i)), client1)
			switch {
			case errors.Is(err, ErrBadCredentials):
				bad.Add(1)
			case errors.Is(err, ErrRateLimited):
				limited.Add(1)
			default:
				t.Errorf("err = %v", err)
			}
		})
	}
	wg.Wait()
	if got := bad.Load(); got > 3 {
		t.Errorf("bad-credential answers = %d, want <= 3 (burst)", got)
	}
	if got := a.bcryptCalls.Load(); got > 3 {
		t.Errorf("bcrypt comparisons = %d, want <= 3", got)
	}
	if got, want := bad.Load()+limited.Load(), int64(n); got != want {
		t.Errorf("answers = %d, want %d", got, want)
	}
}

// Identical concurrent checks share one bcrypt run, so a legitimate client
// opening many connections at once is not rate limited by pending checks.
func TestConcurrentSameCredentials(t *testing.T) {
	path := writeFile(t, htpasswd(t, "alice", "pw"))
	a := newAuth(t, Options{File: path, FailureBurst: 1, Now: newFakeClock().Now})
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			if user, err := a.Authenticate(basic("alice", "pw"), client1); err != nil || user != "alice" {
				t.Errorf("got (%q, %v), want (alice, nil)", user, err)
			}
		})
	}
	wg.Wait()
}

func TestCache(t *testing.T) {
	path := writeFile(t, htpasswd(t, "alice", "pw", "bob", "pw2"))
	clock := newFakeClock()
	a := newAuth(t, Options{File: path, CacheTTL: time.Minute, Now: clock.Now})

	steps := []struct {
		name       string
		advance    time.Duration
		header     string
		wantErr    error
		wantBcrypt int64
	}{
		{"first success runs bcrypt", 0, basic("alice", "pw"), nil, 1},
		{"second success is cached", 0, basic("alice", "pw"), nil, 0},
		{"wrong password after cached success fails", 0, basic("alice", "nope"), ErrBadCredentials, 1},
		{"cache survives a failure", 0, basic("alice", "pw"), nil, 0},
		{"other user not cached", 0, basic("bob", "pw2"), nil, 1},
		{"still cached before TTL", 59 * time.Second, basic("alice", "pw"), nil, 0},
		{"expired after TTL", time.Second, basic("alice", "pw"), nil, 1},
		{"cached again", 0, basic("alice", "pw"), nil, 0},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			clock.Advance(s.advance)
			before := a.bcryptCalls.Load()
			_, err := a.Authenticate(s.header, client1)
			if !errors.Is(err, s.wantErr) || (err == nil) != (s.wantErr == nil) {
				t.Fatalf("err = %v, want %v", err, s.wantErr)
			}
			if got := a.bcryptCalls.Load() - before; got != s.wantBcrypt {
				t.Errorf("bcrypt comparisons = %d, want %d", got, s.wantBcrypt)
			}
		})
	}

	t.Run("no password stored", func(t *testing.T) {
		a.mu.RLock()
		defer a.mu.RUnlock()
		for user, e := range a.cache {
			if e.digest == ([32]byte{}) {
				t.Errorf("cache entry for %q has an empty digest", user)
			}
		}
	})
}

func TestCacheDisabled(t *testing.T) {
	path := writeFile(t, htpasswd(t, "alice", "pw"))
	a := newAuth(t, Options{File: path, CacheTTL: -1})
	for i := range 2 {
		before := a.bcryptCalls.Load()
		if _, err := a.Authenticate(basic("alice", "pw"), client1); err != nil {
			t.Fatalf("attempt %d: %v", i, err)
		}
		if got := a.bcryptCalls.Load() - before; got != 1 {
			t.Errorf("attempt %d: bcrypt comparisons = %d, want 1", i, got)
		}
	}
}

func TestCacheBounded(t *testing.T) {
	path := writeFile(t, htpasswd(t, "u1", "p", "u2", "p", "u3", "p", "u4", "p"))
	a := newAuth(t, Options{File: path, CacheSize: 2})
	for _, u := range []string{"u1", "u2", "u3", "u4"} {
		if _, err := a.Authenticate(basic(u, "p"), client1); err != nil {
			t.Fatalf("%s: %v", u, err)
		}
		a.mu.RLock()
		n := len(a.cache)
		a.mu.RUnlock()
		if n > 2 {
			t.Fatalf("after %s: cache size = %d, want <= 2", u, n)
		}
	}
}

func TestConcurrentAuthenticate(t *testing.T) {
	path := writeFile(t, htpasswd(t, "alice", "pw", "bob", "pw2"))
	a := newAuth(t, Options{File: path, FailureBurst: 1000})
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			client := netip.AddrFrom4([4]byte{10, 0, 0, byte(g % 4)})
			for i := range 12 {
				var header, want string
				switch i % 4 {
				case 0:
					header, want = basic("alice", "pw"), "alice"
				case 1:
					header, want = basic("bob", "pw2"), "bob"
				case 2:
					header = basic("alice", fmt.Sprint("wrong", g, i))
				case 3:
					header = basic(fmt.Sprint("ghost", g), "pw")
				}
				user, err := a.Authenticate(header, client)
				if user != want || (want == "") != errors.Is(err, ErrBadCredentials) {
					t.Errorf("goroutine %d attempt %d: got (%q, %v), want user %q", g, i, user, err, want)
					return
				}
			}
		})
	}
	// Concurrent reloads of an unchanged file and forced reloads.
	wg.Go(func() {
		for i := range 10 {
			if i%3 == 0 {
				replaceFile(t, path, htpasswd(t, "alice", "pw", "bob", "pw2"))
			}
			if _, err := a.Reload(); err != nil {
				t.Errorf("Reload: %v", err)
			}
			_ = a.Users()
		}
	})
	wg.Wait()
}

func TestChallenge(t *testing.T) {
	tests := []struct {
		realm, want string
	}{
		{"gateway", `Basic realm="gateway", charset="UTF-8"`},
		{"", `Basic realm="", charset="UTF-8"`},
		{`say "hi"`, `Basic realm="say \"hi\"", charset="UTF-8"`},
		{`C:\proxy`, `Basic realm="C:\\proxy", charset="UTF-8"`},
		{`\"`, `Basic realm="\\\"", charset="UTF-8"`},
		{"a\r\nb\x00c\x7fd\te", "Basic realm=\"abcd\te\", charset=\"UTF-8\""},
		{"Zürich", `Basic realm="Zürich", charset="UTF-8"`},
	}
	for _, tt := range tests {
		t.Run(tt.realm, func(t *testing.T) {
			if got := Challenge(tt.realm); got != tt.want {
				t.Errorf("Challenge(%q) = %s, want %s", tt.realm, got, tt.want)
			}
		})
	}
}

func BenchmarkAuthenticateCached(b *testing.B) {
	path := writeFile(b, htpasswd(b, "alice", "pw"))
	a := newAuth(b, Options{File: path})
	header := basic("alice", "pw")
	if _, err := a.Authenticate(header, client1); err != nil {
		b.Fatal(err)
	}
	before := a.bcryptCalls.Load()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.Authenticate(header, client1); err != nil {
			b.Fatal(err)
		}
	}
	if a.bcryptCalls.Load() != before {
		b.Fatal("cached path ran bcrypt")
	}
}
