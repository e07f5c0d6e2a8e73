package clientconfig

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/text/encoding/unicode"
)

// The -update flag regenerates the golden files. Other test files of this
// package may register the same flag; init runs after every package-level
// variable of every file, so registering here only when it is missing cannot
// collide with a `var update = flag.Bool("update", ...)` elsewhere.
func init() {
	if flag.Lookup("update") == nil {
		flag.Bool("update", false, "rewrite golden files under testdata/")
	}
}

func ccUpdate() bool {
	f := flag.Lookup("update")
	return f != nil && f.Value.String() == "true"
}

var (
	ccFull = Config{
		Proxy:   "gw.example.net:3128",
		PACURL:  "http://pac.example.net/proxy.pac",
		Bypass:  []string{"<local>", "*.contoso.local", "10.0.0.5"},
		Offline: true,
	}
	ccMinimal = Config{Proxy: "gw.example.net:3128"}
	ccUndo    = Config{Proxy: "gw.example.net:3128", Undo: true}
)

func TestClientConfigGolden(t *testing.T) {
	cases := []struct {
		name string
		cfg  Config
	}{
		{"full", ccFull},
		{"minimal", ccMinimal},
		{"undo", ccUndo},
	}
	for _, c := range cases {
		for _, format := range []string{"cmd", "ps1", "reg"} {
			name := c.name + "." + format
			t.Run(name, func(t *testing.T) {
				got, err := c.cfg.Render(format)
				if err != nil {
					t.Fatal(err)
				}
				path := filepath.Join("testdata", "clientconfig", name)
				if ccUpdate() {
					if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
						t.Fatal(err)
					}
					if err := os.WriteFile(path, got, 0o644); err != nil {
						t.Fatal(err)
					}
				}
				want, err := os.ReadFile(path)
				if err != nil {
					t.Fatalf("%v (run go test -run ClientConfigGolden -update)", err)
				}
				if !bytes.Equal(got, want) {
					t.Errorf("%s differs from golden file (run with -update to regenerate):\n%s", name, ccFirstDiff(ccText(t, format, got), ccText(t, format, want)))
				}
			})
		}
	}
}

// ccText returns the output as UTF-8 text (reg files are decoded).
func ccText(t *testing.T, format string, b []byte) string {
	t.Helper()
	if format != "reg" {
		return string(b)
	}
	return ccDecodeReg(t, b)
}

func ccFirstDiff(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	for i := 0; i < len(g) || i < len(w); i++ {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl != wl {
			return "line " + strconv.Itoa(i+1) + ":\n got: " + strings.TrimRight(gl, "\r") + "\nwant: " + strings.TrimRight(wl, "\r")
		}
	}
	return "(line endings or encoding differ)"
}

// ccDecodeReg checks the BOM and decodes UTF-16LE to UTF-8 with x/text, an
// implementation independent of the encoder under test.
func ccDecodeReg(t *testing.T, b []byte) string {
	t.Helper()
	if len(b) < 2 || b[0] != 0xFF || b[1] != 0xFE {
		t.Fatalf("reg file does not start with the UTF-16LE BOM FF FE: % x", b[:min(len(b), 4)])
	}
	dec := unicode.UTF16(unicode.LittleEndian, unicode.IgnoreBOM).NewDecoder()
	out, err := dec.Bytes(b[2:])
	if err != nil {
		t.Fatalf("decoding UTF-16LE: %v", err)
	}
	return string(out)
}

// ccLines splits CRLF text, failing on bare LF or CR and on a missing final
// CRLF.
func ccLines(t *testing.T, name, s string) []string {
	t.Helper()
	if !strings.HasSuffix(s, "\r\n") {
		t.Errorf("%s: does not end with CRLF", name)
	}
	lines := strings.Split(strings.TrimSuffix(s, "\r\n"), "\r\n")
	for i, l := range lines {
		if strings.ContainsAny(l, "\r\n") {
			t.Errorf("%s: line %d has a bare CR or LF: %q", name, i+1, l)
		}
	}
	return lines
}

var (
	ccRegSection = regexp.MustCompile(`^\[HKEY_LOCAL_MACHINE(\\[^\\\[\]]+)+\]$`)
	ccRegValue   = regexp.MustCompile(`^"[^"\\]*(\\.[^"\\]*)*"=("([^"\\]|\\.)*"|dword:[0-9a-f]{8}|-)$`)
)

