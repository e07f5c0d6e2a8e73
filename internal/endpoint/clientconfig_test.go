package endpoint

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"regexp"
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
	ccFull = ClientConfig{
		Proxy:   "gw.example.net:3128",
		PACURL:  "http://pac.example.net/proxy.pac",
		Bypass:  []string{"<local>", "*.contoso.local", "10.0.0.5"},
		Offline: true,
	}
	ccMinimal = ClientConfig{Proxy: "gw.example.net:3128"}
	ccUndo    = ClientConfig{Proxy: "gw.example.net:3128", Undo: true}
)

func TestClientConfigGolden(t *testing.T) {
	cases := []struct {
		name string
		cfg  ClientConfig
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
		cfg  ClientConfig
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
	for _, cfg := range []ClientConfig{ccFull, ccMinimal, ccUndo} {
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
	for _, cfg := range []ClientConfig{ccFull, ccMinimal, ccUndo} {
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
	render := func(c ClientConfig, f string) string {
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
		cfg    ClientConfig
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
	cfg := ClientConfig{Proxy: "[2001:DB8:0::1]:3128", Bypass: []string{"[2001:db8::5]"}}
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
	ok := ClientConfig{Proxy: "gw:3128"}
	with := func(f func(*ClientConfig)) ClientConfig {
		c := ok
		f(&c)
		return c
	}
	cases := []struct {
		name  string
		cfg   ClientConfig
		field string
	}{
		{"empty proxy", ClientConfig{}, "Proxy"},
		{"no port", ClientConfig{Proxy: "gw"}, "Proxy"},
		{"empty port", ClientConfig{Proxy: "gw:"}, "Proxy"},
		{"no host", ClientConfig{Proxy: ":3128"}, "Proxy"},
		{"port 0", ClientConfig{Proxy: "gw:0"}, "Proxy"},
		{"port too big", ClientConfig{Proxy: "gw:65536"}, "Proxy"},
		{"port negative", ClientConfig{Proxy: "gw:-1"}, "Proxy"},
		{"port not numeric", ClientConfig{Proxy: "gw:http"}, "Proxy"},
		{"port leading zero", ClientConfig{Proxy: "gw:03128"}, "Proxy"},
		{"scheme", ClientConfig{Proxy: "http://gw:3128"}, "Proxy"},
		{"path", ClientConfig{Proxy: "gw:3128/x"}, "Proxy"},
		{"userinfo", ClientConfig{Proxy: "u@gw:3128"}, "Proxy"},
		{"unbracketed ipv6", ClientConfig{Proxy: "2001:db8::1:3128"}, "Proxy"},
		{"bracketed ipv4", ClientConfig{Proxy: "[10.0.0.1]:3128"}, "Proxy"},
		{"ipv6 no port", ClientConfig{Proxy: "[2001:db8::1]"}, "Proxy"},
		{"ipv6 zone", ClientConfig{Proxy: "[fe80::1%eth0]:3128"}, "Proxy"},
		{"bad ipv4", ClientConfig{Proxy: "10.0.0.256:3128"}, "Proxy"},
		{"short ipv4", ClientConfig{Proxy: "10.0.1:3128"}, "Proxy"},
		{"bad label", ClientConfig{Proxy: "-gw.example:3128"}, "Proxy"},
		{"empty label", ClientConfig{Proxy: "gw..example:3128"}, "Proxy"},
		{"space", ClientConfig{Proxy: "gw :3128"}, "Proxy"},
		{"cmd injection", ClientConfig{Proxy: `gw:3128" & calc`}, "Proxy"},
		{"ampersand", ClientConfig{Proxy: "gw:3128&calc"}, "Proxy"},
		{"pipe", ClientConfig{Proxy: "gw|x:3128"}, "Proxy"},
		{"percent var", ClientConfig{Proxy: "%PATH%:3128"}, "Proxy"},
		{"caret", ClientConfig{Proxy: "gw^:3128"}, "Proxy"},
		{"redirect", ClientConfig{Proxy: "gw>x:3128"}, "Proxy"},
		{"newline", ClientConfig{Proxy: "gw:3128\nreg delete HKLM"}, "Proxy"},
		{"carriage return", ClientConfig{Proxy: "gw:3128\r"}, "Proxy"},
		{"backtick", ClientConfig{Proxy: "gw`:3128"}, "Proxy"},
		{"dollar", ClientConfig{Proxy: "$(calc):3128"}, "Proxy"},
		{"single quote", ClientConfig{Proxy: "gw':3128"}, "Proxy"},
		{"non-ascii", ClientConfig{Proxy: "gäteway:3128"}, "Proxy"},
		{"pac not url", with(func(c *ClientConfig) { c.PACURL = "pac.example.net/proxy.pac" }), "PACURL"},
		{"pac ftp", with(func(c *ClientConfig) { c.PACURL = "ftp://pac.example.net/proxy.pac" }), "PACURL"},
		{"pac no host", with(func(c *ClientConfig) { c.PACURL = "http:///proxy.pac" }), "PACURL"},
		{"pac userinfo", with(func(c *ClientConfig) { c.PACURL = "http://u:p@pac.example.net/x.pac" }), "PACURL"},
		{"pac injection", with(func(c *ClientConfig) { c.PACURL = `http://pac/x.pac" & calc & "` }), "PACURL"},
		{"pac percent", with(func(c *ClientConfig) { c.PACURL = "http://pac/%PATH%.pac" }), "PACURL"},
		{"pac query ampersand", with(func(c *ClientConfig) { c.PACURL = "http://pac/x.pac?a=1&b=2" }), "PACURL"},
		{"pac dollar", with(func(c *ClientConfig) { c.PACURL = "http://pac/$env:x" }), "PACURL"},
		{"pac newline", with(func(c *ClientConfig) { c.PACURL = "http://pac/x.pac\r\nnetsh" }), "PACURL"},
		{"pac quote", with(func(c *ClientConfig) { c.PACURL = "http://pac/x'.pac" }), "PACURL"},
		{"bypass empty", with(func(c *ClientConfig) { c.Bypass = []string{"a.example", ""} }), "Bypass[1]"},
		{"bypass semicolon", with(func(c *ClientConfig) { c.Bypass = []string{"a;b"} }), "Bypass[0]"},
		{"bypass comma", with(func(c *ClientConfig) { c.Bypass = []string{"a,b"} }), "Bypass[0]"},
		{"bypass quote", with(func(c *ClientConfig) { c.Bypass = []string{"x", `a" & calc`} }), "Bypass[1]"},
		{"bypass percent", with(func(c *ClientConfig) { c.Bypass = []string{"%PATH%"} }), "Bypass[0]"},
		{"bypass redirect", with(func(c *ClientConfig) { c.Bypass = []string{"<localx>"} }), "Bypass[0]"},
		{"bypass newline", with(func(c *ClientConfig) { c.Bypass = []string{"a\nb"} }), "Bypass[0]"},
		{"bypass backtick", with(func(c *ClientConfig) { c.Bypass = []string{"a`b"} }), "Bypass[0]"},
		{"bypass space", with(func(c *ClientConfig) { c.Bypass = []string{"a b"} }), "Bypass[0]"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, format := range []string{"cmd", "ps1", "reg"} {
				b, err := c.cfg.Render(format)
				if err == nil {
					t.Fatalf("%s: no error, rendered:\n%s", format, b)
				}
				var ce *ClientConfigError
				if !errors.As(err, &ce) {
					t.Fatalf("%s: error %T %v, want *ClientConfigError", format, err, err)
				}
				if ce.Field != c.field {
					t.Errorf("%s: field %q, want %q (%v)", format, ce.Field, c.field, err)
				}
				if !strings.Contains(err.Error(), c.field+": ") {
					t.Errorf("%s: error %q does not name the field", format, err)
				}
			}
		})
	}
	if _, err := ok.Render("bat"); err == nil || !strings.Contains(err.Error(), "format") {
		t.Errorf("unknown format: err = %v", err)
	}
}

func TestClientConfigRenderValid(t *testing.T) {
	for _, c := range []ClientConfig{
		{Proxy: "gw:1"},
		{Proxy: "gw:65535"},
		{Proxy: "10.0.0.6:8080"},
		{Proxy: "GW-01.corp_x.example.:3128"},
		{Proxy: "[::1]:3128"},
		{Proxy: "gw:3128", PACURL: "https://pac.example.net:8443/p/proxy.pac?v=2"},
		{Proxy: "gw:3128", Bypass: []string{"<LOCAL>", "*.x", "10.*", "[2001:db8::1]", "host:8080"}},
	} {
		for _, format := range []string{"cmd", "ps1", "reg"} {
			if _, err := c.Render(format); err != nil {
				t.Errorf("%+v %s: %v", c, format, err)
			}
		}
	}
}
