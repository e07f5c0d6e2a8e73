package auth

import (
	"encoding/base64"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/defendergw/gateway/internal/testutil/fakeclock"
)

var (
	client1 = netip.MustParseAddr("192.0.2.1")
	client2 = netip.MustParseAddr("192.0.2.2")
)

var hashCache sync.Map // "cost/password" -> string

// bcryptHash returns a bcrypt hash of pw at bcrypt.MinCost.
func bcryptHash(t testing.TB, pw string) string {
	return bcryptHashCost(t, pw, bcrypt.MinCost)
}

func bcryptHashCost(t testing.TB, pw string, cost int) string {
	t.Helper()
	key := fmt.Sprint(cost, "/", pw)
	if h, ok := hashCache.Load(key); ok {
		return h.(string)
	}
	h, err := bcrypt.GenerateFromPassword([]byte(pw), cost)
	if err != nil {
		t.Fatalf("GenerateFromPassword: %v", err)
	}
	hashCache.Store(key, string(h))
	return string(h)
}

// htpasswd renders "user:hash" lines for user/password pairs.
func htpasswd(t testing.TB, pairs ...string) string {
	t.Helper()
	var b strings.Builder
	for i := 0; i+1 < len(pairs); i += 2 {
		b.WriteString(pairs[i] + ":" + bcryptHash(t, pairs[i+1]) + "\n")
	}
	return b.String()
}

func writeFile(t testing.TB, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "htpasswd")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// replaceFile atomically replaces path (new inode) with content.
func replaceFile(t testing.TB, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// newFakeClock starts the tests' clock at a fixed instant.
func newFakeClock() *fakeclock.Clock {
	return fakeclock.New(time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC))
}

func basic(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}

func newAuth(t testing.TB, opts Options) *Authenticator {
	t.Helper()
	if opts.FailuresPerMinute == 0 {
		opts.FailuresPerMinute = 10
	}
	a, err := New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return a
}
