package allowlist

import (
	"errors"
	"net/url"
	"strings"
	"testing"
)

func TestParseAuthority(t *testing.T) {
	tests := []struct {
		name     string
		in       string
		wantHost string
		wantPort uint16
		wantErr  error
	}{
		{"plain", "winatp-gw-weu.microsoft.com:443", "winatp-gw-weu.microsoft.com", 443, nil},
		{"upper case", "WINATP-GW-WEU.Microsoft.COM:443", "winatp-gw-weu.microsoft.com", 443, nil},
		{"trailing dot", "winatp-gw-weu.microsoft.com.:443", "winatp-gw-weu.microsoft.com", 443, nil},
		{"two trailing dots", "winatp-gw-weu.microsoft.com..:443", "", 0, ErrBadTarget},
		{"empty label", "winatp-gw-weu..microsoft.com:443", "", 0, ErrBadTarget},
		{"leading dot", ".microsoft.com:443", "", 0, ErrBadTarget},
		{"idna unicode", "bücher.example:443", "xn--bcher-kva.example", 443, nil},
		{"idna fullwidth letters", "ｍｉｃｒｏｓｏｆｔ.com:443", "microsoft.com", 443, nil},
		{"punycode kept", "xn--bcher-kva.example:443", "xn--bcher-kva.example", 443, nil},
		{"bad punycode", "xn--zz-.example:443", "", 0, ErrBadTarget},
		{"cyrillic lookalike", "miсrosoft.com:443", "xn--mirosoft-gch.com", 443, nil},
		{"userinfo", "user@winatp-gw-weu.microsoft.com:443", "", 0, ErrBadTarget},
		{"userinfo with password", "a:b@winatp-gw-weu.microsoft.com:443", "", 0, ErrBadTarget},
		{"percent", "winatp%2dgw.microsoft.com:443", "", 0, ErrBadTarget},
		{"underscore", "a_b.microsoft.com:443", "", 0, ErrBadTarget},
		{"space", "a b.microsoft.com:443", "", 0, ErrBadTarget},
		{"backslash", "evil.com\\.microsoft.com:443", "", 0, ErrBadTarget},
		{"missing port", "winatp-gw-weu.microsoft.com", "", 0, ErrBadTarget},
		{"empty port", "winatp-gw-weu.microsoft.com:", "", 0, ErrBadTarget},
		{"port zero", "winatp-gw-weu.microsoft.com:0", "", 0, ErrBadTarget},
		{"port too big", "winatp-gw-weu.microsoft.com:65536", "", 0, ErrBadTarget},
		{"port plus", "winatp-gw-weu.microsoft.com:+443", "", 0, ErrBadTarget},
		{"port leading zero", "winatp-gw-weu.microsoft.com:0443", "", 0, ErrBadTarget},
		{"port non numeric", "winatp-gw-weu.microsoft.com:https", "", 0, ErrBadTarget},
		{"port max", "example.com:65535", "example.com", 65535, nil},
		{"hyphen start", "-a.microsoft.com:443", "", 0, ErrBadTarget},
		{"label too long", strings.Repeat("a", 64) + ".com:443", "", 0, ErrBadTarget},
		{"name too long", strings.Repeat("a.", 127) + "com:443", "", 0, ErrBadTarget},
		{"ipv4", "127.0.0.1:443", "127.0.0.1", 443, nil},
		{"ipv4 decimal", "2130706433:443", "", 0, ErrIPLiteral},
		{"ipv4 hex", "0x7f000001:443", "", 0, ErrIPLiteral},
		{"ipv4 hex dotted", "0x7f.0.0.1:443", "", 0, ErrIPLiteral},
		{"ipv4 octal", "0177.0.0.1:443", "", 0, ErrIPLiteral},
		{"ipv4 short", "127.1:443", "", 0, ErrIPLiteral},
		{"ipv6", "[::1]:443", "::1", 443, nil},
		{"ipv4 mapped ipv6", "[::ffff:127.0.0.1]:443", "::ffff:127.0.0.1", 443, nil},
		{"ipv6 zone", "[fe80::1%25eth0]:443", "", 0, ErrIPLiteral},
		{"ipv6 unbracketed", "::1:443", "", 0, ErrBadTarget},
		{"empty", ":443", "", 0, ErrBadTarget},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseAuthority(tt.in)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("ParseAuthority(%q) err = %v, want %v", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseAuthority(%q) err = %v", tt.in, err)
			}
			if got.Host != tt.wantHost || got.Port != tt.wantPort {
				t.Errorf("ParseAuthority(%q) = %s:%d, want %s:%d", tt.in, got.Host, got.Port, tt.wantHost, tt.wantPort)
			}
		})
	}
}