// ccParseReg is a strict .reg parser: every line is the header (first), a
// blank line, a comment, a section or a value inside a section. It returns
// section -> name -> raw data.
func ccParseReg(t *testing.T, name, text string) map[string]map[string]string {
	t.Helper()
	lines := ccLines(t, name, text)
	if lines[0] != "Windows Registry Editor Version 5.00" {
		t.Fatalf("%s: first line %q, want the version 5.00 header", name, lines[0])
	}
	if len(lines) < 2 || lines[1] != "" {
		t.Errorf("%s: header not followed by a blank line", name)
	}
	out := map[string]map[string]string{}
	section := ""
	for i, l := range lines[1:] {
		n := i + 2
		switch {
		case l == "", strings.HasPrefix(l, ";"):
		case strings.HasPrefix(l, "["):
			if !ccRegSection.MatchString(l) {
				t.Errorf("%s:%d: bad section %q", name, n, l)
			}
			section = l[1 : len(l)-1]
			if out[section] == nil {
				out[section] = map[string]string{}
			}
		case strings.HasPrefix(l, `"`):
			if !ccRegValue.MatchString(l) {
				t.Errorf("%s:%d: bad value line %q", name, n, l)
				continue
			}
			if section == "" {
				t.Errorf("%s:%d: value outside a section", name, n)
				continue
			}
			eq := strings.Index(l, `"=`) // names never contain `"=` unescaped
			out[section][l[1:eq]] = l[eq+2:]
		default:
			t.Errorf("%s:%d: not a header, section, value, comment or blank line: %q", name, n, l)
		}
	}
	return out
}

func TestClientConfigRegSyntax(t *testing.T) {
	const (
		dc  = `HKEY_LOCAL_MACHINE\SOFTWARE\Policies\Microsoft\Windows\DataCollection`
		atp = `HKEY_LOCAL_MACHINE\SOFTWARE\Policies\Microsoft\Windows Advanced Threat Protection`
		def = `HKEY_LOCAL_MACHINE\SOFTWARE\Policies\Microsoft\Windows Defender`
	)
	cases := []struct {
		name string
		cfg  Config
		want map[string]map[string]string
	}{
		{"full", ccFull, map[string]map[string]string{
			dc:  {"TelemetryProxyServer": `"gw.example.net:3128"`, "DisableEnterpriseAuthProxy": "dword:00000001"},
			atp: {"PreferStaticProxyForHttpRequest": "dword:00000001"},
			def: {
				"ProxyServer": `"http://gw.example.net:3128"`, "ProxyPacUrl": `"http://pac.example.net/proxy.pac"`,
				"ProxyBypass": `"<local>;*.contoso.local;10.0.0.5"`,
			},
		}},
		{"minimal", ccMinimal, map[string]map[string]string{
			dc:  {"TelemetryProxyServer": `"gw.example.net:3128"`, "DisableEnterpriseAuthProxy": "dword:00000001"},
			def: {"ProxyServer": `"http://gw.example.net:3128"`},
		}},
		{"undo", ccUndo, map[string]map[string]string{
			dc:  {"TelemetryProxyServer": "-", "DisableEnterpriseAuthProxy": "-"},
			atp: {"PreferStaticProxyForHttpRequest": "-"},
			def: {"ProxyServer": "-", "ProxyPacUrl": "-", "ProxyBypass": "-"},
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b, err := c.cfg.Render("reg")
			if err != nil {
				t.Fatal(err)
			}
			if len(b)%2 != 0 {
				t.Fatalf("odd length %d for UTF-16", len(b))
			}
			got := ccParseReg(t, c.name+".reg", ccDecodeReg(t, b))
			if len(got) != len(c.want) {
				t.Errorf("sections %v, want %v", got, c.want)
			}
			for sec, vals := range c.want {
				for k, v := range vals {
					if got[sec][k] != v {
						t.Errorf("[%s] %q = %q, want %q", sec, k, got[sec][k], v)
					}
				}
				if len(got[sec]) != len(vals) {
					t.Errorf("[%s] = %v, want %v", sec, got[sec], vals)
				}
			}
		})
	}
}

// TestClientConfigRegEscape covers the .reg string escaping and encoding
// helpers directly: validation keeps backslashes and quotes out of values,
// so the rendered files never exercise them.
func TestClientConfigRegEscape(t *testing.T) {
	if got, want := ccRegString(`C:\a "b"`), `"C:\\a \"b\""`; got != want {
		t.Errorf("ccRegString = %s, want %s", got, want)
	}
	if !ccRegValue.MatchString(ccRegString(`x\"y`) + "=" + ccRegString(`\\srv\share "q"`)) {
		t.Error("escaped value does not match the value syntax")
	}
	if got := ccUTF16LE([]byte("A\r\n€")); !bytes.Equal(got, []byte{0xFF, 0xFE, 'A', 0, '\r', 0, '\n', 0, 0xAC, 0x20}) {
		t.Errorf("ccUTF16LE = % x", got)
	}
}

