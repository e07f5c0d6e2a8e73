package telemetry

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// goaccessSquidFormat is the goaccess --log-format that reads Squid's
// native access.log, as AppendSquid writes it, with --date-format=%s and
// --time-format=%s (README, "Reading the Squid log with goaccess, calamaris
// and sarg"). goaccess's own --log-format=SQUID is
// "%^ %^ %^ %v %^: %x.%^ %~%L %h %^/%s %b %m %U": it expects a syslog header
// (date, time, host, tag) before each line, as Squid writes to syslog, and
// so rejects a native access.log file, Squid's own included.
const goaccessSquidFormat = "%x.%^ %~%L %h %^/%s %b %m %U %e %^"

// syslogHeader is what a syslog daemon (or journalctl -o short) puts before
// a message; goaccess's --log-format=SQUID skips exactly this.
const syslogHeader = "Dec 02 14:22:58 gw gateway[4242]: "

// squidLines is every shape of line the gateway writes, event by event, in
// Squid's %ts.%03tu %6tr %>a %Ss/%03>Hs %<st %rm %ru %[un %Sh/%<a %mt. The
// readers' test below feeds them to goaccess, calamaris and sarg.
func squidLines() []struct {
	name string
	ev   Event
	want string
} {
	at := time.UnixMilli(1796221388224)
	tunnel := tunnelEvent()
	tunnel.Timestamp = at
	long := tunnelEvent() // a device's command-and-control tunnel, open for hours
	long.Timestamp, long.Fields.Duration, long.Fields.BytesDown = at, 3*time.Hour+7*time.Millisecond, 98765432
	v6 := tunnelEvent()
	v6.Timestamp, v6.LocalIP, v6.RemoteURL, v6.RemoteIP = at, "2001:db8::5", "2001:db8::1", "2001:db8::1"
	user := Event{Timestamp: at, ActionType: ConnectionSuccess, LocalIP: "10.0.0.6", RemoteURL: "winatp-gw-weu.microsoft.com",
		RemoteIP: "20.1.2.3", RemotePort: 443, Method: "CONNECT", Status: 200,
		Fields: AdditionalFields{User: "alice", BytesDown: 4200, Duration: 90 * time.Millisecond}}
	refusedConnect := Event{Timestamp: at, ActionType: ConnectionBlocked, LocalIP: "10.0.0.7",
		RemoteURL: "winatp-gw-cus.microsoft.com", RemotePort: 443, Method: "CONNECT", Status: 403,
		Fields: AdditionalFields{Reason: "geography"}}
	refusedHTTP := Event{Timestamp: at, ActionType: ConnectionBlocked, LocalIP: "10.0.0.7",
		RemoteURL: "http://evil.example.com/x?a=b", RemotePort: 80, Method: "POST", Status: 403,
		Fields: AdditionalFields{Reason: "not-listed"}}
	failed := Event{Timestamp: at, ActionType: ConnectionFailed, LocalIP: "10.0.0.8",
		RemoteURL: "nxdomain.wdcp.microsoft.com", RemotePort: 443, Method: "CONNECT", Status: 502,
		Fields: AdditionalFields{Reason: "dns-failure", Duration: 12 * time.Millisecond}}
	timeout := Event{Timestamp: at, ActionType: ConnectionFailed, LocalIP: "10.0.0.8",
		RemoteURL: "http://crl.microsoft.com/pki/crl/products/x.crl", RemoteIP: "20.9.9.9", RemotePort: 80,
		Method: "GET", Status: 504, Fields: AdditionalFields{Reason: "timeout", Duration: 10 * time.Second}}
	plain := Event{Timestamp: at, ActionType: ConnectionSuccess, LocalIP: "10.0.0.6",
		RemoteURL: "http://ctldl.windowsupdate.com/msdownload/update/v3/static/trustedr/en/authrootstl.cab",
		RemoteIP:  "93.184.216.34", RemotePort: 80, Method: "GET", Status: 200,
		Fields: AdditionalFields{BytesDown: 1234567, Duration: 2500 * time.Millisecond}}
	audited := Event{Timestamp: at, ActionType: ConnectionAudited, LocalIP: "10.0.0.5",
		RemoteURL: "http://unlisted.example.com:8080/a", RemoteIP: "203.0.113.7", RemotePort: 8080, Method: "GET",
		Status: 200, Fields: AdditionalFields{Reason: "not-listed", BytesDown: 12, Duration: 40 * time.Millisecond}}
	escaped := Event{Timestamp: at, ActionType: ConnectionSuccess, LocalIP: "10.0.0.5", RemoteURL: "http://h/a b\nc\x00é%20",
		RemoteIP: "192.0.2.1", RemotePort: 80, Method: "GET", Status: 200, Fields: AdditionalFields{User: "bob smith\r\n"}}
	return []struct {
		name string
		ev   Event
		want string
	}{
		{"tunnel", tunnel, "1796221388.224    150 10.0.0.5 TCP_TUNNEL/200 5320 CONNECT winatp-gw-weu.microsoft.com:443 - HIER_DIRECT/20.1.2.3 -\n"},
		{"tunnel of hours: %6tr overflows its width", long, "1796221388.224 10800007 10.0.0.5 TCP_TUNNEL/200 98765432 CONNECT winatp-gw-weu.microsoft.com:443 - HIER_DIRECT/20.1.2.3 -\n"},
		{"ipv6 client and target", v6, "1796221388.224    150 2001:db8::5 TCP_TUNNEL/200 5320 CONNECT [2001:db8::1]:443 - HIER_DIRECT/2001:db8::1 -\n"},
		{"authenticated", user, "1796221388.224     90 10.0.0.6 TCP_TUNNEL/200 4200 CONNECT winatp-gw-weu.microsoft.com:443 alice HIER_DIRECT/20.1.2.3 -\n"},
		{"connect refused", refusedConnect, "1796221388.224      0 10.0.0.7 TCP_DENIED/403 0 CONNECT winatp-gw-cus.microsoft.com:443 - HIER_NONE/- -\n"},
		{"http refused", refusedHTTP, "1796221388.224      0 10.0.0.7 TCP_DENIED/403 0 POST http://evil.example.com/x?a=b - HIER_NONE/- -\n"},
		{"connect failed", failed, "1796221388.224     12 10.0.0.8 TCP_MISS/502 0 CONNECT nxdomain.wdcp.microsoft.com:443 - HIER_NONE/- -\n"},
		{"http timed out", timeout, "1796221388.224  10000 10.0.0.8 TCP_MISS/504 0 GET http://crl.microsoft.com/pki/crl/products/x.crl - HIER_NONE/- -\n"},
		{"http", plain, "1796221388.224   2500 10.0.0.6 TCP_MISS/200 1234567 GET http://ctldl.windowsupdate.com/msdownload/update/v3/static/trustedr/en/authrootstl.cab - HIER_DIRECT/93.184.216.34 -\n"},
		{"audited", audited, "1796221388.224     40 10.0.0.5 TCP_MISS/200 12 GET http://unlisted.example.com:8080/a - HIER_DIRECT/203.0.113.7 -\n"},
		{"escaped", escaped, "1796221388.224      0 10.0.0.5 TCP_MISS/200 0 GET http://h/a%20b%0Ac%00%C3%A9%20 bob%20smith%0D%0A HIER_DIRECT/192.0.2.1 -\n"},
	}
}

