package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// goaccessSquid is the goaccess format for the gateway's Squid-format log,
// as the README gives it (with --date-format=%s --time-format=%s).
// goaccess's own --log-format=SQUID wants a syslog header before each line.
const goaccessSquid = "%x.%^ %~%L %h %^/%s %b %m %U %e %^"

// squidLabLog runs the lab with a Squid-format access log, sends a CONNECT
// and a plain-HTTP request each allowed and refused through it, and returns
// the log's path once it holds the four lines.
func squidLabLog(t *testing.T) string {
	t.Helper()
	logFile := filepath.Join(t.TempDir(), "access.log")
	l := startLab(t, "GATEWAY_GEOGRAPHIES=EU", "GATEWAY_ACCESS_LOG="+logFile, "GATEWAY_ACCESS_LOG_FORMAT=squid")
	pem, err := os.ReadFile(l.ca)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	tr := &http.Transport{Proxy: http.ProxyURL(mustURL(t, l.gateway)), TLSClientConfig: &tls.Config{RootCAs: roots}}
	client := &http.Client{Timeout: 10 * time.Second, Transport: tr}
	for _, tt := range []struct {
		url  string
		want int // 0: the CONNECT is refused
	}{
		{"https://edr-neu.eu.endpoint.security.microsoft.com/edr/commands/test", 200},
		{"https://winatp-gw-cus.microsoft.com/", 0}, // a US endpoint: geography
		{"http://crl.microsoft.com/pki/crl/products/MicRooCerAut2011_2011_03_22.crl", 200},
		{"http://evil.example.com/x?a=b", 403},
	} {
		resp, err := client.Get(tt.url)
		switch {
		case err != nil && tt.want != 0:
			t.Fatalf("%s: %v", tt.url, err)
		case err == nil && resp.StatusCode != tt.want:
			t.Fatalf("%s: %d, want %d", tt.url, resp.StatusCode, tt.want)
		case err == nil:
			resp.Body.Close()
		}
	}
	tr.CloseIdleConnections() // ends the tunnel, which logs it
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		b, _ := os.ReadFile(logFile)
		if strings.Count(string(b), "\n") == 4 {
			t.Logf("lab access log:\n%s", b)
			return logFile
		}
		if time.Now().After(deadline) {
			t.Fatalf("access log has not the four lines: %q\n%s", b, l.stderr)
		}
	}
}

func squidReader(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is required in CI (Debian package %s)", name, name)
		}
		t.Skipf("%s is not installed (Debian package %s): the Squid-format log is not checked with it", name, name)
	}
	return p
}

// TestSquidLogReadersOnLabTraffic reads the lab's real Squid-format lines
// with goaccess (the README's format, and its built-in SQUID format once the
// lines carry a syslog header), calamaris and sarg.
func TestSquidLogReadersOnLabTraffic(t *testing.T) {
	goaccess, calamaris, sarg := squidReader(t, "goaccess"), squidReader(t, "calamaris"), squidReader(t, "sarg")
	logFile := squidLabLog(t)
	dir := t.TempDir()

	readGoaccess := func(log string, args ...string) {
		t.Helper()
		rep := filepath.Join(dir, "report.json")
		cmd := exec.Command(goaccess, append([]string{log, "--no-global-config", "-o", rep}, args...)...)
		cmd.Env = append(os.Environ(), "HOME="+dir)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("goaccess %v: %v\n%s", args, err, out)
		}
		var report struct {
			General struct {
				Total  int `json:"total_requests"`
				Valid  int `json:"valid_requests"`
				Failed int `json:"failed_requests"`
			} `json:"general"`
		}
		b, err := os.ReadFile(rep)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(b, &report); err != nil {
			t.Fatal(err)
		}
		if g := report.General; g.Total != 4 || g.Valid != 4 || g.Failed != 0 {
			t.Errorf("goaccess %v: total %d, valid %d, failed %d; want 4, 4, 0", args, g.Total, g.Valid, g.Failed)
		}
	}
	readGoaccess(logFile, "--log-format="+goaccessSquid, "--date-format=%s", "--time-format=%s")
	b, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	syslog := filepath.Join(dir, "syslog.log")
	const header = "Dec 02 14:22:58 gw gateway[4242]: "
	writeFile(t, syslog, header+strings.ReplaceAll(strings.TrimSuffix(string(b), "\n"), "\n", "\n"+header)+"\n")
	readGoaccess(syslog, "--log-format=SQUID")

	f, err := os.Open(logFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command(calamaris, "-a")
	cmd.Stdin = f
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("calamaris: %v\n%s", err, out)
	}
	if !regexp.MustCompile(`lines parsed:\s+lines\s+4\s`).Match(out) || !regexp.MustCompile(`invalid lines:\s+lines\s+0\s`).Match(out) {
		t.Errorf("calamaris did not read the four lines:\n%s", out)
	}

	conf := filepath.Join(dir, "sarg.conf")
	report, tmp := filepath.Join(dir, "sarg"), filepath.Join(dir, "sarg-tmp")
	os.Mkdir(report, 0o755)
	os.Mkdir(tmp, 0o755)
	writeFile(t, conf, fmt.Sprintf("access_log %s\noutput_dir %s\ntemporary_dir %s\nresolve_ip no\n", logFile, report, tmp))
	if out, err = exec.Command(sarg, "-f", conf, "-x").CombinedOutput(); err != nil {
		t.Fatalf("sarg: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "Records read: 4, written: 4, excluded: 0") ||
		!strings.Contains(string(out), "squid log format: 4 entries") {
		t.Errorf("sarg did not read the four lines:\n%s", out)
	}
}