func TestClientConfigCRLFAndASCII(t *testing.T) {
	for _, cfg := range []Config{ccFull, ccMinimal, ccUndo} {
		for _, format := range []string{"cmd", "ps1", "reg"} {
			b, err := cfg.Render(format)
			if err != nil {
				t.Fatal(err)
			}
			text := ccText(t, format, b)
			name := format
			if cfg.Undo {
				name = "undo " + format
			}
			for i, l := range ccLines(t, name, text) {
				for j := 0; j < len(l); j++ {
					if l[j] < 0x20 || l[j] > 0x7e {
						t.Errorf("%s: line %d: non-printable or non-ASCII byte %#x", name, i+1, l[j])
						break
					}
				}
			}
			if !strings.Contains(text, ccSourceTitle) || !strings.Contains(text, ccSourceURL) {
				t.Errorf("%s: header lacks the Microsoft source", name)
			}
			if !strings.Contains(text, `Generated by "gateway client-config"`) || !strings.Contains(text, "gw.example.net:3128") {
				t.Errorf("%s: header lacks generator or proxy", name)
			}
		}
	}
}

// TestClientConfigCmdSafety checks the batch-specific rules: comments carry
// no character cmd could act on, the only single % is the intentional
// %ProgramFiles% of the rem lines, echo lines double it, and every reg add
// is followed by an errorlevel check.
func TestClientConfigCmdSafety(t *testing.T) {
	for _, cfg := range []Config{ccFull, ccMinimal, ccUndo} {
		b, err := cfg.Render("cmd")
		if err != nil {
			t.Fatal(err)
		}
		lines := ccLines(t, "cmd", string(b))
		if lines[0] != "@echo off" {
			t.Errorf("first line %q, want @echo off", lines[0])
		}
		sawEcho := false
		for i, l := range lines {
			switch {
			case l == "rem" || strings.HasPrefix(l, "rem "):
				if strings.ContainsAny(l, "&|<>^") {
					t.Errorf("line %d: rem line with a cmd metacharacter: %q", i+1, l)
				}
				if strings.Contains(strings.ReplaceAll(l, "%ProgramFiles%", ""), "%") {
					t.Errorf("line %d: stray %% in rem line: %q", i+1, l)
				}
			default:
				rest := strings.ReplaceAll(l, "%%", "")
				if strings.Contains(rest, "%") {
					t.Errorf("line %d: single %% outside a rem line: %q", i+1, l)
				}
				if strings.HasPrefix(l, "echo ") && strings.Contains(l, "MpCmdRun") {
					sawEcho = true
					if !strings.Contains(l, `"%%ProgramFiles%%\Windows Defender\MpCmdRun.exe" -ValidateMapsConnection`) {
						t.Errorf("line %d: MpCmdRun echo not doubled: %q", i+1, l)
					}
				}
			}
			if strings.HasPrefix(l, "reg add ") || strings.HasPrefix(l, "netsh winhttp set") || strings.HasPrefix(l, "netsh winhttp reset") ||
				strings.HasPrefix(strings.TrimSpace(l), "reg delete ") {
				if i+1 >= len(lines) || strings.TrimSpace(lines[i+1]) != "if errorlevel 1 (" {
					t.Errorf("line %d: %q not followed by an errorlevel check", i+1, l)
				} else if !strings.Contains(lines[i+2], "ERROR: step failed: ") || strings.TrimSpace(lines[i+3]) != "exit /b 1" {
					t.Errorf("line %d: errorlevel check does not name the step and exit 1", i+1)
				}
			}
		}
		if !sawEcho {
			t.Error("no echo line with the MpCmdRun verification")
		}
		if !bytes.Contains(b, []byte("rem   \"%ProgramFiles%\\Windows Defender\\MpCmdRun.exe\" -ValidateMapsConnection\r\n")) {
			t.Error("no rem line with the MpCmdRun verification")
		}
	}
}

