package auth

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/crypto/bcrypt"

	"github.com/defendergw/gateway/internal/filestamp"
)

// failedLoad remembers a version of the file that did not load, so that
// Reload reports the same error without re-reading it.
type failedLoad struct {
	stamp *filestamp.Stamp
	err   error
}

// Reload re-reads the file if its modification time, size or inode
// changed since the last successful load; otherwise it only stats it.
// On success with a changed file it replaces the users, clears the success
// cache and returns true. If the new file is bad, the previous users stay
// in effect and the error is returned (again on every call, without
// re-reading, until the file changes).
func (a *Authenticator) Reload() (changed bool, err error) {
	a.reloadMu.Lock()
	defer a.reloadMu.Unlock()

	fi, err := os.Stat(a.file)
	if err != nil {
		return false, fmt.Errorf("htpasswd: %w", err)
	}
	if a.stamp.Matches(fi) {
		return false, nil
	}
	if a.failed != nil && a.failed.stamp.Matches(fi) {
		return false, a.failed.err
	}

	users, cost, stamp, err := loadFile(a.file)
	if err != nil {
		if stamp != nil {
			a.failed = &failedLoad{stamp: stamp, err: err}
		}
		return false, err
	}

	a.mu.RLock()
	dummy := a.dummy
	a.mu.RUnlock()
	if c, err := bcrypt.Cost(dummy); dummy == nil || err != nil || c != cost {
		if dummy, err = newDummyHash(cost); err != nil {
			return false, fmt.Errorf("htpasswd %s: dummy hash: %w", a.file, err)
		}
	}

	a.mu.Lock()
	a.users = users
	a.dummy = dummy
	a.gen++
	a.cache = make(map[string]cacheEntry)
	a.mu.Unlock()

	a.stamp = stamp
	a.failed = nil
	return true, nil
}

// loadFile reads and parses path. It returns the users, the highest bcrypt
// cost among them and the stamp of the version read (also on parse
// errors, nil if the file could not be opened or read).
func loadFile(path string) (map[string][]byte, int, *filestamp.Stamp, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, nil, fmt.Errorf("htpasswd: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, 0, nil, fmt.Errorf("htpasswd: %w", err)
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, 0, nil, fmt.Errorf("htpasswd %s: %w", path, err)
	}
	stamp := filestamp.FromInfo(fi)
	users, cost, err := parseHtpasswd(path, data)
	return users, cost, stamp, err
}

// parseHtpasswd parses "user:bcrypt-hash" lines. Blank lines and lines
// starting with '#' are ignored. Errors name path and the line number and
// never contain any part of a hash.
func parseHtpasswd(path string, data []byte) (map[string][]byte, int, error) {
	users := make(map[string][]byte)
	firstLine := make(map[string]int)
	maxCost := 0
	for n, raw := range bytes.Split(data, []byte("\n")) {
		lineNo := n + 1
		line := strings.TrimSpace(string(raw))
		if line == "" || line[0] == '#' {
			continue
		}
		user, hash, ok := strings.Cut(line, ":")
		if !ok {
			return nil, 0, fmt.Errorf("htpasswd %s line %d: missing ':' between user and hash", path, lineNo)
		}
		if user == "" {
			return nil, 0, fmt.Errorf("htpasswd %s line %d: empty user name", path, lineNo)
		}
		if prev, dup := firstLine[user]; dup {
			return nil, 0, fmt.Errorf("htpasswd %s line %d: duplicate user %q (first on line %d)", path, lineNo, user, prev)
		}
		if !hasBcryptPrefix(hash) {
			return nil, 0, fmt.Errorf("htpasswd %s line %d: user %q: not a bcrypt hash ($2a$/$2b$/$2y$ required)", path, lineNo, user)
		}
		cost, ok := bcryptCost(hash)
		if !ok {
			// bcrypt's own errors may quote parts of the hash: not used.
			return nil, 0, fmt.Errorf("htpasswd %s line %d: user %q: invalid bcrypt hash (bad length, cost or characters)", path, lineNo, user)
		}
		firstLine[user] = lineNo
		users[user] = []byte(hash)
		maxCost = max(maxCost, cost)
	}
	if len(users) == 0 {
		return nil, 0, fmt.Errorf("htpasswd %s: no users", path)
	}
	return users, maxCost, nil
}

func hasBcryptPrefix(h string) bool {
	return strings.HasPrefix(h, "$2a$") || strings.HasPrefix(h, "$2b$") || strings.HasPrefix(h, "$2y$")
}

// bcryptHashLen is len("$2b$NN$") + 22 salt + 31 hash characters.
const bcryptHashLen = 60

// bcryptCost validates a "$2?$NN$<53 chars>" hash and returns its cost.
func bcryptCost(h string) (int, bool) {
	if len(h) != bcryptHashLen || h[6] != '$' {
		return 0, false
	}
	for i := 7; i < len(h); i++ {
		if !isBcryptBase64(h[i]) {
			return 0, false
		}
	}
	cost, err := bcrypt.Cost([]byte(h))
	if err != nil {
		return 0, false
	}
	return cost, true
}

func isBcryptBase64(c byte) bool {
	return c == '.' || c == '/' || '0' <= c && c <= '9' || 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z'
}

// newDummyHash hashes a random password at cost, for unknown users.
func newDummyHash(cost int) ([]byte, error) {
	var pw [18]byte
	if _, err := rand.Read(pw[:]); err != nil {
		return nil, err
	}
	return bcrypt.GenerateFromPassword(pw[:], cost)
}
