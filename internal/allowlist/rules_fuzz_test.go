package allowlist

import (
	"strings"
	"testing"
)

// FuzzParseRules feeds arbitrary bytes to the rules-file parser: it must
// never panic, and every rule it accepts must be in normal form (its host and
// paths normalise to themselves), so that what an operator wrote and what the
// policy matches cannot drift apart.
func FuzzParseRules(f *testing.F) {
	for _, s := range []string{
		"rules:\n  - action: allow\n    host: \"*.contoso.com\"\n    ports: [443]\n",
		"rules:\n  - action: deny\n    host: evil.contoso.com\n",
		"rules:\n  - action: allow\n    host: Bücher.Example.\n    paths: [/pub/, \"/a/../b\"]\n    ports: [80, 8080]\n",
		"rules:\n  - action: allow\n    host: \"[2001:db8::1]\"\n  - action: allow\n    host: 192.0.2.1\n",
		"rules:\n  - action: allow\n    host: raw.lab.test\n    verify_sni: false\n    anonymous: true\n    tls_exempt: true\n    geography: EU\n    service: lab\n",
		"disable_services: [mma, crl]\n",
		"rules:\n  - action: allow\n    host: \"*.com\"\n",
		"rules:\n  - {action: allow, host: 0x7f.1}\n",
		"rules: &a [*a]\n",
		"",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		rs, err := ParseRules(data, "fuzz.yaml")
		if err != nil {
			if rs != nil {
				t.Fatalf("ParseRules returned rules and an error: %v", err)
			}
			return
		}
		for _, r := range rs.Rules {
			again, err := NormalizePattern(r.Host)
			if err != nil || again != r.Host {
				t.Fatalf("rule %s host %q does not re-normalise to itself: %q, %v", r.ID, r.Host, again, err)
			}
			if r.Host == "" || strings.ContainsAny(r.Host, " \t\r\n/@%\\") {
				t.Fatalf("rule %s host %q", r.ID, r.Host)
			}
			if r.Action != Allow && r.Action != Deny {
				t.Fatalf("rule %s action %v", r.ID, r.Action)
			}
			if r.Action == Allow && len(r.Ports) == 0 {
				t.Fatalf("allow rule %s has no ports: it would allow every port", r.ID)
			}
			for _, p := range r.Ports {
				if p == 0 {
					t.Fatalf("rule %s port 0", r.ID)
				}
			}
			for _, p := range r.Paths {
				again, err := NormalizePath(p)
				if err != nil || again != p || !strings.HasPrefix(p, "/") {
					t.Fatalf("rule %s path %q does not re-normalise to itself: %q, %v", r.ID, p, again, err)
				}
			}
			if !strings.HasPrefix(r.ID, "fuzz.yaml:") {
				t.Fatalf("rule id %q", r.ID)
			}
		}
	})
}
