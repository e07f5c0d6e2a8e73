package auth

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestNewRejectsBadFiles(t *testing.T) {
	good := bcryptHash(t, "pw")
	const (
		sha   = "{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g="
		apr1  = "$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/"
		crypt = "rqXexS6ZhobKA"
		plain = "plaintextpassword"
	)
	tests := []struct {
		name     string
		content  string
		wantLine string // "" when the error is not about one line
		wantMsg  string
		secrets  []string // must not appear in the error
	}{
		{"SHA1", "alice:" + good + "\nbob:" + sha + "\n", "line 2", `user "bob": not a bcrypt hash ($2a$/$2b$/$2y$ required)`, []string{sha, "{SHA}", "W6ph5"}},
		{"apr1 MD5", "bob:" + apr1 + "\n", "line 1", `user "bob": not a bcrypt hash`, []string{apr1, "$apr1$", "HqJZ"}},
		{"crypt", "# c\n\nbob:" + crypt + "\n", "line 3", `user "bob": not a bcrypt hash`, []string{crypt}},
		{"plain", "bob:" + plain + "\n", "line 1", `user "bob": not a bcrypt hash`, []string{plain}},
		{"empty hash", "bob:\n", "line 1", `user "bob": not a bcrypt hash`, nil},
		{"$2x$ prefix", "bob:$2x$" + good[4:] + "\n", "line 1", "not a bcrypt hash", []string{good[7:]}},
		{"truncated bcrypt", "bob:" + good[:50] + "\n", "line 1", `user "bob": invalid bcrypt hash`, []string{good[:50], good[7:20]}},
		{"bcrypt with junk appended", "bob:" + good + "xyz\n", "line 1", "invalid bcrypt hash", []string{good[7:20]}},
		{"bcrypt bad cost", "bob:$2b$99$" + good[7:] + "\n", "line 1", "invalid bcrypt hash", []string{good[7:20], "99"}},
		{"bcrypt non-numeric cost", "bob:$2b$x1$" + good[7:] + "\n", "line 1", "invalid bcrypt hash", []string{good[7:20], "x1"}},
		{"bcrypt bad characters", "bob:" + good[:20] + "!!" + good[22:] + "\n", "line 1", "invalid bcrypt hash", []string{good[7:20]}},
		{"missing colon", "alice:" + good + "\n" + good + "\n", "line 2", "missing ':'", []string{good[7:20]}},
		{"empty user", ":" + good + "\n", "line 1", "empty user name", []string{good[7:20]}},
		{"duplicate user", "alice:" + good + "\n#\nalice:" + good + "\n", "line 3", `duplicate user "alice" (first on line 1)`, []string{good[7:20]}},
		{"empty file", "", "", "no users", nil},
		{"only comments and blank lines", "# nothing\n\n   \n#alice:x\n", "", "no users", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeFile(t, tt.content)
			a, err := New(Options{File: path, FailuresPerMinute: 10})
			if err == nil {
				t.Fatalf("New = %v, nil; want error", a)
			}
			msg := err.Error()
			if want := "htpasswd " + path; !strings.HasPrefix(msg, want) {
				t.Errorf("error %q does not start with %q", msg, want)
			}
			if tt.wantLine != "" && !strings.Contains(msg, path+" "+tt.wantLine+":") {
				t.Errorf("error %q does not name %s", msg, tt.wantLine)
			}
			if !strings.Contains(msg, tt.wantMsg) {
				t.Errorf("error %q does not contain %q", msg, tt.wantMsg)
			}
			rest := strings.ReplaceAll(msg, path, "")
			for _, s := range tt.secrets {
				if strings.Contains(rest, s) {
					t.Errorf("error %q leaks hash text %q", msg, s)
				}
			}
		})
	}
}

func TestNewMissingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nope")
	_, err := New(Options{File: path, FailuresPerMinute: 10})
	if err == nil || !strings.Contains(err.Error(), path) || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("New err = %v, want not-exist error naming %s", err, path)
	}
}

func TestNewOptions(t *testing.T) {
	path := writeFile(t, htpasswd(t, "alice", "pw"))
	tests := []struct {
		name    string
		opts    Options
		wantErr bool
	}{
		{"defaults", Options{File: path, FailuresPerMinute: 10}, false},
		{"no rate", Options{File: path}, true},
		{"no file", Options{}, true},
		{"negative rate", Options{File: path, FailuresPerMinute: -1}, true},
		{"negative burst", Options{File: path, FailuresPerMinute: 10, FailureBurst: -1}, true},
		{"negative cache size", Options{File: path, FailuresPerMinute: 10, CacheSize: -1}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.opts)
			if (err != nil) != tt.wantErr {
				t.Errorf("New err = %v, want error: %v", err, tt.wantErr)
			}
		})
	}
}

