package main

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// labProcess is `gateway lab` running on loopback.
type labProcess struct {
	cmd     *exec.Cmd
	gateway string // http://host:port
	ca      string
	admin   string
	tries   []string // the commands the lab prints ("try: ...")
	stderr  *lockedWriter
}

func startLab(t *testing.T, env ...string) *labProcess {
	t.Helper()
	cmd := exec.Command(gatewayBin, "lab", "--listen", "127.0.0.1:0", "--dir", t.TempDir())
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "GATEWAY_ADMIN_LISTEN=127.0.0.1:0"}, env...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	l := &labProcess{cmd: cmd, stderr: &lockedWriter{w: &strings.Builder{}}}
	cmd.Stderr = l.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	deadline := time.After(10 * time.Second)
	for l.gateway == "" || l.ca == "" || l.admin == "" || len(l.tries) < 2 {
		select {
		case line, ok := <-lines:
			if !ok {
				t.Fatalf("lab exited: %s", l.stderr)
			}
			if v, ok := strings.CutPrefix(line, "lab gateway: "); ok {
				l.gateway = v
			} else if v, ok := strings.CutPrefix(line, "lab CA: "); ok {
				l.ca = v
			} else if v, ok := strings.CutPrefix(line, "lab admin: "); ok {
				l.admin = v
			} else if v, ok := strings.CutPrefix(line, "try: "); ok {
				l.tries = append(l.tries, v)
			}
		case <-deadline:
			t.Fatalf("lab did not start: %s", l.stderr)
		}
	}
	go func() {
		for range lines {
		}
	}()
	return l
}

// probe runs `gateway probe --via` against the lab.
func (l *labProcess) probe(t *testing.T, extra ...string) (string, int) {
	t.Helper()
	args := append([]string{"probe", "--via", l.gateway, "--ca", l.ca, "--geo", "EU", "--timeout", "5s"}, extra...)
	out, errOut, code := runCLI(t, nil, args...)
	if code == 2 {
		t.Fatalf("probe usage error: %s", errOut)
	}
	return out, code
}

func TestProbeAgainstLab(t *testing.T) {
	t.Run("all required endpoints succeed", func(t *testing.T) {
		l := startLab(t, "GATEWAY_GEOGRAPHIES=EU")
		out, code := l.probe(t)
		if code != 0 {
			t.Fatalf("probe exit %d:\n%s\nlab: %s", code, out, l.stderr)
		}
		for _, want := range []string{"Testing URL : https://winatp-gw-weu.microsoft.com/test", "Succeeded (200)",
			"Testing URL : https://mdav.eu.endpoint.security.microsoft.com/mdav/test", "Succeeded (404)",
			"http://crl.microsoft.com/pki/crl/products/"} {
			if !strings.Contains(out, want) {
				t.Errorf("probe output lacks %q", want)
			}
		}
		// JSON for automation.
		js, code := l.probe(t, "--format", "json")
		var doc struct {
			Results []struct {
				OK bool `json:"ok"`
			} `json:"results"`
		}
		if err := json.Unmarshal([]byte(js), &doc); err != nil || code != 0 || len(doc.Results) < 20 {
			t.Errorf("json: exit %d, err %v, %d results", code, err, len(doc.Results))
		}
		// curl with the lab CA, as the README's quick demo does.
		if curl, err := exec.LookPath("curl"); err == nil {
			b, err := exec.Command(curl, "-s", "--noproxy", "", "-x", l.gateway, "--cacert", l.ca, "-w", "%{http_code}",
				"https://winatp-gw-weu.microsoft.com/commands/test").Output()
			if err != nil || string(b) != "200" {
				t.Errorf("curl through the lab: %q %v", b, err)
			}
		}
	})
	t.Run("a US Government cloud", func(t *testing.T) {
		l := startLab(t, "GATEWAY_CLOUD=gcc-high")
		if !strings.HasSuffix(l.tries[0], "--cloud gcc-high") || !strings.Contains(l.tries[1], "https://winatp-gw-usgt.microsoft.com/commands/test") {
			t.Errorf("printed commands do not follow the cloud: %q", l.tries)
		}
		out, errOut, code := runCLI(t, nil, "probe", "--via", l.gateway, "--ca", l.ca, "--cloud", "gcc-high", "--timeout", "5s")
		if code != 0 {
			t.Fatalf("probe --cloud gcc-high: exit %d\n%s\n%s\nlab: %s", code, out, errOut, l.stderr)
		}
		for _, want := range []string{"Testing URL : https://winatp-gw-usgt.microsoft.com/test",
			"Testing URL : https://unitedstates1.x.cp.wd.microsoft.us/api/report",
			"Testing URL : https://automatedirstrffusgv.blob.core.usgovcloudapi.net/",
			"Testing URL : http://crl.microsoft.com/pki/crl/products/",
			"Testing URL : http://www.microsoft.com/pki/certs/"} {
			if !strings.Contains(out, want) {
				t.Errorf("gcc-high probe lacks %q", want)
			}
		}
		if strings.Contains(out, "winatp-gw-weu") || strings.Contains(out, "winatp-gw-usmt") {
			t.Errorf("gcc-high probe tests another cloud's hosts:\n%s", out)
		}
		// GCC's endpoints through a GCC High gateway: refused, reason cloud.
		out, _, code = runCLI(t, nil, "probe", "--via", l.gateway, "--ca", l.ca, "--cloud", "gcc", "--timeout", "5s")
		if code != 1 || !strings.Contains(out, "403 cloud") || !strings.Contains(out, "GATEWAY_CLOUD") {
			t.Errorf("gcc probe through a gcc-high lab: exit %d, want 1 with reason cloud:\n%s", code, out)
		}
		if curl, err := exec.LookPath("curl"); err == nil {
			args := append([]string{"-s", "--noproxy", "", "-w", "%{http_code}"}, strings.Fields(strings.TrimPrefix(l.tries[1], "curl "))...)
			if b, err := exec.Command(curl, args...).Output(); err != nil || string(b) != "200" {
				t.Errorf("the printed curl command: %q %v", b, err)
			}
		}
	})
	t.Run("crl row switched off", func(t *testing.T) {
		l := startLab(t, "GATEWAY_GEOGRAPHIES=EU", "GATEWAY_DISABLED_SERVICES=crl")
		out, code := l.probe(t)
		if code != 1 || !strings.Contains(out, "crl-blocked") || !strings.Contains(out, "0x80072F8F") {
			t.Errorf("probe exit %d, want 1 naming the CRL cause:\n%s", code, out)
		}
	})
	t.Run("gateway demands authentication from system context", func(t *testing.T) {
		h, _ := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
		f := filepath.Join(t.TempDir(), "users")
		writeFile(t, f, "alice:"+string(h)+"\n")
		l := startLab(t, "GATEWAY_GEOGRAPHIES=EU", "GATEWAY_AUTH_HTPASSWD="+f, "GATEWAY_ANONYMOUS=none")
		out, code := l.probe(t)
		if code != 1 || !strings.Contains(out, "proxy-auth-required") {
			t.Errorf("probe exit %d, want 1 naming the 407 cause:\n%s", code, out)
		}
		if _, code := l.probe(t, "--proxy-user", "alice:pw"); code != 0 {
			t.Errorf("probe with credentials: exit %d", code)
		}
	})
}

