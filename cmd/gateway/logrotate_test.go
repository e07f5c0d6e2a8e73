package main

import (
	"compress/gzip"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/defendergw/gateway/internal/testutil"
)

const logrotateSnippet = "../../deploy/logrotate/gateway"

func needLogrotate(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("logrotate")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("logrotate is required in CI (Debian package logrotate)")
		}
		t.Skip("logrotate is not installed (Debian package logrotate): deploy/logrotate/gateway is not checked")
	}
	return p
}

// logrotateConfig is the snippet with its directory moved to dir and, when
// postrotate is not empty, its postrotate script replaced. Optional
// stanzas (commented out) are uncommented when uncomment is set.
func logrotateConfig(t *testing.T, dir, postrotate string, uncomment bool) string {
	t.Helper()
	b, err := os.ReadFile(logrotateSnippet)
	if err != nil {
		t.Fatal(err)
	}
	s := strings.ReplaceAll(string(b), "/var/log/defender-gateway/", dir+"/")
	if postrotate != "" {
		start := strings.Index(s, "postrotate\n")
		end := strings.Index(s, "endscript")
		if start < 0 || end < start {
			t.Fatal("the snippet has no postrotate script")
		}
		s = s[:start] + "postrotate\n        " + postrotate + "\n    " + s[end:]
	}
	if uncomment {
		var out []string
		for _, l := range strings.Split(s, "\n") {
			if strings.HasPrefix(l, "#/") || strings.HasPrefix(l, "#    ") || l == "#}" {
				l = l[1:]
			}
			out = append(out, l)
		}
		s = strings.Join(out, "\n")
	}
	conf := filepath.Join(t.TempDir(), "gateway")
	if err := os.WriteFile(conf, []byte(s), 0o644); err != nil { // logrotate wants no group or world write
		t.Fatal(err)
	}
	return conf
}

func runLogrotate(t *testing.T, bin string, args ...string) string {
	t.Helper()
	state := filepath.Join(t.TempDir(), "status")
	out, err := exec.Command(bin, append([]string{"-s", state}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("logrotate %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// TestLogrotateSnippetDebug: logrotate -d reads the shipped snippet (and
// its optional stanza) without an error or a warning of its own.
func TestLogrotateSnippetDebug(t *testing.T) {
	bin := needLogrotate(t)
	b, err := os.ReadFile(logrotateSnippet)
	if err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(t.TempDir(), "gateway")
	if err := os.WriteFile(conf, b, 0o644); err != nil {
		t.Fatal(err)
	}
	out := runLogrotate(t, bin, "-d", conf)
	if !strings.Contains(out, "rotating pattern: /var/log/defender-gateway/access.log  after 1 days (14 rotations)") {
		t.Errorf("logrotate -d does not show the access log's rotation:\n%s", out)
	}
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "access.log"), "x\n")
	writeFile(t, filepath.Join(dir, "gateway.log"), "x\n")
	out = runLogrotate(t, bin, "-d", "-f", logrotateConfig(t, dir, "", true))
	for _, want := range []string{"rotating pattern: " + dir + "/access.log", "rotating pattern: " + dir + "/gateway.log",
		"copying " + dir + "/gateway.log to " + dir + "/gateway.log.1", "truncating " + dir + "/gateway.log",
		"renaming " + dir + "/access.log to " + dir + "/access.log.1", "running postrotate script"} {
		if !strings.Contains(out, want) {
			t.Errorf("logrotate -d lacks %q:\n%s", want, out)
		}
	}
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "error:") || (strings.HasPrefix(l, "warning:") && !strings.Contains(l, "debug mode")) {
			t.Errorf("logrotate -d: %s", l)
		}
	}
}

// TestLogrotateRotatesAccessLog rotates a running gateway's access log with
// the snippet (its postrotate signalling the test's gateway instead of
// systemctl): nothing is lost, new lines go to the new file, which the
// gateway created, and the previous rotation is compressed.
func TestLogrotateRotatesAccessLog(t *testing.T) {
	bin := needLogrotate(t)
	dns := testutil.NewDNS(t)
	dir := t.TempDir()
	logFile := filepath.Join(dir, "access.log")
	g := startGateway(t, "GATEWAY_DNS_SERVERS="+dns.Addr, "GATEWAY_GEOGRAPHIES=EU",
		"GATEWAY_ACCESS_LOG="+logFile, "GATEWAY_ACCESS_LOG_FORMAT=squid")
	conf := logrotateConfig(t, dir, "kill -HUP "+strconv.Itoa(g.cmd.Process.Pid), false)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: http.ProxyURL(mustURL(t, "http://"+g.addr))}}
	request := func(path string) {
		t.Helper()
		resp, err := client.Get("http://evil.example.com" + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	state := filepath.Join(t.TempDir(), "status")
	rotate := func() {
		t.Helper()
		if out, err := exec.Command(bin, "-s", state, "-f", conf).CombinedOutput(); err != nil {
			t.Fatalf("logrotate: %v\n%s", err, out)
		}
		// The gateway reopens at the path once it handled the signal.
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if _, err := os.Stat(logFile); err == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("no new %s after the rotation:\n%s", logFile, g.log())
			}
		}
	}

	request("/first")
	waitFileContains(t, logFile, "GET http://evil.example.com/first")
	rotate()
	waitFileContains(t, logFile+".1", "GET http://evil.example.com/first")
	request("/second")
	waitFileContains(t, logFile, "GET http://evil.example.com/second")
	if b, _ := os.ReadFile(logFile + ".1"); strings.Contains(string(b), "second") {
		t.Error("a line written after the rotation went to the rotated file")
	}
	fi, err := os.Stat(logFile)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o640 {
		t.Errorf("new access log mode %v, want 0640 (created by the gateway, not logrotate)", fi.Mode().Perm())
	}

	rotate()
	request("/third")
	waitFileContains(t, logFile, "GET http://evil.example.com/third")
	waitFileContains(t, logFile+".1", "GET http://evil.example.com/second")
	f, err := os.Open(logFile + ".2.gz")
	if err != nil {
		t.Fatalf("delaycompress: the previous rotation is not compressed: %v", err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	first, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Count(string(first), "\n") != 1 || !strings.Contains(string(first), "GET http://evil.example.com/first") {
		t.Errorf("access.log.2.gz = %q, want the first line alone", first)
	}
	if log := g.log(); strings.Contains(log, "reopening the access log failed") {
		t.Errorf("the gateway could not reopen its log:\n%s", log)
	}
}
