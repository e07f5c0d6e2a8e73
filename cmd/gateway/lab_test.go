package main

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/defendergw/gateway/internal/probe"
	"github.com/defendergw/gateway/internal/testutil"
)

// labProcess is `gateway lab` running on loopback.
type labProcess struct {
	cmd     *exec.Cmd
	gateway string // http://host:port
	ca      string
	admin   string
	dir     string   // the "lab dir:" line
	tries   []string // the commands the lab prints ("try: ...")
	stderr  *testutil.Buffer
}

func startLab(t *testing.T, env ...string) *labProcess {
	t.Helper()
	return startLabArgs(t, []string{"--dir", t.TempDir()}, env...)
}

// startLabArgs starts the built binary's lab with args (besides a
// listener on an OS-chosen port).
func startLabArgs(t *testing.T, args []string, env ...string) *labProcess {
	t.Helper()
	cmd := exec.Command(gatewayBin, append([]string{"lab", "--listen", "127.0.0.1:0"}, args...)...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "GATEWAY_ADMIN_LISTEN=127.0.0.1:0"}, env...)
	return startLabCmd(t, cmd)
}

// startLabCmd starts cmd (a lab, or go run of one) and reads what it
// prints until the gateway, CA, admin listener and both commands are known.
func startLabCmd(t *testing.T, cmd *exec.Cmd) *labProcess {
	t.Helper()
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	l := &labProcess{cmd: cmd, stderr: &testutil.Buffer{}}
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
	deadline := time.After(60 * time.Second) // go run compiles first
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
			} else if v, ok := strings.CutPrefix(line, "lab dir: "); ok {
				l.dir = v
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
		js, code := l.probe(t, "--format", "json")
		var doc struct {
			Results []struct {
				URL       string `json:"url"`
				CRL       bool   `json:"crl"`
				OK        bool   `json:"ok"`
				Status    int    `json:"status"`
				Diagnosis string `json:"diagnosis"`
				Detail    string `json:"detail"`
			} `json:"results"`
		}
		if err := json.Unmarshal([]byte(js), &doc); err != nil || code != 1 {
			t.Fatalf("probe: exit %d, %v; want 1 and JSON", code, err)
		}
		crl := 0
		for _, r := range doc.Results {
			if !r.CRL {
				continue
			}
			crl++
			// The gateway names a switched-off service service-disabled
			// (older ones refused it by its port): either way the probe
			// gives the refusal's own cause and the CRL consequence.
			want := probe.DiagCRLBlocked
			if strings.Contains(r.Detail, "service-disabled") {
				want = probe.DiagServiceDisabled
				if !strings.Contains(r.Detail, "GATEWAY_DISABLED_SERVICES") {
					t.Errorf("%s: detail %q does not name GATEWAY_DISABLED_SERVICES", r.URL, r.Detail)
				}
			}
			if r.OK || r.Status != 403 || r.Diagnosis != want || !strings.Contains(r.Detail, "0x80072F8F") {
				t.Errorf("%s: ok=%v status %d diagnosis %q detail %q; want 403 %s naming 0x80072F8F", r.URL, r.OK, r.Status, r.Diagnosis, r.Detail, want)
			}
		}
		if crl == 0 {
			t.Error("no CRL/CTL target probed")
		}
	})
	t.Run("too many failed authentications", func(t *testing.T) {
		h, _ := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
		f := filepath.Join(t.TempDir(), "users")
		writeFile(t, f, "alice:"+string(h)+"\n")
		l := startLab(t, "GATEWAY_GEOGRAPHIES=EU", "GATEWAY_AUTH_HTPASSWD="+f, "GATEWAY_ANONYMOUS=none", "GATEWAY_AUTH_FAILURES_PER_MINUTE=1")
		out, code := l.probe(t, "--proxy-user", "alice:wrong")
		if code != 1 || !strings.Contains(out, "Failed (429 auth-rate-limited: ") || !strings.Contains(out, "\nauth-rate-limited (") {
			t.Errorf("probe exit %d, want 1 naming the cause auth-rate-limited:\n%s", code, out)
		}
		if strings.Contains(out, "429 gateway-refused") {
			t.Errorf("a 429 reported as gateway-refused:\n%s", out)
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
	if _, errOut, code := runCLI(t, nil, "client-config", "--proxy", `gw:3128" & calc`); code != 2 || !strings.Contains(errOut, "--proxy: ") {
		t.Errorf("injection: exit %d %q", code, errOut)
	}
	if _, _, code := runCLI(t, nil, "client-config"); code != 2 {
		t.Errorf("missing --proxy: exit %d", code)
	}
	// The forms WinHTTP takes, as an administrator types them.
	for _, bypass := range []string{"<local>;*.contoso.local", "<local>, *.contoso.local"} {
		out, errOut, code := runCLI(t, nil, "client-config", "--proxy", "gw.example.net:3128", "--bypass", bypass)
		if want := `netsh winhttp set proxy proxy-server="gw.example.net:3128" bypass-list="<local>;*.contoso.local"` + "\r\n"; code != 0 || !strings.Contains(out, want) {
			t.Errorf("--bypass %q: exit %d %q; want the line %q", bypass, code, errOut, want)
		}
	}
}

// runPrinted runs a command the lab printed, verbatim, with sh -c in dir
// and only env (and PATH) in its environment.
func runPrinted(t *testing.T, dir, command string, env ...string) (string, int) {
	t.Helper()
	sh := exec.Command("sh", "-c", command)
	sh.Dir = dir
	sh.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}, env...)
	out, err := sh.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), 0
}