func TestAppendSquidLines(t *testing.T) {
	for _, tt := range squidLines() {
		t.Run(tt.name, func(t *testing.T) {
			if got := string(AppendSquid(nil, &tt.ev)); got != tt.want {
				t.Errorf("got\n%q\nwant\n%q", got, tt.want)
			}
		})
	}
}

// writeSquidLog writes the events of squidLines through a file EventLog, as
// the gateway does, and returns the file's path.
func writeSquidLog(t *testing.T, dir string) (path string, n int) {
	t.Helper()
	path = filepath.Join(dir, "access.log")
	l, err := NewEventLog(EventLogOptions{Path: path, Format: "squid"})
	if err != nil {
		t.Fatal(err)
	}
	lines := squidLines()
	for _, tt := range lines {
		l.Log(tt.ev)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return path, len(lines)
}

// logReader returns the path of a Squid-log reader, or skips the test.
func logReader(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is required in CI (Debian package %s)", name, pkg)
		}
		t.Skipf("%s is not installed (Debian package %s): the Squid-format log is not checked with it", name, pkg)
	}
	return p
}

// goaccessJSON runs goaccess on log with args and returns the counts of its
// JSON report ("general") and the whole report; err is goaccess's failure.
func goaccessJSON(t *testing.T, bin, log string, args ...string) (general map[string]any, report map[string]any, out string, err error) {
	t.Helper()
	dir := t.TempDir()
	rep := filepath.Join(dir, "report.json")
	cmd := exec.Command(bin, append([]string{log, "--no-global-config", "-o", rep}, args...)...)
	cmd.Env = append(os.Environ(), "HOME="+dir) // no ~/.goaccessrc
	b, err := cmd.CombinedOutput()
	if err != nil {
		return nil, nil, string(b), err
	}
	data, rerr := os.ReadFile(rep)
	if rerr != nil {
		t.Fatalf("goaccess wrote no report: %v\n%s", rerr, b)
	}
	if err := json.Unmarshal(data, &report); err != nil {
		t.Fatalf("goaccess report: %v\n%.300s", err, data)
	}
	general, _ = report["general"].(map[string]any)
	return general, report, string(b), nil
}