func TestParseURL(t *testing.T) {
	tests := []struct {
		name     string
		in       string
		wantHost string
		wantPort uint16
		wantPath string
		wantErr  error
	}{
		{"crl", "http://crl.microsoft.com/pki/crl/products/x.crl", "crl.microsoft.com", 80, "/pki/crl/products/x.crl", nil},
		{"explicit port", "http://crl.microsoft.com:8080/", "crl.microsoft.com", 8080, "/", nil},
		{"empty path", "http://crl.microsoft.com", "crl.microsoft.com", 80, "/", nil},
		{"dot segments", "http://www.microsoft.com/pkiops/crl/../../secret", "www.microsoft.com", 80, "/secret", nil},
		{"encoded dot segments", "http://www.microsoft.com/pkiops/crl/%2e%2e/%2e%2e/secret", "www.microsoft.com", 80, "/secret", nil},
		{"backslashes", "http://www.microsoft.com/pkiops/crl\\..\\..\\secret", "www.microsoft.com", 80, "/secret", nil},
		{"trailing slash kept", "http://www.microsoft.com/pkiops/crl/", "www.microsoft.com", 80, "/pkiops/crl/", nil},
		{"semicolon dotdot", "http://www.microsoft.com/pkiops/crl/..;/secret", "", 0, "", ErrBadTarget},
		{"userinfo", "http://u:p@crl.microsoft.com/", "", 0, "", ErrBadTarget},
		{"https scheme", "https://crl.microsoft.com/a", "crl.microsoft.com", 443, "/a", nil},
		{"https port", "https://crl.microsoft.com:8443/a", "crl.microsoft.com", 8443, "/a", nil},
		{"ftp scheme", "ftp://crl.microsoft.com/", "", 0, "", ErrBadTarget},
		{"bad port", "http://crl.microsoft.com:0/", "", 0, "", ErrBadTarget},
		{"ip", "http://127.0.0.1/", "127.0.0.1", 80, "/", nil},
		{"ipv6", "http://[::1]:8080/", "::1", 8080, "/", nil},
		{"ipv6 no port", "http://[::1]/", "::1", 80, "/", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, err := url.Parse(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			got, err := ParseURL(u)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("ParseURL(%q) err = %v, want %v", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseURL(%q) err = %v", tt.in, err)
			}
			if got.Host != tt.wantHost || got.Port != tt.wantPort || got.Path != tt.wantPath || !got.HasPath {
				t.Errorf("ParseURL(%q) = %s:%d %q, want %s:%d %q", tt.in, got.Host, got.Port, got.Path, tt.wantHost, tt.wantPort, tt.wantPath)
			}
		})
	}
}

func TestParseTarget(t *testing.T) {
	tests := []struct{ in, want string }{
		{"winatp-gw-weu.microsoft.com", "winatp-gw-weu.microsoft.com:443"},
		{"winatp-gw-weu.microsoft.com:8443", "winatp-gw-weu.microsoft.com:8443"},
		{"https://winatp-gw-weu.microsoft.com/test", "winatp-gw-weu.microsoft.com:443"},
		{"http://crl.microsoft.com/pki/crl/products/a.crl", "crl.microsoft.com:80"},
		{"[::1]", "[::1]:443"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseTarget(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			if got.HostPort() != tt.want {
				t.Errorf("ParseTarget(%q) = %s, want %s", tt.in, got.HostPort(), tt.want)
			}
		})
	}
}

// FuzzNormalizeHost checks that whatever a client sends, the normaliser
// returns either an error or a name that is stable (normalising it again gives
// itself) and made only of LDH characters.
func FuzzNormalizeHost(f *testing.F) {
	for _, s := range []string{"winatp-gw-weu.microsoft.com", "WINATP.microsoft.com.", "bücher.example",
		"xn--bcher-kva.example", "127.0.0.1", "[::1]", "0x7f.1", "a..b", "ｍｉｃｒｏｓｏｆｔ.com", "a_b.c",
		"evil.com\\.microsoft.com", "x.wdcp.microsoft.com%00", "[fe80::1%25eth0]"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		host, ip, err := NormalizeHost(in)
		if err != nil {
			return
		}
		if ip.IsValid() {
			if ip.String() != host {
				t.Fatalf("NormalizeHost(%q) ip %v host %q disagree", in, ip, host)
			}
			return
		}
		if !isLDH(host) || host == "" || len(host) > maxNameLen {
			t.Fatalf("NormalizeHost(%q) = %q: not a valid LDH name", in, host)
		}
		again, _, err := NormalizeHost(host)
		if err != nil || again != host {
			t.Fatalf("NormalizeHost(%q) = %q, but normalising that gives %q, %v", in, host, again, err)
		}
	})
}