func TestClientConfigContent(t *testing.T) {
	render := func(c Config, f string) string {
		t.Helper()
		b, err := c.Render(f)
		if err != nil {
			t.Fatal(err)
		}
		if f == "reg" {
			return ccDecodeReg(t, b)
		}
		return string(b)
	}
	checks := []struct {
		cfg    Config
		format string
		want   []string
		not    []string
	}{
		{ccFull, "cmd", []string{
			`reg add "HKLM\SOFTWARE\Policies\Microsoft\Windows\DataCollection" /v TelemetryProxyServer /t REG_SZ /d "gw.example.net:3128" /f`,
			`reg add "HKLM\SOFTWARE\Policies\Microsoft\Windows\DataCollection" /v DisableEnterpriseAuthProxy /t REG_DWORD /d 1 /f`,
			`reg add "HKLM\SOFTWARE\Policies\Microsoft\Windows Advanced Threat Protection" /v PreferStaticProxyForHttpRequest /t REG_DWORD /d 1 /f`,
			`reg add "HKLM\SOFTWARE\Policies\Microsoft\Windows Defender" /v ProxyServer /t REG_SZ /d "http://gw.example.net:3128" /f`,
			`/v ProxyPacUrl /t REG_SZ /d "http://pac.example.net/proxy.pac" /f`,
			`/v ProxyBypass /t REG_SZ /d "<local>;*.contoso.local;10.0.0.5" /f`,
			"\r\n" + `netsh winhttp set proxy proxy-server="gw.example.net:3128" bypass-list="<local>;*.contoso.local;10.0.0.5"` + "\r\n",
			"setlocal", "rem   MDEClientAnalyzer.cmd", "rem   netsh winhttp show proxy",
		}, nil},
		{ccMinimal, "cmd", []string{"\r\n" + `netsh winhttp set proxy proxy-server="gw.example.net:3128"` + "\r\n"},
			[]string{"PreferStaticProxyForHttpRequest", "/v ProxyPacUrl", "/v ProxyBypass", "bypass-list"}},
		{ccFull, "ps1", []string{
			"#Requires -RunAsAdministrator\r\n", "$ErrorActionPreference = 'Stop'\r\n",
			`if (-not (Test-Path -LiteralPath 'HKLM:\SOFTWARE\Policies\Microsoft\Windows\DataCollection')) { New-Item -Path 'HKLM:\SOFTWARE\Policies\Microsoft\Windows\DataCollection' -Force | Out-Null }`,
			`New-ItemProperty -Path 'HKLM:\SOFTWARE\Policies\Microsoft\Windows\DataCollection' -Name 'TelemetryProxyServer' -PropertyType String -Value 'gw.example.net:3128' -Force | Out-Null`,
			`-Name 'DisableEnterpriseAuthProxy' -PropertyType DWord -Value 1 -Force | Out-Null`,
			`-Name 'PreferStaticProxyForHttpRequest' -PropertyType DWord -Value 1 -Force | Out-Null`,
			`Set-MpPreference -ProxyServer 'http://gw.example.net:3128' -ProxyPacUrl 'http://pac.example.net/proxy.pac' -ProxyBypass '<local>','*.contoso.local','10.0.0.5'`,
			`-Name 'ProxyBypass' -PropertyType String -Value '<local>;*.contoso.local;10.0.0.5' -Force | Out-Null`,
			`& netsh.exe winhttp set proxy 'proxy-server=gw.example.net:3128' 'bypass-list=<local>;*.contoso.local;10.0.0.5'`,
			`& "$env:ProgramFiles\Windows Defender\MpCmdRun.exe" -ValidateMapsConnection`,
			"if ($LASTEXITCODE -ne 0)",
		}, nil},
		{ccMinimal, "ps1", []string{"Set-MpPreference -ProxyServer 'http://gw.example.net:3128'\r\n",
			"& netsh.exe winhttp set proxy 'proxy-server=gw.example.net:3128'\r\n"},
			[]string{"PreferStaticProxyForHttpRequest", "-ProxyPacUrl '", "bypass-list"}},
		{ccUndo, "cmd", []string{
			`reg delete "HKLM\SOFTWARE\Policies\Microsoft\Windows\DataCollection" /v TelemetryProxyServer /f`,
			`reg delete "HKLM\SOFTWARE\Policies\Microsoft\Windows\DataCollection" /v DisableEnterpriseAuthProxy /f`,
			`reg delete "HKLM\SOFTWARE\Policies\Microsoft\Windows Advanced Threat Protection" /v PreferStaticProxyForHttpRequest /f`,
			`reg delete "HKLM\SOFTWARE\Policies\Microsoft\Windows Defender" /v ProxyServer /f`,
			`/v ProxyPacUrl /f`, `/v ProxyBypass /f`,
			"\r\nnetsh winhttp reset proxy\r\n",
		}, []string{"reg add", "winhttp set proxy"}},
		{ccUndo, "ps1", []string{
			`Remove-ItemProperty -Path 'HKLM:\SOFTWARE\Policies\Microsoft\Windows\DataCollection' -Name 'TelemetryProxyServer'`,
			`Remove-ItemProperty -Path 'HKLM:\SOFTWARE\Policies\Microsoft\Windows Advanced Threat Protection' -Name 'PreferStaticProxyForHttpRequest'`,
			`-Name 'ProxyBypass'`,
			"Remove-MpPreference -ProxyServer -ProxyPacUrl -ProxyBypass",
			"& netsh.exe winhttp reset proxy",
		}, []string{"New-ItemProperty", "Set-MpPreference -Proxy"}},
		{ccFull, "reg", []string{
			`;   netsh winhttp set proxy proxy-server="gw.example.net:3128" bypass-list="<local>;*.contoso.local;10.0.0.5"`,
			`;   "%ProgramFiles%\Windows Defender\MpCmdRun.exe" -ValidateMapsConnection`,
			"REGEDIT4",
		}, nil},
		{ccUndo, "reg", []string{";   netsh winhttp reset proxy"}, []string{"=dword", `="`}},
	}
	for _, c := range checks {
		name := c.format
		if c.cfg.Undo {
			name = "undo." + c.format
		} else if c.cfg.Offline {
			name = "full." + c.format
		} else {
			name = "minimal." + c.format
		}
		got := render(c.cfg, c.format)
		for _, w := range c.want {
			if !strings.Contains(got, w) {
				t.Errorf("%s lacks %q", name, w)
			}
		}
		for _, n := range c.not {
			if strings.Contains(got, n) {
				t.Errorf("%s contains %q", name, n)
			}
		}
	}
}

