// Package auth authenticates proxy clients with the Basic scheme
// (RFC 7617) carried in the Proxy-Authorization header (RFC 9110 §11.7)
// against an htpasswd file that holds bcrypt entries only.
//
// The Microsoft Defender sensor runs as LocalSystem and cannot answer a
// proxy challenge, so the caller decides when authentication is required
// (only for destinations that are not anonymous); this package only checks
// credentials. It never logs: outcomes are returned as errors that match
// ErrNoCredentials, ErrBadCredentials or ErrRateLimited with errors.Is.
//
// bcrypt is slow on purpose, so successful checks are remembered for
// Options.CacheTTL under a salted SHA-256 digest of the user name and
// password (the password itself is never stored). Failed attempts are
// limited per client address with a token bucket; an exhausted client gets
// ErrRateLimited without its credentials being checked.
package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/bcrypt"
	"golang.org/x/time/rate"

	"github.com/defendergw/gateway/internal/filestamp"
)

// Outcomes of Authenticate, for errors.Is.
var (
	// ErrNoCredentials means the Proxy-Authorization header is missing.
	// It does not count as a failed attempt.
	ErrNoCredentials = errors.New("no proxy credentials")
	// ErrBadCredentials means the header is malformed, the user is unknown
	// or the password is wrong. The three cases are deliberately not
	// distinguished.
	ErrBadCredentials = errors.New("invalid proxy credentials")
	// ErrRateLimited means the client address used up its failed attempts.
	ErrRateLimited = errors.New("too many failed authentication attempts")
)

// Defaults applied by New to zero Options fields.
// FailuresPerMinute has no default here: its one default is the
// GATEWAY_AUTH_FAILURES_PER_MINUTE setting's.
const (
	DefaultFailureBurst = 10
	DefaultCacheTTL     = 5 * time.Minute
	DefaultCacheSize    = 4096
)

// Options configures an Authenticator.
type Options struct {
	// File is the htpasswd path. Required.
	File string

	// FailuresPerMinute and FailureBurst bound failed attempts per client
	// address (token bucket, golang.org/x/time/rate). FailuresPerMinute is
	// required (positive); FailureBurst defaults to 10. When exhausted,
	// Authenticate returns ErrRateLimited without checking credentials.
	// Negative values are an error.
	FailuresPerMinute float64
	FailureBurst      int

	// CacheTTL is how long a successful (user, password) check is
	// remembered; default 5m. A negative value disables the cache.
	CacheTTL time.Duration
	// CacheSize bounds the number of remembered successes; default 4096.
	CacheSize int

	// Now, if non-nil, is the clock; if nil, time.Now.
	Now func() time.Time
}

// Authenticator checks Basic proxy credentials against an htpasswd file.
// It is safe for concurrent use.
type Authenticator struct {
	file      string
	now       func() time.Time
	cacheTTL  time.Duration
	cacheSize int
	salt      [32]byte // random per Authenticator; keys the cache digests
	limits    *limiterSet

	reloadMu sync.Mutex       // serializes Reload; guards stamp and failed
	stamp    *filestamp.Stamp // last successfully loaded version
	failed   *failedLoad

	mu    sync.RWMutex
	users map[string][]byte // user -> bcrypt hash
	dummy []byte            // bcrypt hash compared for unknown users
	gen   uint64            // bumped on every successful (re)load
	cache map[string]cacheEntry

	flightMu sync.Mutex
	inflight map[[sha256.Size]byte]*flight

	bcryptCalls atomic.Int64 // number of bcrypt comparisons run; for tests
}

type cacheEntry struct {
	digest  [sha256.Size]byte
	expires time.Time
}

// flight is one bcrypt check in progress; identical concurrent checks
// wait for it instead of running bcrypt (and taking a rate-limit slot)
// again.
type flight struct {
	done chan struct{}
	ok   bool
}