// TestLabPrintedCommands: what the lab prints as "try:" works as printed,
// from a shell that knows nothing of the lab's settings, or one set for
// another cloud and geography.
func TestLabPrintedCommands(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl not installed")
	}
	tests := []struct {
		name     string
		args     []string // lab flags
		env      []string // lab environment
		wantArgs string   // in the printed probe
	}{
		{"--geo EU", []string{"--geo", "EU"}, nil, " --cloud commercial --geo EU"},
		{"GATEWAY_GEOGRAPHIES", nil, []string{"GATEWAY_GEOGRAPHIES=uk,ww"}, " --cloud commercial --geo UK"},
		{"--cloud gcc-high", []string{"--cloud", "gcc-high"}, nil, " --cloud gcc-high"},
		{"every geography", nil, nil, " --cloud commercial --geo US,EU,UK,AU,UAE,CH,IN"},
		{"dir with a space and a quote", []string{"--geo", "AU", "--dir", filepath.Join(t.TempDir(), "lab 'ca'")}, nil, " --cloud commercial --geo AU"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := tt.args
			if !slices.Contains(args, "--dir") {
				args = append(args, "--dir", t.TempDir())
			}
			l := startLabArgs(t, args, tt.env...)
			probe, curl := l.tries[0], l.tries[1]
			if want := shellQuote(gatewayBin) + " probe --via " + l.gateway + " --ca " + shellQuote(l.ca) + tt.wantArgs; probe != want {
				t.Errorf("printed probe:\n got %s\nwant %s", probe, want)
			}
			if !strings.HasPrefix(curl, "curl --fail -x "+l.gateway+" --cacert "+shellQuote(l.ca)+" https://") {
				t.Errorf("printed curl: %s", curl)
			}
			for _, shellEnv := range [][]string{nil, {"GATEWAY_CLOUD=dod", "GATEWAY_GEOGRAPHIES=IN"}} {
				for _, c := range l.tries {
					out, code := runPrinted(t, t.TempDir(), c, shellEnv...)
					if code != 0 {
						t.Errorf("%s (environment %q): exit %d, want 0\n%s\nlab: %s", c, shellEnv, code, out, l.stderr)
					}
				}
			}
		})
	}
}

// TestLabPrintedCommandsGoRun: a lab started with go run, whose binary is
// gone once it stops, prints go run commands that work from the
// repository root.
func TestLabPrintedCommandsGoRun(t *testing.T) {
	if testing.Short() {
		t.Skip("compiles the gateway twice")
	}
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "run", "./cmd/gateway", "lab", "--listen", "127.0.0.1:0", "--geo", "EU", "--dir", t.TempDir())
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "GATEWAY_ADMIN_LISTEN=127.0.0.1:0")
	// go run and the lab it starts form a group, stopped together.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	l := startLabCmd(t, cmd)
	t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
	if !strings.HasPrefix(l.tries[0], "go run ./cmd/gateway probe --via "+l.gateway+" ") {
		t.Fatalf("printed probe: %s", l.tries[0])
	}
	// The go command needs its caches; it must not reach the network.
	goVars := []string{"GOCACHE=" + goEnv(t, "GOCACHE"), "GOPATH=" + goEnv(t, "GOPATH"), "GOMODCACHE=" + goEnv(t, "GOMODCACHE"),
		"GOPROXY=off", "GOTOOLCHAIN=local", "GOFLAGS=-mod=readonly"}
	if out, code := runPrinted(t, root, l.tries[0], goVars...); code != 0 {
		t.Errorf("%s: exit %d\n%s", l.tries[0], code, out)
	}
}

