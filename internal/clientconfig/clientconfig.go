// Package clientconfig renders the client-side proxy configuration an
// administrator deploys to Defender endpoints (gateway client-config): a
// cmd script, a PowerShell script or a .reg file that sets WinHTTP's proxy,
// Defender for Endpoint's TelemetryProxyServer and Defender Antivirus's
// ProxyServer, with the values validated the way Windows reads them.
package clientconfig

import (
	"fmt"
	"strings"
	"unicode/utf16"
)

// Config describes the device-side proxy settings that point the three
// Microsoft Defender for Endpoint components (EDR sensor, Defender Antivirus
// and the system-wide WinHTTP proxy the OS uses for CRL fetches) at the
// gateway. Render turns it into a script an administrator deploys by Group
// Policy, a startup script or Intune.
//
// Source: Microsoft, "Configure device proxy and Internet connectivity
// settings" (learn.microsoft.com/defender-endpoint/configure-proxy-internet).
type Config struct {
	// Proxy is the gateway address, "host:port". Required. The host is a DNS
	// name (ASCII; punycode for IDNs), a dotted IPv4 address or a bracketed
	// IPv6 literal ("[2001:db8::1]:3128"); no scheme, user info or path.
	Proxy string
	// PACURL is the optional Defender Antivirus ProxyPacUrl, an absolute
	// http:// or https:// URL.
	PACURL string
	// Bypass lists optional proxy bypass entries, written to Defender
	// Antivirus ProxyBypass (joined with ';') and to the netsh winhttp
	// bypass-list. An element may itself be a list in WinHTTP's syntax,
	// entries separated by ';' or ',' with optional spaces around them
	// (see SplitBypass). Entries are host names, addresses, wildcards
	// ("*.contoso.local", "10.*") or the token "<local>" (names without a
	// dot).
	Bypass []string
	// Offline adds PreferStaticProxyForHttpRequest for fully offline devices
	// (honoured by MsSense.exe 10.8210.* or 10.8049.* and later).
	Offline bool
	// Undo renders the script that removes the settings instead.
	Undo bool
}

// Error is the validation error Render returns. Field names
// the offending value as the user gave it to "gateway client-config"
// ("--proxy", "--pac-url", "--format", `--bypass entry "x"`): that command
// is who reads these errors.
type Error struct {
	Field  string
	Reason string
}

// Error carries no "client-config:" prefix: the command adds its own.
func (e *Error) Error() string {
	return e.Field + ": " + e.Reason
}

// Names Error.Field uses.
const (
	ccFieldProxy  = "--proxy"
	ccFieldPAC    = "--pac-url"
	ccFieldFormat = "--format"
)

func ccFieldBypass(entry string) string { return fmt.Sprintf("--bypass entry %q", entry) }

// Registry locations, relative to HKEY_LOCAL_MACHINE.
const (
	ccKeyDataCollection = `SOFTWARE\Policies\Microsoft\Windows\DataCollection`
	ccKeyATP            = `SOFTWARE\Policies\Microsoft\Windows Advanced Threat Protection`
	ccKeyDefender       = `SOFTWARE\Policies\Microsoft\Windows Defender`
)

const (
	ccSourceTitle = `Microsoft, "Configure device proxy and Internet connectivity settings"`
	ccSourceURL   = "https://learn.microsoft.com/defender-endpoint/configure-proxy-internet"
	// ccForbidden are the characters that could end a quoted string or start
	// an expansion in cmd (" % ^ & | < > !), PowerShell (' " ` $) or reg.exe
	// argument parsing (\ before a quote). Whitespace, control characters
	// and non-ASCII are rejected separately.
	ccForbidden = "\"'%^&|<>`$!\\"
)

// ccValue is one registry value the scripts write (apply) or delete (undo).
type ccValue struct {
	key   string // under HKLM
	name  string
	dword bool   // REG_DWORD 1; otherwise REG_SZ
	sz    string // REG_SZ data
	step  string // label used in error messages
}

// ccBlock is a group of values with the comments that explain them.
type ccBlock struct {
	title    string
	comments []string
	values   []ccValue
}

// ccPlan is the validated, format-independent content of a script.
type ccPlan struct {
	proxy      string // host:port, canonical
	ipv6       bool
	avServer   string // http://host:port
	pac        string
	bypass     []string
	bypassList string // bypass entries joined with ';'
	offline    bool
	undo       bool
	blocks     []ccBlock
}

// Render returns the script in format "cmd" (batch file), "ps1" (Windows
// PowerShell 5.1) or "reg" (registry file for regedit / reg import, UTF-16LE
// with BOM). cmd and ps1 are ASCII with CRLF line endings. Validation errors
// are *Error and name the field.
func (c Config) Render(format string) ([]byte, error) {
	if format != "cmd" && format != "ps1" && format != "reg" {
		return nil, &Error{Field: ccFieldFormat, Reason: fmt.Sprintf("want cmd, ps1 or reg, got %q", format)}
	}
	p, err := c.plan()
	if err != nil {
		return nil, err
	}
	out, err := p.render(format)
	if err != nil {
		return nil, err
	}
	if format == "reg" {
		return ccUTF16LE(out), nil
	}
	return out, nil
}