func TestClientConfigIPv6(t *testing.T) {
	cfg := Config{Proxy: "[2001:DB8:0::1]:3128", Bypass: []string{"[2001:db8::5]"}}
	want := map[string][]string{
		"cmd": {
			`/v TelemetryProxyServer /t REG_SZ /d "[2001:db8::1]:3128" /f`,
			`/v ProxyServer /t REG_SZ /d "http://[2001:db8::1]:3128" /f`,
			`netsh winhttp set proxy proxy-server="[2001:db8::1]:3128" bypass-list="[2001:db8::5]"`,
			"IPv6-only",
		},
		"ps1": {
			`-Name 'TelemetryProxyServer' -PropertyType String -Value '[2001:db8::1]:3128'`,
			`Set-MpPreference -ProxyServer 'http://[2001:db8::1]:3128'`,
			`& netsh.exe winhttp set proxy 'proxy-server=[2001:db8::1]:3128'`,
		},
		"reg": {`"TelemetryProxyServer"="[2001:db8::1]:3128"`, `"ProxyServer"="http://[2001:db8::1]:3128"`},
	}
	for format, ws := range want {
		b, err := cfg.Render(format)
		if err != nil {
			t.Fatal(err)
		}
		got := ccText(t, format, b)
		if format == "reg" {
			ccParseReg(t, "ipv6.reg", got)
		}
		for _, w := range ws {
			if !strings.Contains(got, w) {
				t.Errorf("%s lacks %q", format, w)
			}
		}
	}
}

