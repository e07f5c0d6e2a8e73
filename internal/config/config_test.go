package config

import (
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/defendergw/gateway/internal/allowlist"
)

func TestLoadConfigDefaults(t *testing.T) {
	c, unknown, err := Load(map[string]string{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c.Listen, []string{"127.0.0.1:3128"}) {
		t.Errorf("default listen = %q, want loopback 127.0.0.1:3128", c.Listen)
	}
	if c.IdleTimeout != 15*time.Minute || c.DialTimeout != 10*time.Second || c.DNSTimeout != 2*time.Second {
		t.Errorf("timeouts = idle %s dial %s dns %s", c.IdleTimeout, c.DialTimeout, c.DNSTimeout)
	}
	if len(c.AllowPrivateDestinations) != 0 {
		t.Errorf("private destinations allowed by default: %v", c.AllowPrivateDestinations)
	}
	if len(unknown) != 0 {
		t.Errorf("unknown = %v", unknown)
	}
	p, err := c.BuildPolicy()
	if err != nil {
		t.Fatal(err)
	}
	if !p.AllGeographies() {
		t.Error("unset GATEWAY_GEOGRAPHIES should apply every geography (with a warning)")
	}
}

// TestParentSettings parses the parent proxies in order with their
// credentials, normalises the bypass patterns, and never repeats a
// password in an error or in a setting's printed form.
func TestParentSettings(t *testing.T) {
	c, _, err := Load(map[string]string{
		"GATEWAY_PARENT_PROXY":  "http://gw:s3cret%2Cpw@proxy1.corp:8080, http://10.0.0.2:3128",
		"GATEWAY_PARENT_BYPASS": "*.Contoso.COM,,crl.microsoft.com.",
	})
	if err != nil {
		t.Fatal(err)
	}
	ps := c.Parents()
	if len(ps) != 2 || ps[0].Host != "proxy1.corp:8080" || ps[1].Host != "10.0.0.2:3128" {
		t.Fatalf("parents = %v", ps)
	}
	if pw, _ := ps[0].User.Password(); ps[0].User.Username() != "gw" || pw != "s3cret,pw" {
		t.Errorf("credentials = %q %q, want gw s3cret,pw (percent-decoded)", ps[0].User.Username(), pw)
	}
	if got, want := c.ParentBypassList(), []string{"*.contoso.com", "crl.microsoft.com"}; !slices.Equal(got, want) {
		t.Errorf("bypass = %q, want %q", got, want)
	}
	if got := fmt.Sprint(c.ParentProxy); strings.Contains(got, "s3cret") {
		t.Errorf("the setting prints its password: %s", got)
	}
	if c.ParentRetry != 30*time.Second || c.ParentTarget != "address" {
		t.Errorf("defaults: retry %s, target %q", c.ParentRetry, c.ParentTarget)
	}
	for _, bad := range []string{"https://gw:s3cret@proxy.corp:443", "http://gw:s3cret@proxy.corp", "http://gw:s3cret@proxy.corp:80%zz",
		"gw:s3cret@proxy.corp:8080", "http://gw:s3cret@proxy.corp:8080/path", "http://gw:s3cret@proxy.corp:8080,http://gw:s3cret@proxy.corp:8080"} {
		_, _, err := Load(map[string]string{"GATEWAY_PARENT_PROXY": bad})
		if err == nil || !strings.Contains(err.Error(), "GATEWAY_PARENT_PROXY") {
			t.Errorf("%s: err = %v, want one naming GATEWAY_PARENT_PROXY", bad, err)
			continue
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("%s: the error repeats the password: %v", bad, err)
		}
	}
}

func TestLoadConfig(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		wantErr string // substring; "" means valid
	}{
		{"geographies", map[string]string{"GATEWAY_GEOGRAPHIES": "eu, UK"}, ""},
		{"unknown geography", map[string]string{"GATEWAY_GEOGRAPHIES": "EU,MARS"}, "GATEWAY_GEOGRAPHIES"},
		{"bad duration", map[string]string{"GATEWAY_DIAL_TIMEOUT": "soon"}, "GATEWAY_DIAL_TIMEOUT"},
		{"zero duration", map[string]string{"GATEWAY_DNS_TIMEOUT": "0s"}, "GATEWAY_DNS_TIMEOUT"},
		{"negative idle", map[string]string{"GATEWAY_IDLE_TIMEOUT": "-1s"}, "GATEWAY_IDLE_TIMEOUT"},
		{"idle off", map[string]string{"GATEWAY_IDLE_TIMEOUT": "0"}, ""},
		{"write timeout", map[string]string{"GATEWAY_WRITE_TIMEOUT": "1m"}, ""},
		{"negative write timeout", map[string]string{"GATEWAY_WRITE_TIMEOUT": "-1s"}, "GATEWAY_WRITE_TIMEOUT"},
		{"bad listen", map[string]string{"GATEWAY_LISTEN": "3128"}, "GATEWAY_LISTEN"},
		{"several listeners", map[string]string{"GATEWAY_LISTEN": "127.0.0.1:3128,[::1]:3128"}, ""},
		{"a bad listener among several", map[string]string{"GATEWAY_LISTEN": "127.0.0.1:3128,[::1]"}, "GATEWAY_LISTEN"},
		{"listener twice", map[string]string{"GATEWAY_LISTEN": "127.0.0.1:3128,127.0.0.1:3128"}, "GATEWAY_LISTEN"},
		{"no listener", map[string]string{"GATEWAY_LISTEN": ","}, "GATEWAY_LISTEN"},
		{"proxy protocol required", map[string]string{"GATEWAY_PROXY_PROTOCOL": "required", "GATEWAY_PROXY_PROTOCOL_FROM": "10.0.0.0/24"}, ""},
		{"proxy protocol optional", map[string]string{"GATEWAY_PROXY_PROTOCOL": "Optional", "GATEWAY_PROXY_PROTOCOL_FROM": "127.0.0.1"}, ""},
		{"proxy protocol without sources", map[string]string{"GATEWAY_PROXY_PROTOCOL": "required"}, "GATEWAY_PROXY_PROTOCOL_FROM"},
		{"proxy protocol sources while off", map[string]string{"GATEWAY_PROXY_PROTOCOL_FROM": "10.0.0.0/24"}, "GATEWAY_PROXY_PROTOCOL"},
		{"proxy protocol bad word", map[string]string{"GATEWAY_PROXY_PROTOCOL": "v2"}, "GATEWAY_PROXY_PROTOCOL"},
		{"proxy protocol bad source", map[string]string{"GATEWAY_PROXY_PROTOCOL": "required", "GATEWAY_PROXY_PROTOCOL_FROM": "lb.example"}, "GATEWAY_PROXY_PROTOCOL_FROM"},
		{"transparent listeners", map[string]string{"GATEWAY_TRANSPARENT_LISTEN": "127.0.0.1:3129,[::1]:3129,"}, ""},
		{"bad transparent listener", map[string]string{"GATEWAY_TRANSPARENT_LISTEN": "127.0.0.1:3129,3130"}, "GATEWAY_TRANSPARENT_LISTEN"},
		{"transparent listener twice", map[string]string{"GATEWAY_TRANSPARENT_LISTEN": "127.0.0.1:3129,127.0.0.1:3129"}, "GATEWAY_TRANSPARENT_LISTEN"},
		{"strict destination without a transparent listener", map[string]string{"GATEWAY_TRANSPARENT_STRICT_DESTINATION": "true"}, "GATEWAY_TRANSPARENT_STRICT_DESTINATION"},
		{"tproxy without a transparent listener", map[string]string{"GATEWAY_TRANSPARENT_TPROXY": "true"}, "GATEWAY_TRANSPARENT_TPROXY"},
		{"tproxy not a boolean", map[string]string{"GATEWAY_TRANSPARENT_LISTEN": "127.0.0.1:3129", "GATEWAY_TRANSPARENT_TPROXY": "yes please"}, "GATEWAY_TRANSPARENT_TPROXY"},
		{"bad cidr", map[string]string{"GATEWAY_ALLOW_PRIVATE_DESTINATIONS": "10.0.0.0/33"}, "GATEWAY_ALLOW_PRIVATE_DESTINATIONS"},
		{"cidr host bits", map[string]string{"GATEWAY_ALLOW_PRIVATE_DESTINATIONS": "10.1.2.3/8"}, "GATEWAY_ALLOW_PRIVATE_DESTINATIONS"},
		{"single address", map[string]string{"GATEWAY_ALLOW_PRIVATE_DESTINATIONS": "127.0.0.1, ::1"}, ""},
		{"dns server name", map[string]string{"GATEWAY_DNS_SERVERS": "dns.example.com"}, "GATEWAY_DNS_SERVERS"},
		{"dns server without port", map[string]string{"GATEWAY_DNS_SERVERS": "127.0.0.53"}, ""},
		{"bad int", map[string]string{"GATEWAY_DNS_CACHE_SIZE": "many"}, "GATEWAY_DNS_CACHE_SIZE"},
		{"header bytes too small", map[string]string{"GATEWAY_MAX_HEADER_BYTES": "10"}, "GATEWAY_MAX_HEADER_BYTES"},
		{"log format", map[string]string{"GATEWAY_LOG_FORMAT": "xml"}, "GATEWAY_LOG_FORMAT"},
		{"log level", map[string]string{"GATEWAY_LOG_LEVEL": "loud"}, "GATEWAY_LOG_LEVEL"},
		{"ttl order", map[string]string{"GATEWAY_DNS_MIN_TTL": "10m"}, "GATEWAY_DNS_MIN_TTL"},
		{"keep-alive off", map[string]string{"GATEWAY_TCP_KEEPALIVE": "0"}, ""},
		{"keep-alive negative", map[string]string{"GATEWAY_TCP_KEEPALIVE": "-30s"}, "GATEWAY_TCP_KEEPALIVE"},
		{"keep-alive below a second", map[string]string{"GATEWAY_TCP_KEEPALIVE": "500ms"}, "GATEWAY_TCP_KEEPALIVE"},
		{"keep-alive beyond the kernel's limit", map[string]string{"GATEWAY_TCP_KEEPALIVE": "10h"}, "GATEWAY_TCP_KEEPALIVE"},
		{"keep-alive not a duration", map[string]string{"GATEWAY_TCP_KEEPALIVE": "on"}, "GATEWAY_TCP_KEEPALIVE"},
		{"parents", map[string]string{"GATEWAY_PARENT_PROXY": "http://u:p@proxy1.corp:8080, http://10.0.0.2:3128,"}, ""},
		{"parent not a URL", map[string]string{"GATEWAY_PARENT_PROXY": "http://proxy.corp:80%zz"}, "GATEWAY_PARENT_PROXY"},
		{"parent https", map[string]string{"GATEWAY_PARENT_PROXY": "https://proxy.corp:443"}, "GATEWAY_PARENT_PROXY"},
		{"parent socks", map[string]string{"GATEWAY_PARENT_PROXY": "socks5://proxy.corp:1080"}, "GATEWAY_PARENT_PROXY"},
		{"parent without scheme", map[string]string{"GATEWAY_PARENT_PROXY": "proxy.corp:8080"}, "GATEWAY_PARENT_PROXY"},
		{"parent without port", map[string]string{"GATEWAY_PARENT_PROXY": "http://proxy.corp"}, "GATEWAY_PARENT_PROXY"},
		{"parent port zero", map[string]string{"GATEWAY_PARENT_PROXY": "http://proxy.corp:0"}, "GATEWAY_PARENT_PROXY"},
		{"parent with a path", map[string]string{"GATEWAY_PARENT_PROXY": "http://proxy.corp:8080/x"}, "GATEWAY_PARENT_PROXY"},
		{"parent twice", map[string]string{"GATEWAY_PARENT_PROXY": "http://proxy.corp:8080,http://proxy.corp:8080"}, "GATEWAY_PARENT_PROXY"},
		{"parent without user", map[string]string{"GATEWAY_PARENT_PROXY": "http://:pw@proxy.corp:8080"}, "GATEWAY_PARENT_PROXY"},
		{"bypass", map[string]string{"GATEWAY_PARENT_PROXY": "http://proxy.corp:8080", "GATEWAY_PARENT_BYPASS": "*.Contoso.com, crl.microsoft.com."}, ""},
		{"bad bypass", map[string]string{"GATEWAY_PARENT_PROXY": "http://proxy.corp:8080", "GATEWAY_PARENT_BYPASS": "a.*.com"}, "GATEWAY_PARENT_BYPASS"},
		{"bypass without parent", map[string]string{"GATEWAY_PARENT_BYPASS": "*.contoso.com"}, "GATEWAY_PARENT_BYPASS"},
		{"parent target", map[string]string{"GATEWAY_PARENT_TARGET": "name"}, ""},
		{"bad parent target", map[string]string{"GATEWAY_PARENT_TARGET": "ip"}, "GATEWAY_PARENT_TARGET"},
		{"zero parent retry", map[string]string{"GATEWAY_PARENT_RETRY": "0s"}, "GATEWAY_PARENT_RETRY"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := Load(tt.env)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("err = %v, want one naming %s", err, tt.wantErr)
			}
		})
	}
}