func TestPACServedAndPrinted(t *testing.T) {
	l := startLab(t, "GATEWAY_GEOGRAPHIES=EU")
	resp, err := http.Get(l.gateway + "/proxy.pac")
	if err != nil {
		t.Fatal(err)
	}
	served, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-ns-proxy-autoconfig" {
		t.Fatalf("/proxy.pac: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	wpad, err := http.Get(l.gateway + "/wpad.dat")
	if err != nil || wpad.StatusCode != 200 {
		t.Fatalf("/wpad.dat: %v %v", wpad, err)
	}
	wpad.Body.Close()
	printed, _, code := runCLI(t, []string{"GATEWAY_GEOGRAPHIES=EU"}, "pac", "--proxy", strings.TrimPrefix(l.gateway, "http://"))
	if code != 0 || printed != string(served) {
		t.Errorf("gateway pac (exit %d) differs from the served file", code)
	}
	if !strings.Contains(printed, `"PROXY `+strings.TrimPrefix(l.gateway, "http://")+`"`) {
		t.Errorf("PAC does not advertise the gateway")
	}
	if _, errOut, code := runCLI(t, []string{"GATEWAY_LISTEN=0.0.0.0:3128"}, "pac"); code != 2 || !strings.Contains(errOut, "GATEWAY_PUBLIC_ADDR") {
		t.Errorf("pac on a wildcard listener without a public address: exit %d %q", code, errOut)
	}
}

func TestClientConfigCLI(t *testing.T) {
	for _, format := range []string{"cmd", "ps1", "reg"} {
		out, errOut, code := runCLI(t, nil, "client-config", "--proxy", "gw.example.net:3128", "--format", format)
		if code != 0 || !strings.Contains(strings.ReplaceAll(out, "\x00", ""), "TelemetryProxyServer") {
			t.Errorf("%s: exit %d %q", format, code, errOut)
		}
	}
	if _, errOut, code := runCLI(t, nil, "client-config", "--proxy", `gw:3128" & calc`); code != 2 || !strings.Contains(errOut, "Proxy") {
		t.Errorf("injection: exit %d %q", code, errOut)
	}
	if _, _, code := runCLI(t, nil, "client-config"); code != 2 {
		t.Errorf("missing --proxy: exit %d", code)
	}
}

// lockedWriter makes a strings.Builder safe for a process's stderr.
type lockedWriter struct {
	mu sync.Mutex
	w  *strings.Builder
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (l *lockedWriter) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.String()
}