func TestClientConfigRenderValidation(t *testing.T) {
	ok := Config{Proxy: "gw:3128"}
	with := func(f func(*Config)) Config {
		c := ok
		f(&c)
		return c
	}
	cases := []struct {
		name  string
		cfg   Config
		field string
	}{
		{"empty proxy", Config{}, "--proxy"},
		{"no port", Config{Proxy: "gw"}, "--proxy"},
		{"empty port", Config{Proxy: "gw:"}, "--proxy"},
		{"no host", Config{Proxy: ":3128"}, "--proxy"},
		{"port 0", Config{Proxy: "gw:0"}, "--proxy"},
		{"port too big", Config{Proxy: "gw:65536"}, "--proxy"},
		{"port negative", Config{Proxy: "gw:-1"}, "--proxy"},
		{"port not numeric", Config{Proxy: "gw:http"}, "--proxy"},
		{"port leading zero", Config{Proxy: "gw:03128"}, "--proxy"},
		{"scheme", Config{Proxy: "http://gw:3128"}, "--proxy"},
		{"path", Config{Proxy: "gw:3128/x"}, "--proxy"},
		{"userinfo", Config{Proxy: "u@gw:3128"}, "--proxy"},
		{"unbracketed ipv6", Config{Proxy: "2001:db8::1:3128"}, "--proxy"},
		{"bracketed ipv4", Config{Proxy: "[10.0.0.1]:3128"}, "--proxy"},
		{"ipv6 no port", Config{Proxy: "[2001:db8::1]"}, "--proxy"},
		{"ipv6 zone", Config{Proxy: "[fe80::1%eth0]:3128"}, "--proxy"},
		{"bad ipv4", Config{Proxy: "10.0.0.256:3128"}, "--proxy"},
		{"short ipv4", Config{Proxy: "10.0.1:3128"}, "--proxy"},
		{"bad label", Config{Proxy: "-gw.example:3128"}, "--proxy"},
		{"empty label", Config{Proxy: "gw..example:3128"}, "--proxy"},
		{"space", Config{Proxy: "gw :3128"}, "--proxy"},
		{"cmd injection", Config{Proxy: `gw:3128" & calc`}, "--proxy"},
		{"ampersand", Config{Proxy: "gw:3128&calc"}, "--proxy"},
		{"pipe", Config{Proxy: "gw|x:3128"}, "--proxy"},
		{"percent var", Config{Proxy: "%PATH%:3128"}, "--proxy"},
		{"caret", Config{Proxy: "gw^:3128"}, "--proxy"},
		{"redirect", Config{Proxy: "gw>x:3128"}, "--proxy"},
		{"newline", Config{Proxy: "gw:3128\nreg delete HKLM"}, "--proxy"},
		{"carriage return", Config{Proxy: "gw:3128\r"}, "--proxy"},
		{"backtick", Config{Proxy: "gw`:3128"}, "--proxy"},
		{"dollar", Config{Proxy: "$(calc):3128"}, "--proxy"},
		{"single quote", Config{Proxy: "gw':3128"}, "--proxy"},
		{"non-ascii", Config{Proxy: "gäteway:3128"}, "--proxy"},
		{"pac not url", with(func(c *Config) { c.PACURL = "pac.example.net/proxy.pac" }), "--pac-url"},
		{"pac ftp", with(func(c *Config) { c.PACURL = "ftp://pac.example.net/proxy.pac" }), "--pac-url"},
		{"pac no host", with(func(c *Config) { c.PACURL = "http:///proxy.pac" }), "--pac-url"},
		{"pac userinfo", with(func(c *Config) { c.PACURL = "http://u:p@pac.example.net/x.pac" }), "--pac-url"},
		{"pac injection", with(func(c *Config) { c.PACURL = `http://pac/x.pac" & calc & "` }), "--pac-url"},
		{"pac percent", with(func(c *Config) { c.PACURL = "http://pac/%PATH%.pac" }), "--pac-url"},
		{"pac query ampersand", with(func(c *Config) { c.PACURL = "http://pac/x.pac?a=1&b=2" }), "--pac-url"},
		{"pac dollar", with(func(c *Config) { c.PACURL = "http://pac/$env:x" }), "--pac-url"},
		{"pac newline", with(func(c *Config) { c.PACURL = "http://pac/x.pac\r\nnetsh" }), "--pac-url"},
		{"pac quote", with(func(c *Config) { c.PACURL = "http://pac/x'.pac" }), "--pac-url"},
		{"bypass quote", with(func(c *Config) { c.Bypass = []string{"x", `a" & calc`} }), ccFieldBypass(`a" & calc`)},
		{"bypass quote in a list", with(func(c *Config) { c.Bypass = []string{`x;a" & calc`} }), ccFieldBypass(`a" & calc`)},
		{"bypass percent", with(func(c *Config) { c.Bypass = []string{"%PATH%"} }), ccFieldBypass("%PATH%")},
		{"bypass other token", with(func(c *Config) { c.Bypass = []string{"<localx>"} }), ccFieldBypass("<localx>")},
		{"bypass loopback token", with(func(c *Config) { c.Bypass = []string{"<local>;<-loopback>"} }), ccFieldBypass("<-loopback>")},
		{"bypass redirect", with(func(c *Config) { c.Bypass = []string{"a>b"} }), ccFieldBypass("a>b")},
		{"bypass pipe", with(func(c *Config) { c.Bypass = []string{"<local>;a|b"} }), ccFieldBypass("a|b")},
		{"bypass newline", with(func(c *Config) { c.Bypass = []string{"a\nb"} }), ccFieldBypass("a\nb")},
		{"bypass backtick", with(func(c *Config) { c.Bypass = []string{"a`b"} }), ccFieldBypass("a`b")},
		{"bypass space inside", with(func(c *Config) { c.Bypass = []string{"a b"} }), ccFieldBypass("a b")},
		{"bypass tab inside", with(func(c *Config) { c.Bypass = []string{"a\tb"} }), ccFieldBypass("a\tb")},
		{"bypass scheme", with(func(c *Config) { c.Bypass = []string{"http://x.example"} }), ccFieldBypass("http://x.example")},
		{"bypass everything", with(func(c *Config) { c.Bypass = []string{"<local>;*"} }), ccFieldBypass("*")},
		{"bypass every dot", with(func(c *Config) { c.Bypass = []string{"*.*"} }), ccFieldBypass("*.*")},
		{"bypass caret", with(func(c *Config) { c.Bypass = []string{"a^b"} }), ccFieldBypass("a^b")},
		{"unknown format", Config{Proxy: "gw:3128"}, "--format"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, format := range []string{"cmd", "ps1", "reg"} {
				f := format
				if c.name == "unknown format" {
					f = "bat"
				}
				b, err := c.cfg.Render(f)
				if err == nil {
					t.Fatalf("%s: no error, rendered:\n%s", format, b)
				}
				var ce *Error
				if !errors.As(err, &ce) {
					t.Fatalf("%s: error %T %v, want *Error", format, err, err)
				}
				if ce.Field != c.field {
					t.Errorf("%s: field %q, want %q (%v)", format, ce.Field, c.field, err)
				}
				if got := err.Error(); !strings.HasPrefix(got, c.field+": ") || strings.Contains(got, "client-config") {
					t.Errorf("%s: error %q: want it to start with %q, without a client-config prefix", format, got, c.field+": ")
				}
			}
		})
	}
}