func TestConfigDerived(t *testing.T) {
	c, unknown, err := Load(map[string]string{
		"GATEWAY_GEOGRAPHIES": "EU,eu,,UK", "GATEWAY_DNS_SERVERS": "127.0.0.53,[::1]:5353",
		"GATEWAY_GEOGRAPHY": "EU", "OTHER": "x",
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Locations(); len(got) != 2 || got[0] != allowlist.EU || got[1] != allowlist.UK {
		t.Errorf("geos = %v, want [EU UK]", got)
	}
	if got := strings.Join(c.DNSServers, " "); got != "127.0.0.53:53 [::1]:5353" {
		t.Errorf("dns servers = %q", got)
	}
	if len(unknown) != 1 || unknown[0] != "GATEWAY_GEOGRAPHY" {
		t.Errorf("unknown = %v, want the GATEWAY_GEOGRAPHY typo", unknown)
	}
}

func TestBuildPolicyErrors(t *testing.T) {
	dir := t.TempDir()
	bad := dir + "/bad.yaml"
	writeFile(t, bad, "rules:\n  - action: allow\n    host: 'a..b'\n")
	tests := []struct {
		name string
		env  map[string]string
		want string
	}{
		{"missing rules file", map[string]string{"GATEWAY_RULES_FILE": dir + "/none.yaml"}, "GATEWAY_RULES_FILE"},
		{"bad rules file", map[string]string{"GATEWAY_RULES_FILE": bad}, "bad.yaml line 2"},
		{"unknown service", map[string]string{"GATEWAY_DISABLED_SERVICES": "mma,nope"}, "nope"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _, err := Load(tt.env)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.BuildPolicy(); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want mention of %q", err, tt.want)
			}
		})
	}
}