func goEnv(t *testing.T, name string) string {
	t.Helper()
	out, err := exec.Command("go", "env", name).Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

func TestSelfCommand(t *testing.T) {
	tests := []struct {
		exe  string
		want []string
	}{
		{"/usr/local/bin/gateway", []string{"/usr/local/bin/gateway"}},
		{"/home/a/src/gateway/gateway", []string{"/home/a/src/gateway/gateway"}},
		{"/tmp/go-build1234567/b001/exe/gateway", []string{"go", "run", "./cmd/gateway"}},
		{"/var/tmp/custom/go-build42/b001/exe/gateway", []string{"go", "run", "./cmd/gateway"}},
		{"/root/.cache/go-build/3b/3ba25c0f50f6cbe03e6600b692e6e2fa2074af3477eaa501c2051987c500cf57-d/gateway", []string{"go", "run", "./cmd/gateway"}},
		// Look-alikes outside the build cache.
		{"/opt/exe/gateway", []string{"/opt/exe/gateway"}},
		{"/srv/b001/exe/gateway", []string{"/srv/b001/exe/gateway"}},
		{"/srv/3b/release-d/gateway", []string{"/srv/3b/release-d/gateway"}},
	}
	for _, tt := range tests {
		t.Run(tt.exe, func(t *testing.T) {
			if got := selfCommandFor(tt.exe); !slices.Equal(got, tt.want) {
				t.Errorf("selfCommandFor(%q) = %q, want %q", tt.exe, got, tt.want)
			}
		})
	}
}

func TestShellQuote(t *testing.T) {
	tests := []struct{ in, want string }{
		{"/tmp/gateway-lab-1/ca.pem", "/tmp/gateway-lab-1/ca.pem"},
		{"http://127.0.0.1:3128", "http://127.0.0.1:3128"},
		{"US,EU", "US,EU"},
		{"", "''"},
		{"/tmp/lab ca/ca.pem", "'/tmp/lab ca/ca.pem'"},
		{"it's", `'it'\''s'`},
		{"$HOME", "'$HOME'"},
		{"https://go.microsoft.com/fwlink/?linkid=2120136", "'https://go.microsoft.com/fwlink/?linkid=2120136'"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got := shellQuote(tt.in)
			if got != tt.want {
				t.Errorf("shellQuote(%q) = %s, want %s", tt.in, got, tt.want)
			}
			// The shell reads it back as the one word it was.
			if out, err := exec.Command("sh", "-c", "printf %s "+got).Output(); err != nil || string(out) != tt.in {
				t.Errorf("sh reads %s as %q (%v), want %q", got, out, err, tt.in)
			}
		})
	}
}

// TestLabTempDir: the lab's temporary CA directory goes when the lab stops
// on SIGTERM or SIGINT; a --dir stays.
func TestLabTempDir(t *testing.T) {
	tests := []struct {
		name     string
		sig      syscall.Signal
		dir      bool // --dir given
		wantGone bool
	}{
		{"temporary, SIGTERM", syscall.SIGTERM, false, true},
		{"temporary, SIGINT", syscall.SIGINT, false, true},
		{"--dir, SIGTERM", syscall.SIGTERM, true, false},
		{"--dir, SIGINT", syscall.SIGINT, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tmp := t.TempDir()
			var args []string
			want := ""
			if tt.dir {
				want = filepath.Join(t.TempDir(), "lab")
				args = []string{"--dir", want}
			}
			l := startLabArgs(t, append(args, "--geo", "EU"), "TMPDIR="+tmp)
			dir := filepath.Dir(l.ca)
			switch {
			case tt.dir && dir != want:
				t.Fatalf("lab CA %s, want it in --dir %s", l.ca, want)
			case !tt.dir && filepath.Dir(dir) != tmp:
				t.Fatalf("lab CA %s, want it in a new directory under TMPDIR %s", l.ca, tmp)
			}
			if !strings.HasPrefix(l.dir, dir+" (") {
				t.Errorf("lab dir line %q does not name %s", l.dir, dir)
			}
			if _, err := os.Stat(l.ca); err != nil {
				t.Fatalf("while the lab runs: %v", err)
			}
			l.cmd.Process.Signal(tt.sig)
			done := make(chan error, 1)
			go func() { done <- l.cmd.Wait() }()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("lab exit after %v: %v\n%s", tt.sig, err, l.stderr)
				}
			case <-time.After(30 * time.Second):
				t.Fatalf("lab did not stop on %v", tt.sig)
			}
			_, err := os.Stat(dir)
			if gone := os.IsNotExist(err); gone != tt.wantGone {
				t.Errorf("after %v: %s gone = %v (stat: %v), want %v", tt.sig, dir, gone, err, tt.wantGone)
			}
			if !tt.wantGone {
				if _, err := os.Stat(l.ca); err != nil {
					t.Errorf("--dir lost the CA: %v", err)
				}
			}
		})
	}
}

// TestProbeProgressNotInFiles: the \r progress line never reaches a file or
// a pipe (a terminal is tested in internal/probe).
func TestProbeProgressNotInFiles(t *testing.T) {
	l := startLab(t, "GATEWAY_GEOGRAPHIES=EU")
	args := []string{"probe", "--via", l.gateway, "--ca", l.ca, "--geo", "EU"}
	t.Run("pipe", func(t *testing.T) {
		_, errOut, code := runCLI(t, nil, args...)
		if code != 0 || strings.Contains(errOut, "\r") || strings.Contains(errOut, "probing") {
			t.Errorf("exit %d, stderr %q; want 0 and no progress", code, errOut)
		}
	})
	t.Run("file", func(t *testing.T) {
		f, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		cmd := exec.Command(gatewayBin, args...)
		cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
		cmd.Stderr = f // the child writes to the file itself, not to a pipe
		if err := cmd.Run(); err != nil {
			t.Fatalf("probe: %v", err)
		}
		b, _ := os.ReadFile(f.Name())
		if strings.Contains(string(b), "\r") || strings.Contains(string(b), "probing") {
			t.Errorf("stderr file holds progress: %q", b)
		}
	})
}