func TestClientConfigRenderValid(t *testing.T) {
	for _, c := range []Config{
		{Proxy: "gw:1"},
		{Proxy: "gw:65535"},
		{Proxy: "10.0.0.6:8080"},
		{Proxy: "GW-01.corp_x.example.:3128"},
		{Proxy: "[::1]:3128"},
		{Proxy: "gw:3128", PACURL: "https://pac.example.net:8443/p/proxy.pac?v=2"},
		{Proxy: "gw:3128", Bypass: []string{"<LOCAL>", "*.x", "10.*", "[2001:db8::1]", "host:8080"}},
		{Proxy: "gw:3128", Bypass: []string{"a.example", ""}},
		{Proxy: "gw:3128", Bypass: []string{"a;b", "c,d", " e ; f ,"}},
	} {
		for _, format := range []string{"cmd", "ps1", "reg"} {
			if _, err := c.Render(format); err != nil {
				t.Errorf("%+v %s: %v", c, format, err)
			}
		}
	}
}

// TestClientConfigBypassForms renders the bypass lists WinHTTP takes in
// each format and checks the exact lines that carry them.
func TestClientConfigBypassForms(t *testing.T) {
	const def = `HKLM\SOFTWARE\Policies\Microsoft\Windows Defender`
	tests := []struct {
		name   string
		bypass string
		list   string   // entries joined with ';', as every format writes them
		ps     []string // the entries as Set-MpPreference gets them
	}{
		{"local and wildcard", "<local>;*.contoso.local", "<local>;*.contoso.local", []string{"<local>", "*.contoso.local"}},
		{"commas and spaces", " <local> , *.contoso.local ,10.*", "<local>;*.contoso.local;10.*", []string{"<local>", "*.contoso.local", "10.*"}},
		{"mixed separators, trailing", "*.contoso.local,10.*;", "*.contoso.local;10.*", []string{"*.contoso.local", "10.*"}},
		{"addresses and ports", "10.0.0.5; [2001:db8::5] ;host.contoso.local:8080", "10.0.0.5;[2001:db8::5];host.contoso.local:8080",
			[]string{"10.0.0.5", "[2001:db8::5]", "host.contoso.local:8080"}},
		{"token in capitals", "<LOCAL>", "<LOCAL>", []string{"<LOCAL>"}},
	}
	for _, tt := range tests {
		cfg := Config{Proxy: "gw.example.net:3128", Bypass: []string{tt.bypass}}
		psList := make([]string, len(tt.ps))
		for i, e := range tt.ps {
			psList[i] = "'" + e + "'"
		}
		want := map[string][]string{
			"cmd": {
				`reg add "` + def + `" /v ProxyBypass /t REG_SZ /d "` + tt.list + `" /f >nul`,
				`netsh winhttp set proxy proxy-server="gw.example.net:3128" bypass-list="` + tt.list + `"`,
			},
			"ps1": {
				`    Set-MpPreference -ProxyServer 'http://gw.example.net:3128' -ProxyBypass ` + strings.Join(psList, ","),
				`New-ItemProperty -Path 'HKLM:\SOFTWARE\Policies\Microsoft\Windows Defender' -Name 'ProxyBypass' -PropertyType String -Value '` + tt.list + `' -Force | Out-Null`,
				`# Same as: netsh winhttp set proxy proxy-server="gw.example.net:3128" bypass-list="` + tt.list + `"`,
				`& netsh.exe winhttp set proxy 'proxy-server=gw.example.net:3128' 'bypass-list=` + tt.list + `'`,
			},
			"reg": {
				`"ProxyBypass"="` + tt.list + `"`,
				`;   netsh winhttp set proxy proxy-server="gw.example.net:3128" bypass-list="` + tt.list + `"`,
			},
		}
		for _, format := range []string{"cmd", "ps1", "reg"} {
			t.Run(tt.name+"/"+format, func(t *testing.T) {
				b, err := cfg.Render(format)
				if err != nil {
					t.Fatalf("Render(%q) with --bypass %q: %v", format, tt.bypass, err)
				}
				text := ccText(t, format, b)
				lines := ccLines(t, format, text)
				for _, w := range want[format] {
					if !slices.Contains(lines, w) {
						t.Errorf("no line\n  %s\nin:\n%s", w, text)
					}
				}
				if format == "reg" {
					ccParseReg(t, tt.name+".reg", text)
				}
				if format == "cmd" {
					// cmd acts on < > ; , outside double quotes only: every
					// character of the list must be inside them.
					for _, l := range lines {
						if !strings.Contains(l, tt.list) {
							continue
						}
						if out := ccOutsideQuotes(l); strings.ContainsAny(out, "<;,*") {
							t.Errorf("cmd line %q: %q outside double quotes", l, out)
						}
					}
				}
			})
		}
	}
}