// New loads opts.File and returns an Authenticator for it.
//
// Load errors name the file and line but never include any part of a
// password hash, e.g.
//
//	htpasswd /path line 3: user "bob": not a bcrypt hash ($2a$/$2b$/$2y$ required)
func New(opts Options) (*Authenticator, error) {
	if opts.File == "" {
		return nil, errors.New("auth: Options.File is empty")
	}
	if opts.FailuresPerMinute < 0 || opts.FailureBurst < 0 || opts.CacheSize < 0 {
		return nil, errors.New("auth: FailuresPerMinute, FailureBurst and CacheSize must not be negative")
	}
	if opts.FailuresPerMinute == 0 {
		return nil, errors.New("auth: Options.FailuresPerMinute is zero")
	}
	perMin := opts.FailuresPerMinute
	burst := opts.FailureBurst
	if burst == 0 {
		burst = DefaultFailureBurst
	}
	ttl := opts.CacheTTL
	if ttl == 0 {
		ttl = DefaultCacheTTL
	}
	size := opts.CacheSize
	if size == 0 {
		size = DefaultCacheSize
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	a := &Authenticator{
		file:      opts.File,
		now:       now,
		cacheTTL:  ttl,
		cacheSize: size,
		limits:    newLimiterSet(rate.Limit(perMin/60), burst),
		inflight:  make(map[[sha256.Size]byte]*flight),
	}
	if _, err := rand.Read(a.salt[:]); err != nil {
		return nil, fmt.Errorf("auth: %w", err)
	}
	if _, err := a.Reload(); err != nil {
		return nil, err
	}
	return a, nil
}

// Users returns the number of users loaded.
func (a *Authenticator) Users() int {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return len(a.users)
}

// Authenticate checks a Proxy-Authorization header value sent by client
// and returns the user name on success. Errors match ErrNoCredentials,
// ErrBadCredentials or ErrRateLimited.
//
// Every failure except ErrNoCredentials consumes one token of the client's
// limiter. Unknown users are compared against a dummy hash of the same
// cost as the file's entries so that timing does not reveal which part
// was wrong.
func (a *Authenticator) Authenticate(header string, client netip.Addr) (user string, err error) {
	if strings.TrimSpace(header) == "" {
		return "", ErrNoCredentials
	}
	client = client.Unmap().WithZone("")
	now := a.now()
	if !a.limits.allowed(client, now) {
		return "", ErrRateLimited
	}
	user, pass, ok := parseBasic(header)
	if !ok {
		a.limits.fail(client, now)
		return "", ErrBadCredentials
	}
	digest := a.digest(user, pass)

	a.mu.RLock()
	users, dummy, gen := a.users, a.dummy, a.gen
	e, cached := a.cache[user]
	a.mu.RUnlock()
	if cached && now.Before(e.expires) && subtle.ConstantTimeCompare(e.digest[:], digest[:]) == 1 {
		return user, nil
	}

	// Join an identical check in progress, or start one.
	a.flightMu.Lock()
	if f, ok := a.inflight[digest]; ok {
		a.flightMu.Unlock()
		<-f.done
		if !f.ok {
			a.limits.fail(client, a.now())
			return "", ErrBadCredentials
		}
		return user, nil
	}
	// A slot per concurrent check: without it, many parallel guesses
	// would all pass the allowed() check above before any failure is
	// recorded.
	if !a.limits.begin(client, now) {
		a.flightMu.Unlock()
		return "", ErrRateLimited
	}
	f := &flight{done: make(chan struct{})}
	a.inflight[digest] = f
	a.flightMu.Unlock()

	f.ok = a.verify(users, dummy, user, pass)
	if f.ok {
		a.remember(gen, user, digest)
	}
	a.flightMu.Lock()
	delete(a.inflight, digest)
	a.flightMu.Unlock()
	close(f.done)
	a.limits.end(client, a.now(), !f.ok)

	if !f.ok {
		return "", ErrBadCredentials
	}
	return user, nil
}

// verify runs exactly one bcrypt comparison, against the dummy hash when
// the user is unknown.
func (a *Authenticator) verify(users map[string][]byte, dummy []byte, user, pass string) bool {
	hash, known := users[user]
	if !known {
		hash = dummy
	}
	a.bcryptCalls.Add(1)
	err := bcrypt.CompareHashAndPassword(hash, []byte(pass))
	return known && err == nil
}

// remember caches a success unless the file was reloaded since the users
// snapshot the check used was taken.
func (a *Authenticator) remember(gen uint64, user string, digest [sha256.Size]byte) {
	if a.cacheTTL < 0 {
		return
	}
	now := a.now()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.gen != gen {
		return
	}
	if _, ok := a.cache[user]; !ok && len(a.cache) >= a.cacheSize {
		for u, e := range a.cache {
			if !now.Before(e.expires) {
				delete(a.cache, u)
			}
		}
		for u := range a.cache { // still full: drop an arbitrary entry
			if len(a.cache) < a.cacheSize {
				break
			}
			delete(a.cache, u)
		}
	}
	a.cache[user] = cacheEntry{digest: digest, expires: now.Add(a.cacheTTL)}
}

// digest is SHA-256(salt || user || 0x00 || password). The salt is random
// per Authenticator so a memory dump does not yield plain SHA-256 digests.
func (a *Authenticator) digest(user, pass string) [sha256.Size]byte {
	var buf [256]byte
	b := append(buf[:0], a.salt[:]...)
	b = append(b, user...)
	b = append(b, 0)
	b = append(b, pass...)
	sum := sha256.Sum256(b)
	clear(b)
	return sum
}

// parseBasic parses a Basic credentials header value with net/http's own
// parser (case-insensitive "Basic " prefix, base64 StdEncoding, split at
// the first ':'), which is only exposed for the Authorization header.
func parseBasic(header string) (user, pass string, ok bool) {
	r := http.Request{Header: http.Header{"Authorization": {header}}}
	return r.BasicAuth()
}

// Challenge returns the Proxy-Authenticate header value for realm:
// Basic realm="<realm>", charset="UTF-8". Backslash and double quote are
// escaped as quoted-pairs (RFC 9110 §5.6.4); control characters other
// than HTAB cannot appear in a quoted-string and are dropped.
func Challenge(realm string) string {
	var b strings.Builder
	b.WriteString(`Basic realm="`)
	for i := 0; i < len(realm); i++ {
		c := realm[i]
		switch {
		case c == '\\' || c == '"':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c < 0x20 && c != '\t', c == 0x7f:
			// not representable
		default:
			b.WriteByte(c)
		}
	}
	b.WriteString(`", charset="UTF-8"`)
	return b.String()
}
