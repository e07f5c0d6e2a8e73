package clientconfig

import (
	"bytes"
	"embed"
	"strings"
	"text/template"
)

// The scripts are text/template files: what a script says is read there,
// line by line as it comes out; the Go code only decides the values.
// Template convention: an action on its own line starts with "{{-", so it
// takes the line break before it, and an action that writes lines
// (comments) writes each with the line break before it.
//
//go:embed templates/*.tmpl
var templateFS embed.FS

var templates = template.Must(template.New("").Funcs(template.FuncMap{
	"comments": commentLines,
	"trimnl":   func(s string) string { return strings.TrimPrefix(s, "\n") },
	"ps":       ccPSQuote,
	"reg":      ccRegString,
}).ParseFS(templateFS, "templates/*.tmpl"))

// commentLines writes each line behind prefix, a line break before each,
// without trailing spaces (an empty comment line is the bare prefix).
func commentLines(prefix string, lines []string) string {
	var b strings.Builder
	for _, l := range lines {
		b.WriteByte('\n')
		b.WriteString(strings.TrimRight(prefix+l, " "))
	}
	return b.String()
}

// view is what the templates read: the plan, in exported fields.
type view struct {
	Header          []string
	Undo            bool
	Blocks          []viewBlock
	WinHTTPComments []string
	WinHTTPPointer  string
	WinHTTPNotice   string
	Netsh           string // the netsh command, cmd-quoted
	Proxy           string
	BypassList      string
	MpPreference    string // the Set-MpPreference command line, PowerShell-quoted
}

type viewBlock struct {
	Title    string
	Comments []string
	Defender bool // the Defender Antivirus block (ps1 adds Set-MpPreference)
	Values   []viewValue
}

type viewValue struct {
	Key, Name, SZ, Step string
	Dword               bool
	KeyChanges          bool // the first value of its block under this key
}

// render executes the format's template (cmd, ps1, reg) and returns CRLF
// text.
func (p *ccPlan) render(format string) ([]byte, error) {
	v := view{Header: p.header(), Undo: p.undo, WinHTTPComments: ccWinHTTPComments, WinHTTPPointer: ccWinHTTPPointer,
		WinHTTPNotice: ccWinHTTPNotice, Netsh: p.netshCmd(), Proxy: p.proxy, BypassList: p.bypassList,
		MpPreference: p.mpPreference()}
	for _, b := range p.blocks {
		vb := viewBlock{Title: b.title, Comments: b.comments, Defender: len(b.values) > 0 && b.values[0].key == ccKeyDefender}
		prev := ""
		for _, val := range b.values {
			vb.Values = append(vb.Values, viewValue{Key: val.key, Name: val.name, SZ: val.sz, Step: val.step, Dword: val.dword,
				KeyChanges: val.key != prev})
			prev = val.key
		}
		v.Blocks = append(v.Blocks, vb)
	}
	var b bytes.Buffer
	if err := templates.ExecuteTemplate(&b, format+".tmpl", v); err != nil {
		return nil, err
	}
	// Values never contain CR or LF (validation refuses them).
	return bytes.ReplaceAll(b.Bytes(), []byte("\n"), []byte("\r\n")), nil
}

// mpPreference is the Set-MpPreference command for Defender Antivirus.
func (p *ccPlan) mpPreference() string {
	cmd := "Set-MpPreference -ProxyServer " + ccPSQuote(p.avServer)
	if p.pac != "" {
		cmd += " -ProxyPacUrl " + ccPSQuote(p.pac)
	}
	if len(p.bypass) > 0 {
		q := make([]string, len(p.bypass))
		for i, b := range p.bypass {
			q[i] = ccPSQuote(b)
		}
		cmd += " -ProxyBypass " + strings.Join(q, ",")
	}
	return cmd
}
