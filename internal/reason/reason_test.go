package reason

import (
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

func TestTable(t *testing.T) {
	seen := map[string]Code{}
	for _, c := range All() {
		t.Run(c.String(), func(t *testing.T) {
			if c.String() == "" {
				t.Fatalf("code %d has no X-Gateway-Reason code", c)
			}
			if prev, dup := seen[c.String()]; dup {
				t.Errorf("code %q used by %d and %d", c, prev, c)
			}
			seen[c.String()] = c
			if got, ok := Parse(c.String()); !ok || got != c {
				t.Errorf("Parse(%q) = %d, %v; want %d, true", c, got, ok, c)
			}
			if c.Label() != c.String() {
				t.Errorf("Label() = %q, want the code %q", c.Label(), c)
			}
			switch c.Kind() {
			case Refused:
				if c.Status() < 400 || c.Status() >= 600 || c.ActionType() != ConnectionBlocked {
					t.Errorf("refusal with status %d, action %s", c.Status(), c.ActionType())
				}
				if c.Hint("host.example:443") == "" {
					t.Errorf("refusal without a hint")
				}
			case Failed:
				if (c.Status() != http.StatusBadGateway && c.Status() != http.StatusGatewayTimeout) || c.ActionType() != ConnectionFailed {
					t.Errorf("failure with status %d, action %s", c.Status(), c.ActionType())
				}
				if !strings.Contains(c.Hint("host.example:443"), "host.example:443") {
					t.Errorf("failure hint %q does not name the target", c.Hint("host.example:443"))
				}
			case Success:
				if c.Status() != http.StatusOK || c.ActionType() != ConnectionSuccess {
					t.Errorf("success with status %d, action %s", c.Status(), c.ActionType())
				}
			}
			if h := c.Hint("x"); strings.Contains(h, "%!") {
				t.Errorf("hint %q is a broken format", h)
			}
		})
	}
}

func TestNoneAndUnknown(t *testing.T) {
	if None.String() != "" || None.Label() != "none" {
		t.Errorf("None = %q, label %q", None.String(), None.Label())
	}
	if c, ok := Parse("no-such-reason"); ok || c != None {
		t.Errorf("Parse(unknown) = %d, %v; want None, false", c, ok)
	}
	var c Code
	if err := c.UnmarshalText([]byte("geography")); err != nil || c != Geography {
		t.Errorf("UnmarshalText(geography) = %d, %v", c, err)
	}
	if err := c.UnmarshalText([]byte("bogus")); err == nil {
		t.Error("UnmarshalText(bogus) succeeded")
	}
	if b, _ := ServiceDisabled.MarshalText(); string(b) != "service-disabled" {
		t.Errorf("MarshalText = %q", b)
	}
	if Code(200).String() != "" {
		t.Errorf("an out-of-range code has a name")
	}
}

// TestREADMEStatusTable keeps the README's table of answers in step with
// the reason table: every reason the gateway answers with is listed with
// its status, and nothing else is.
func TestREADMEStatusTable(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("(?m)^\\| (\\d{3}) \\| `([a-z-]+)` \\|")
	got := map[string]string{}
	for _, m := range row.FindAllStringSubmatch(string(b), -1) {
		got[m[2]] = m[1]
	}
	for _, c := range All() {
		switch c {
		case Allowed, Unlisted, NotTLS, SNIMismatch:
			continue // not answers: decisions, or tunnels closed after the 200
		}
		if s, ok := got[c.String()]; !ok {
			t.Errorf("README's status table lacks %s", c)
		} else if s != strconv.Itoa(c.Status()) {
			t.Errorf("README says %s for %s, the table %d", s, c, c.Status())
		}
		delete(got, c.String())
	}
	for code := range got {
		t.Errorf("README lists %q, which is no reason", code)
	}
}