// checkGoaccessCounts asserts goaccess read every one of n lines.
func checkGoaccessCounts(t *testing.T, general map[string]any, n int) {
	t.Helper()
	for k, want := range map[string]float64{"total_requests": float64(n), "valid_requests": float64(n), "failed_requests": 0} {
		if got, _ := general[k].(float64); got != want {
			t.Errorf("goaccess %s = %v, want %v (general: %v)", k, general[k], want, general)
		}
	}
}

// panelItems returns the "data" labels of a goaccess report panel.
func panelItems(report map[string]any, panel string) []string {
	p, _ := report[panel].(map[string]any)
	items, _ := p["data"].([]any)
	var labels []string
	for _, it := range items {
		if m, ok := it.(map[string]any); ok {
			labels = append(labels, fmt.Sprint(m["data"]))
		}
	}
	return labels
}

func TestSquidLogGoaccess(t *testing.T) {
	bin := logReader(t, "goaccess", "goaccess")
	path, n := writeSquidLog(t, t.TempDir())

	// The format the README documents reads every line, each field in its place.
	general, report, out, err := goaccessJSON(t, bin, path,
		"--log-format="+goaccessSquidFormat, "--date-format=%s", "--time-format=%s")
	if err != nil {
		t.Fatalf("goaccess --log-format=%q: %v\n%s", goaccessSquidFormat, err, out)
	}
	checkGoaccessCounts(t, general, n)
	if bw, _ := general["bandwidth"].(float64); bw != 5320*2+98765432+4200+1234567+12 {
		t.Errorf("goaccess bandwidth = %v, want the sum of the sizes", general["bandwidth"])
	}
	for panel, want := range map[string][]string{
		"requests":     {"winatp-gw-weu.microsoft.com:443", "[2001:db8::1]:443", "http://evil.example.com/x?a=b", "http://h/a"}, // goaccess decodes %XX,
		"hosts":        {"10.0.0.5", "2001:db8::5", "10.0.0.8"},
		"remote_user":  {"alice", "bob%20smith%0D%0A"},
		"status_codes": {"2xx Success", "4xx Client Errors", "5xx Server Errors"},
	} {
		got := strings.Join(panelItems(report, panel), "\n")
		for _, w := range want {
			if !strings.Contains(got, w) {
				t.Errorf("goaccess panel %s lacks %q:\n%s", panel, w, got)
			}
		}
	}

	// goaccess's built-in SQUID format wants a syslog header before each
	// line: it reads the same lines once they carry one...
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	syslog := filepath.Join(t.TempDir(), "syslog.log")
	lines := strings.SplitAfter(strings.TrimSuffix(string(data), "\n"), "\n")
	writeTestFile(t, syslog, syslogHeader+strings.Join(lines, syslogHeader))
	general, _, out, err = goaccessJSON(t, bin, syslog, "--log-format=SQUID")
	if err != nil {
		t.Fatalf("goaccess --log-format=SQUID on syslog lines: %v\n%s", err, out)
	}
	checkGoaccessCounts(t, general, n)

	// ...and rejects the native file, as it rejects Squid's own. Should a
	// goaccess read it, the README's passage can say so.
	if general, _, out, err := goaccessJSON(t, bin, path, "--log-format=SQUID"); err == nil {
		t.Logf("this goaccess reads the native format with --log-format=SQUID (general: %v)", general)
	} else if !strings.Contains(out, "doesn't match specifier '%x'") {
		t.Errorf("goaccess --log-format=SQUID fails otherwise than expected: %v\n%s", err, out)
	} else {
		t.Logf("goaccess --log-format=SQUID on the native file, as expected:\n%s", out)
	}
}

func writeTestFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// reportCount reads "label ... N" from a calamaris or sarg report.
func reportCount(t *testing.T, out string, re *regexp.Regexp) int {
	t.Helper()
	m := re.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no %v in:\n%s", re, out)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

func TestSquidLogCalamaris(t *testing.T) {
	bin := logReader(t, "calamaris", "calamaris")
	path, n := writeSquidLog(t, t.TempDir())
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command(bin, "-a")
	cmd.Stdin = f
	b, err := cmd.CombinedOutput()
	out := string(b)
	if err != nil {
		t.Fatalf("calamaris: %v\n%s", err, out)
	}
	if got := reportCount(t, out, regexp.MustCompile(`lines parsed:\s+lines\s+(\d+)`)); got != n {
		t.Errorf("calamaris parsed %d lines, want %d:\n%s", got, n, out)
	}
	if got := reportCount(t, out, regexp.MustCompile(`invalid lines:\s+lines\s+(\d+)`)); got != 0 {
		t.Errorf("calamaris found %d invalid lines:\n%s", got, out)
	}
	for _, want := range []string{"TCP_TUNNEL", "TCP_DENIED", "CONNECT", "POST"} {
		if !strings.Contains(out, want) {
			t.Errorf("calamaris report lacks %s:\n%s", want, out)
		}
	}
}

func TestSquidLogSarg(t *testing.T) {
	bin := logReader(t, "sarg", "sarg")
	dir := t.TempDir()
	path, n := writeSquidLog(t, dir)
	outDir := filepath.Join(dir, "report")
	tmp := filepath.Join(dir, "tmp")
	for _, d := range []string{outDir, tmp} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	conf := filepath.Join(dir, "sarg.conf")
	writeTestFile(t, conf, fmt.Sprintf("access_log %s\noutput_dir %s\ntemporary_dir %s\nresolve_ip no\noverwrite_report yes\n",
		path, outDir, tmp))
	b, err := exec.Command(bin, "-f", conf, "-x").CombinedOutput()
	out := string(b)
	if err != nil {
		t.Fatalf("sarg: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`Records read: (\d+), written: (\d+), excluded: (\d+)`).FindStringSubmatch(out)
	if m == nil || m[1] != strconv.Itoa(n) || m[2] != strconv.Itoa(n) || m[3] != "0" {
		t.Errorf("sarg did not take all %d lines:\n%s", n, out)
	}
	if got := reportCount(t, out, regexp.MustCompile(`squid log format: (\d+) entries`)); got != n {
		t.Errorf("sarg read %d lines as Squid's format, want %d:\n%s", got, n, out)
	}
	denied, err := filepath.Glob(filepath.Join(outDir, "*", "denied.html"))
	if err != nil || len(denied) != 1 {
		t.Fatalf("sarg wrote no denied report: %v %v\n%s", denied, err, out)
	}
	html, _ := os.ReadFile(denied[0])
	for _, want := range []string{"winatp-gw-cus.microsoft.com:443", "http://evil.example.com/x"} {
		if !strings.Contains(string(html), want) {
			t.Errorf("sarg's denied report lacks %s", want)
		}
	}
}