// TestDefaultAdminListen keeps the admin default off the ports other
// monitoring tools take by default, and the healthcheck's copy equal to it.
func TestDefaultAdminListen(t *testing.T) {
	c, _, err := Load(map[string]string{})
	if err != nil {
		t.Fatal(err)
	}
	if got := Default("AdminListen"); c.AdminListen != got {
		t.Errorf("default GATEWAY_ADMIN_LISTEN = %q, Default says %q", c.AdminListen, got)
	}
	_, port, err := net.SplitHostPort(c.AdminListen)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(port)
	// 9090 Prometheus, 9091 Pushgateway, 9093 Alertmanager, 9100-9999
	// exporters; 3128-3130 Squid; 9901 Envoy's admin.
	if (n >= 9090 && n <= 9999) || (n >= 3128 && n <= 3130) {
		t.Errorf("default admin port %d clashes with a common tool's default", n)
	}
}

// TestDisabledServiceErrorsNameTheirSetting: an unknown service id is
// reported against the setting it came from.
func TestDisabledServiceErrorsNameTheirSetting(t *testing.T) {
	rules := t.TempDir() + "/rules.yaml"
	writeFile(t, rules, "disable_services: [no-such-service]\n")
	tests := []struct {
		name string
		env  map[string]string
		want string
	}{
		{"setting", map[string]string{"GATEWAY_DISABLED_SERVICES": "no-such-service"}, "GATEWAY_DISABLED_SERVICES: "},
		{"rules file", map[string]string{"GATEWAY_RULES_FILE": rules}, "GATEWAY_RULES_FILE " + rules + ": "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _, err := Load(tt.env)
			if err == nil {
				_, _, err = c.BuildPolicyFrom()
			}
			if err == nil || !strings.HasPrefix(err.Error(), tt.want) || !strings.Contains(err.Error(), "no-such-service") {
				t.Errorf("error = %v, want it to start with %q and name the service", err, tt.want)
			}
		})
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestTypedSettings: every setting parsed through its own type refuses a
// bad value naming the variable, and lists drop empty elements.
func TestTypedSettings(t *testing.T) {
	bad := []struct{ name, value, wantMsg string }{
		{"GATEWAY_MODE", "strict", "want enforce or audit"},
		{"GATEWAY_UNLISTED", "allow", "want deny or authenticated"},
		{"GATEWAY_ANONYMOUS", "all", "want listed or none"},
		{"GATEWAY_ACCESS_LOG_FORMAT", "JSON", "want json or squid"},
		{"GATEWAY_TUNNEL_COPY", "zero-copy", "want buffer or splice"},
		{"GATEWAY_PAC_DEFAULT", "SOCKS", "want DIRECT or PROXY"},
		{"GATEWAY_BLOB_SCOPE", "all", "want listed or wildcard"},
		{"GATEWAY_UNLISTED_PORTS", "80,0", `"0" is not a port`},
		{"GATEWAY_CLIENT_CIDRS", "10.0.0.0/8,not-a-net", "is not a CIDR prefix or address"},
		{"GATEWAY_GEOGRAPHIES", "GCC", "not a data location"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := Load(map[string]string{tt.name: tt.value})
			if err == nil || !strings.Contains(err.Error(), tt.name) || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("%s=%q: err = %v, want one naming %s and saying %q", tt.name, tt.value, err, tt.name, tt.wantMsg)
			}
		})
	}
	t.Run("lists drop empty elements", func(t *testing.T) {
		c, _, err := Load(map[string]string{"GATEWAY_UNLISTED_PORTS": "80, ,443,", "GATEWAY_CLIENT_CIDRS": "10.0.0.0/8,,",
			"GATEWAY_GEOGRAPHIES": "EU,,eu", "GATEWAY_PAC_DEFAULT": "proxy"})
		if err != nil {
			t.Fatal(err)
		}
		if got := ports(c.UnlistedPorts); !slices.Equal(got, []uint16{80, 443}) {
			t.Errorf("unlisted ports %v, want [80 443]", got)
		}
		if got := c.ClientNetworks(); len(got) != 1 || got[0].String() != "10.0.0.0/8" {
			t.Errorf("client networks %v, want [10.0.0.0/8]", got)
		}
		if got := c.Locations(); len(got) != 1 || got[0] != allowlist.EU {
			t.Errorf("data locations %v, want [EU]", got)
		}
		if c.PACDefault != "PROXY" {
			t.Errorf("PAC default %q, want the canonical PROXY", c.PACDefault)
		}
	})
	t.Run("an empty client list is refused", func(t *testing.T) {
		if _, _, err := Load(map[string]string{"GATEWAY_CLIENT_CIDRS": ","}); err == nil || !strings.Contains(err.Error(), "GATEWAY_CLIENT_CIDRS") {
			t.Errorf("err = %v, want GATEWAY_CLIENT_CIDRS empty", err)
		}
	})
}
