package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/defendergw/gateway/internal/allowlist"
	"github.com/defendergw/gateway/internal/reason"
)

// TestExplainDisabledService runs gateway explain against a disabled
// service's target (issue 16 item 4): the answer is service-disabled, names
// the service and the setting, and shows the disabled row, not a portal row's
// port refusal.
func TestExplainDisabledService(t *testing.T) {
	rules := filepath.Join(t.TempDir(), "rules.yaml")
	if err := os.WriteFile(rules, []byte("disable_services: [crl]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	const target = "http://crl.microsoft.com/pki/crl/products/x.crl"
	tests := []struct {
		name     string
		env      []string
		args     []string
		wantCode int
		want     []string
		notWant  []string
	}{
		{"setting, text", []string{"GATEWAY_DISABLED_SERVICES=crl"}, []string{"explain", target}, 1,
			[]string{"refused", "reason: service-disabled",
				`detail: destination belongs to a catalog service that is disabled: service "crl" (CRL / certificate trust) is disabled by GATEWAY_DISABLED_SERVICES`,
				"service: crl (CRL / certificate trust)", "crl.microsoft.com, ports 80"},
			[]string{"admin-portal", "reason: port"}},
		// The rules file's disable_services is named as such, not as the
		// environment setting.
		{"rules file, text", []string{"GATEWAY_RULES_FILE=" + rules}, []string{"explain", target}, 1,
			[]string{"refused", "reason: service-disabled",
				`service "crl" (CRL / certificate trust) is disabled by disable_services in the rules file (GATEWAY_RULES_FILE)`},
			[]string{"admin-portal", "reason: port", "by GATEWAY_DISABLED_SERVICES"}},
		{"other service's row still allows", []string{"GATEWAY_DISABLED_SERVICES=crl"}, []string{"explain", "crl.microsoft.com:443"}, 0,
			[]string{"allowed", "admin-portal"}, []string{"service-disabled"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := runCLI(t, tt.env, tt.args...)
			if code != tt.wantCode {
				t.Fatalf("exit %d, want %d; stdout %q stderr %q", code, tt.wantCode, out, errOut)
			}
			out = strings.Join(strings.Fields(out), " ") // tabwriter padding aside
			checkContains(t, "output", out, tt.want, tt.notWant)
		})
	}
	t.Run("json", func(t *testing.T) {
		out, errOut, code := runCLI(t, []string{"GATEWAY_DISABLED_SERVICES=crl"}, "explain", "--format", "json", target)
		if code != 1 {
			t.Fatalf("exit %d, want 1; stderr %q", code, errOut)
		}
		var e allowlist.Explanation
		if err := json.Unmarshal([]byte(out), &e); err != nil {
			t.Fatalf("%v in %s", err, out)
		}
		if got, want := e.Reason, reason.ServiceDisabled; got != want {
			t.Errorf("reason = %q, want %q", got, want)
		}
		if got, want := e.Detail, `service "crl" (CRL / certificate trust) is disabled by GATEWAY_DISABLED_SERVICES`; got != want {
			t.Errorf("detail = %q, want %q", got, want)
		}
		if got, want := e.Service, "crl"; got != want {
			t.Errorf("service = %q, want %q", got, want)
		}
	})
}