func TestCommentsBlankLinesCRLF(t *testing.T) {
	content := "# users\r\n\r\n" +
		"alice:" + bcryptHash(t, "pw1") + "\r\n" +
		"   # indented comment\n" +
		"  \t \n" +
		"bob:" + bcryptHash(t, "pw2") + "   \n" +
		"carol:" + bcryptHash(t, "pw3") // no final newline
	a := newAuth(t, Options{File: writeFile(t, content)})
	if got, want := a.Users(), 3; got != want {
		t.Fatalf("Users() = %d, want %d", got, want)
	}
	for _, c := range []struct{ user, pw string }{{"alice", "pw1"}, {"bob", "pw2"}, {"carol", "pw3"}} {
		t.Run(c.user, func(t *testing.T) {
			if got, err := a.Authenticate(basic(c.user, c.pw), client1); err != nil || got != c.user {
				t.Errorf("Authenticate = (%q, %v), want (%q, nil)", got, err, c.user)
			}
		})
	}
}

func TestReload(t *testing.T) {
	path := writeFile(t, htpasswd(t, "alice", "pw", "bob", "pw2"))
	a := newAuth(t, Options{File: path})

	auth := func(t *testing.T, user, pw string, wantOK bool) {
		t.Helper()
		got, err := a.Authenticate(basic(user, pw), client1)
		if wantOK && (err != nil || got != user) {
			t.Errorf("Authenticate(%s) = (%q, %v), want success", user, got, err)
		}
		if !wantOK && !errors.Is(err, ErrBadCredentials) {
			t.Errorf("Authenticate(%s) = (%q, %v), want ErrBadCredentials", user, got, err)
		}
	}

	t.Run("unchanged", func(t *testing.T) {
		auth(t, "alice", "pw", true) // cached from here on
		changed, err := a.Reload()
		if changed || err != nil {
			t.Fatalf("Reload = (%v, %v), want (false, nil)", changed, err)
		}
		before := a.bcryptCalls.Load()
		auth(t, "alice", "pw", true)
		if a.bcryptCalls.Load() != before {
			t.Errorf("cache was cleared by a no-op reload")
		}
	})

	t.Run("replaced file", func(t *testing.T) {
		replaceFile(t, path, htpasswd(t, "alice", "pw", "carol", "pw3"))
		changed, err := a.Reload()
		if !changed || err != nil {
			t.Fatalf("Reload = (%v, %v), want (true, nil)", changed, err)
		}
		if got := a.Users(); got != 2 {
			t.Errorf("Users() = %d, want 2", got)
		}
		before := a.bcryptCalls.Load()
		auth(t, "alice", "pw", true)
		if a.bcryptCalls.Load() == before {
			t.Errorf("cache not cleared by reload")
		}
		auth(t, "carol", "pw3", true)
		auth(t, "bob", "pw2", false)
	})

	t.Run("modified in place", func(t *testing.T) {
		content := htpasswd(t, "alice", "pw", "dave", "pw4")
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		// Make sure the stamp differs even on coarse-mtime file systems.
		future := time.Now().Add(time.Hour)
		if err := os.Chtimes(path, future, future); err != nil {
			t.Fatal(err)
		}
		changed, err := a.Reload()
		if !changed || err != nil {
			t.Fatalf("Reload = (%v, %v), want (true, nil)", changed, err)
		}
		auth(t, "dave", "pw4", true)
		auth(t, "carol", "pw3", false)
	})

	t.Run("broken file keeps old users", func(t *testing.T) {
		replaceFile(t, path, "alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n")
		for i := range 2 { // the error is reported again while the file stays broken
			changed, err := a.Reload()
			if changed || err == nil || !strings.Contains(err.Error(), "line 1") {
				t.Fatalf("Reload #%d = (%v, %v), want (false, line 1 error)", i, changed, err)
			}
		}
		if got := a.Users(); got != 2 {
			t.Errorf("Users() = %d, want 2", got)
		}
		auth(t, "alice", "pw", true)
		auth(t, "dave", "pw4", true)
	})

	t.Run("missing file keeps old users", func(t *testing.T) {
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
		changed, err := a.Reload()
		if changed || !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("Reload = (%v, %v), want (false, not-exist)", changed, err)
		}
		auth(t, "dave", "pw4", true)
	})

	t.Run("fixed file loads", func(t *testing.T) {
		replaceFile(t, path, htpasswd(t, "erin", "pw5"))
		changed, err := a.Reload()
		if !changed || err != nil {
			t.Fatalf("Reload = (%v, %v), want (true, nil)", changed, err)
		}
		auth(t, "erin", "pw5", true)
		auth(t, "alice", "pw", false)
	})
}