func (c Config) plan() (*ccPlan, error) {
	proxy, ipv6, err := ccValidateProxy(c.Proxy)
	if err != nil {
		return nil, err
	}
	p := &ccPlan{proxy: proxy, ipv6: ipv6, avServer: "http://" + proxy, offline: c.Offline, undo: c.Undo}
	if c.PACURL != "" {
		if err := ccValidatePAC(c.PACURL); err != nil {
			return nil, err
		}
		p.pac = c.PACURL
	}
	for _, list := range c.Bypass {
		for _, b := range SplitBypass(list) {
			if err := ccValidateBypass(b); err != nil {
				return nil, &Error{Field: ccFieldBypass(b), Reason: err.Error()}
			}
			p.bypass = append(p.bypass, b)
		}
	}
	// netsh's bypass-list and ProxyBypass both separate entries with ';'.
	p.bypassList = strings.Join(p.bypass, ";")
	p.blocks = p.buildBlocks()
	return p, nil
}

func (p *ccPlan) buildBlocks() []ccBlock {
	edr := ccBlock{
		title: "EDR sensor (MsSense): static proxy",
		comments: []string{
			`GPO: Computer Configuration\Administrative Templates\Windows Components\Data Collection and Preview Builds:`,
			`"Configure connected user experiences and telemetry" (proxy) and "Configure Authenticated Proxy usage`,
			`for the Connected User Experience and Telemetry service" (Disable Authenticated Proxy usage).`,
		},
		values: []ccValue{
			{key: ccKeyDataCollection, name: "TelemetryProxyServer", sz: p.proxy, step: "EDR sensor: TelemetryProxyServer"},
			{key: ccKeyDataCollection, name: "DisableEnterpriseAuthProxy", dword: true, step: "EDR sensor: DisableEnterpriseAuthProxy"},
		},
	}
	offline := ccBlock{
		title: "Fully offline devices: the sensor prefers the static proxy for its own HTTP requests",
		comments: []string{
			"Needed when the device cannot reach CRLs or Windows Update directly.",
			"Honoured by MsSense.exe 10.8210.* or 10.8049.* and later.",
		},
		values: []ccValue{
			{key: ccKeyATP, name: "PreferStaticProxyForHttpRequest", dword: true, step: "Offline: PreferStaticProxyForHttpRequest"},
		},
	}
	av := ccBlock{
		title: "Microsoft Defender Antivirus: static proxy",
		comments: []string{
			`GPO: Computer Configuration\Administrative Templates\Windows Components\Microsoft Defender Antivirus:`,
			`"Define proxy server for connecting to the network" (ProxyServer, must start with http://),`,
			`"Define proxy auto-config (.pac) for connecting to the network" (ProxyPacUrl),`,
			`"Define addresses to bypass proxy server" (ProxyBypass, entries separated by ';').`,
		},
		values: []ccValue{
			{key: ccKeyDefender, name: "ProxyServer", sz: p.avServer, step: "Defender Antivirus: ProxyServer"},
		},
	}
	if p.undo {
		// Undo removes everything an apply script may have written,
		// whatever options it was generated with.
		offline.comments = nil
		av.values = append(av.values,
			ccValue{key: ccKeyDefender, name: "ProxyPacUrl", step: "Defender Antivirus: ProxyPacUrl"},
			ccValue{key: ccKeyDefender, name: "ProxyBypass", step: "Defender Antivirus: ProxyBypass"})
		return []ccBlock{edr, offline, av}
	}
	if p.pac != "" {
		av.values = append(av.values, ccValue{key: ccKeyDefender, name: "ProxyPacUrl", sz: p.pac, step: "Defender Antivirus: ProxyPacUrl"})
	}
	if len(p.bypass) > 0 {
		av.values = append(av.values, ccValue{key: ccKeyDefender, name: "ProxyBypass", sz: p.bypassList, step: "Defender Antivirus: ProxyBypass"})
	}
	if p.offline {
		return []ccBlock{edr, offline, av}
	}
	return []ccBlock{edr, av}
}