// ccOutsideQuotes returns the parts of a cmd line outside double quotes.
func ccOutsideQuotes(l string) string {
	var b strings.Builder
	in := false
	for i := 0; i < len(l); i++ {
		switch {
		case l[i] == '"':
			in = !in
		case !in:
			b.WriteByte(l[i])
		}
	}
	return b.String()
}

// TestClientConfigWinHTTPWarning checks that every apply script says, where
// an administrator reads it, that the WinHTTP proxy is machine-wide, and
// that cmd and ps1 say it again when they have set it.
func TestClientConfigWinHTTPWarning(t *testing.T) {
	tests := []struct {
		format, prefix, notice string
	}{
		{"cmd", "rem ", "echo " + ccWinHTTPNotice},
		{"ps1", "# ", "Write-Warning '" + ccWinHTTPNotice + "'"},
		{"reg", "; ", ""},
	}
	for _, tt := range tests {
		t.Run(tt.format, func(t *testing.T) {
			b, err := ccFull.Render(tt.format)
			if err != nil {
				t.Fatal(err)
			}
			lines := ccLines(t, tt.format, ccText(t, tt.format, b))
			// The warning is a block of consecutive comment lines.
			first := slices.Index(lines, tt.prefix+ccWinHTTPWarning[0])
			if first < 0 {
				t.Fatalf("no warning line %q", tt.prefix+ccWinHTTPWarning[0])
			}
			for i, w := range ccWinHTTPWarning {
				if got := lines[first+i]; got != tt.prefix+w {
					t.Errorf("warning line %d: got %q, want %q", i+1, got, tt.prefix+w)
				}
			}
			netsh := slices.IndexFunc(lines, func(l string) bool { return strings.Contains(l, "winhttp set proxy proxy-server=") })
			if first > netsh {
				t.Errorf("the warning (line %d) comes after the netsh command (line %d)", first+1, netsh+1)
			}
			if !slices.Contains(lines, tt.prefix+ccWinHTTPPointer) {
				t.Errorf("no pointer %q beside the netsh command", tt.prefix+ccWinHTTPPointer)
			}
			if tt.notice != "" && !slices.Contains(lines, tt.notice) {
				t.Errorf("no run-time notice %q", tt.notice)
			}
			undo, err := ccUndo.Render(tt.format)
			if err != nil {
				t.Fatal(err)
			}
			if u := ccText(t, tt.format, undo); strings.Contains(u, "machine-wide") {
				t.Errorf("the undo script warns about a proxy it removes")
			}
		})
	}
	for _, w := range ccWinHTTPWarning {
		if strings.ContainsAny(w, "<>&|^%!") {
			t.Errorf("warning line %q has a character cmd acts on", w)
		}
	}
	if strings.ContainsAny(ccWinHTTPNotice, "<>&|^%!()'") {
		t.Errorf("notice %q has a character cmd or a single-quoted PowerShell string acts on", ccWinHTTPNotice)
	}
}

func TestSplitBypass(t *testing.T) {
	tests := []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"<local>", []string{"<local>"}},
		{"<local>;*.contoso.local", []string{"<local>", "*.contoso.local"}},
		{"a,b;c", []string{"a", "b", "c"}},
		{" a ;\tb , c ", []string{"a", "b", "c"}},
		{";;a;;", []string{"a"}},
		{"a b", []string{"a b"}}, // one entry, which validation refuses
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			if got := SplitBypass(tt.in); !slices.Equal(got, tt.want) {
				t.Errorf("SplitBypass(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}