// header returns the comment header shared by all formats.
func (p *ccPlan) header() []string {
	h := []string{`Generated by "gateway client-config". Regenerate rather than edit.`}
	if p.undo {
		h = append(h,
			"UNDO: removes the Microsoft Defender for Endpoint proxy settings that point this device",
			"at the egress gateway "+p.proxy+", and resets the system WinHTTP proxy to direct access.",
			"All values an apply script may have written are removed, whatever options it used.",
			"Blocks:",
			"  - EDR sensor: remove TelemetryProxyServer and DisableEnterpriseAuthProxy (DataCollection policy).",
			"  - Offline devices: remove PreferStaticProxyForHttpRequest.",
			"  - Defender Antivirus: remove ProxyServer, ProxyPacUrl and ProxyBypass (Windows Defender policy).",
			"  - WinHTTP: netsh winhttp reset proxy. A WinHTTP proxy set before the apply script is not restored.",
		)
	} else {
		h = append(h,
			"Points the three Microsoft Defender for Endpoint components at the egress gateway "+p.proxy+".",
			"All three proxy settings (EDR sensor, Defender Antivirus, system WinHTTP) must be set for",
			"proxying to work. Transparent proxies and WPAD need none of this.",
			"Blocks:",
			"  - EDR sensor: TelemetryProxyServer = "+p.proxy+", DisableEnterpriseAuthProxy = 1 (DataCollection policy).",
		)
		if p.offline {
			h = append(h, "  - Offline devices: PreferStaticProxyForHttpRequest = 1 (Windows Advanced Threat Protection policy).")
		}
		av := "  - Defender Antivirus: ProxyServer = " + p.avServer
		if p.pac != "" {
			av += ", ProxyPacUrl"
		}
		if len(p.bypass) > 0 {
			av += ", ProxyBypass"
		}
		h = append(h, av+" (Windows Defender policy).",
			"  - WinHTTP: netsh winhttp set proxy, the system-wide proxy the OS uses for CRL fetches.",
			"  - Verify: MpCmdRun -ValidateMapsConnection, MDE Client Analyzer, netsh winhttp show proxy.",
		)
		h = append(h, ccWinHTTPWarning...)
	}
	if p.ipv6 {
		h = append(h, "Note: Microsoft does not support devices configured for IPv6-only traffic.")
	}
	return append(h,
		"Run elevated, in a 64-bit process (32-bit netsh only sets the WOW64 WinHTTP proxy).",
		"Source: "+ccSourceTitle,
		"        "+ccSourceURL,
	)
}

// ccWinHTTPComments explain the netsh block.
var ccWinHTTPComments = []string{
	"Used by Windows services and by the OS for certificate revocation list",
	"(CRL) fetches. Without it MpCmdRun -ValidateMapsConnection fails with hr=0x80072F8F httpcore=451.",
}

// ccWinHTTPWarning says what the WinHTTP proxy does beyond Defender. It
// goes into cmd rem lines too, so it carries no character cmd acts on
// (no angle brackets, ampersand, pipe, caret or percent sign).
var ccWinHTTPWarning = []string{
	"WARNING: netsh winhttp set proxy is machine-wide. It routes EVERY program and service on this",
	"device that uses WinHTTP, not only Defender (Windows Update, other agents, line-of-business",
	"software), through this allowlist gateway, which refuses every destination it does not list.",
	"Before deploying, allow what else the devices need in the gateway's rules (GATEWAY_RULES_FILE),",
	"or exempt it with the bypass list (gateway client-config --bypass, e.g. *.contoso.local).",
}

// ccWinHTTPPointer recalls the warning where the netsh command is.
const ccWinHTTPPointer = "Machine-wide: see the WARNING at the top. Every WinHTTP program on the device uses this proxy."

// ccWinHTTPNotice is printed when the apply script has set the WinHTTP
// proxy; plain words only, it is echoed by cmd and single-quoted in ps1.
const ccWinHTTPNotice = "WARNING: the WinHTTP proxy is machine-wide: every program on this device that uses WinHTTP now goes through the Defender allowlist gateway, which refuses destinations it does not list."

// netshCmd is the netsh command that sets the WinHTTP proxy, cmd-quoted.
func (p *ccPlan) netshCmd() string {
	s := `netsh winhttp set proxy proxy-server="` + p.proxy + `"`
	if p.bypassList != "" {
		s += ` bypass-list="` + p.bypassList + `"`
	}
	return s
}

// ccPSQuote single-quotes s for PowerShell (a single quote is doubled;
// validation rejects them in user values anyway).
func ccPSQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// ccRegString quotes s as a .reg string: backslashes and double quotes are
// escaped.
func ccRegString(s string) string {
	s = strings.ReplaceAll(s, `\`, `\\`)
	return `"` + strings.ReplaceAll(s, `"`, `\"`) + `"`
}

// ccUTF16LE encodes b (CRLF text) as UTF-16LE with a byte order mark.
func ccUTF16LE(b []byte) []byte {
	u := utf16.Encode([]rune(string(b)))
	out := make([]byte, 2, 2+2*len(u))
	out[0], out[1] = 0xFF, 0xFE
	for _, c := range u {
		out = append(out, byte(c), byte(c>>8))
	}
	return out
}
