package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/defendergw/gateway/internal/testutil"
)

// gatewayBin is the real binary, built once for the tests in this file.
var gatewayBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "gateway-bin")
	if err != nil {
		panic(err)
	}
	gatewayBin = filepath.Join(dir, "gateway")
	if bin := os.Getenv(testBinEnv); bin != "" {
		// A re-run of this test binary inside a network namespace
		// (netns_test.go) reuses the parent's build.
		gatewayBin = bin
	} else if out, err := exec.Command("go", "build", "-o", gatewayBin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building gateway: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// runCLI runs the binary with a clean environment plus env.
func runCLI(t *testing.T, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(gatewayBin, args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return o.String(), e.String(), code
}

func TestExplainCLI(t *testing.T) {
	tests := []struct {
		name     string
		env      []string
		args     []string
		wantCode int
		want     []string
	}{
		{"allowed", []string{"GATEWAY_GEOGRAPHIES=EU"}, []string{"explain", "winatp-gw-weu.microsoft.com:443"}, 0,
			[]string{"decision:", "allowed", "edr-cnc", "EU", "source:", `S1#standard-device-connectivity-urls-commercial.md, table "Microsoft Defender URLs", row`}},
		{"geography", []string{"GATEWAY_GEOGRAPHIES=EU"}, []string{"explain", "https://winatp-gw-cus.microsoft.com/test"}, 1,
			[]string{"refused", "geography", "US"}},
		{"flag after target", nil, []string{"explain", "winatp-gw-cus.microsoft.com", "--geo", "EU"}, 1,
			[]string{"geography"}},
		{"crl path", nil, []string{"explain", "http://crl.microsoft.com/pki/crl/products/a.crl"}, 0,
			[]string{"allowed", "crl"}},
		// The newest lists open crl.microsoft.com host-wide on port 80 and
		// www.microsoft.com only under /pkiops/ and /pki/.
		{"crl host-wide", nil, []string{"explain", "http://crl.microsoft.com/x"}, 0, []string{"allowed", "crl"}},
		{"www pki intermediate", nil, []string{"explain", "http://www.microsoft.com/pki/mscorp/Microsoft%20RSA%20TLS%20CA%2001.crt"}, 0, []string{"allowed", "crl"}},
		{"www pkiops crl", nil, []string{"explain", "http://www.microsoft.com/pkiops/crl/MicSecSerCA2011_2011-10-18.crl"}, 0, []string{"allowed", "crl"}},
		{"www other path on 80", nil, []string{"explain", "http://www.microsoft.com/en-us/"}, 1, []string{"not-listed"}},
		{"www pki prefix confusion", nil, []string{"explain", "http://www.microsoft.com/pkiopsevil/x"}, 1, []string{"not-listed"}},
		// Microsoft writes *ecs.office.com/...: the name itself and its subdomains.
		{"ecs apex", nil, []string{"explain", "https://ecs.office.com/config/v1/MicrosoftWindowsDefenderClient/1.0.0.0"}, 0,
			[]string{"allowed", "av-core", "/config/v1/MicrosoftWindowsDefenderClient"}},
		{"ecs subdomain", nil, []string{"explain", "mdav.ecs.office.com:443"}, 0, []string{"allowed", "av-core"}},
		{"ecs lookalike", nil, []string{"explain", "xecs.office.com:443"}, 1, []string{"not-listed"}},
		{"linux ecs (streamlined)", nil, []string{"explain", "config.edge.skype.com:443"}, 0, []string{"allowed", "config-management"}},
		{"blob accounts listed by default", nil, []string{"explain", "someaccount.blob.core.windows.net:443"}, 1, []string{"not-listed"}},
		{"blob wildcard on request", []string{"GATEWAY_BLOB_SCOPE=wildcard"}, []string{"explain", "someaccount.blob.core.windows.net:443"}, 0,
			[]string{"allowed", "mma"}},
		{"uae storage", []string{"GATEWAY_GEOGRAPHIES=uae"}, []string{"explain", "automatedirstrprdaen0a.blob.core.windows.net:443"}, 0,
			[]string{"allowed", "automated-ir", "UAE"}},
		{"switzerland gets WW", []string{"GATEWAY_GEOGRAPHIES=ch"}, []string{"explain", "edr-weu.eu.endpoint.security.microsoft.com:443"}, 1,
			[]string{"geography", "geographies WW,CH"}},
		{"switzerland streamlined", []string{"GATEWAY_GEOGRAPHIES=CH"}, []string{"explain", "mdav.ch.endpoint.security.microsoft.com:443"}, 0,
			[]string{"allowed", "streamlined", "WW"}},
		{"india gets WW", []string{"GATEWAY_GEOGRAPHIES=In"}, []string{"explain", "events.data.microsoft.com:443"}, 0,
			[]string{"allowed", "geographies WW,IN"}},
		{"unknown data location", []string{"GATEWAY_GEOGRAPHIES=EU,XX"}, []string{"explain", "a.example.com"}, 2,
			[]string{"GATEWAY_GEOGRAPHIES", "XX", "CH, IN"}},
		{"government environment as a data location", []string{"GATEWAY_GEOGRAPHIES=GCC"}, []string{"explain", "a.example.com"}, 2,
			[]string{"GATEWAY_GEOGRAPHIES", "GCC", "GATEWAY_CLOUD"}},
		{"commercial refuses a government host", nil, []string{"explain", "winatp-gw-usgt.microsoft.com:443"}, 1,
			[]string{"refused", "cloud", "GCC-High"}},
		{"gcc-high allows its own", []string{"GATEWAY_CLOUD=gcc-high"}, []string{"explain", "winatp-gw-usgt.microsoft.com:443"}, 0,
			[]string{"allowed", "edr-cnc", "cloud gcc-high", "geographies USGov,GCC-High"}},
		{"gcc-high refuses GCC-only", []string{"GATEWAY_CLOUD=gcc-high"}, []string{"explain", "winatp-gw-usmt.microsoft.com:443"}, 1,
			[]string{"refused", "cloud", "GCC"}},
		{"gcc-high refuses DoD-only", []string{"GATEWAY_CLOUD=GCC-High"}, []string{"explain", "winatp-gw-usgv.microsoft.com:443"}, 1,
			[]string{"refused", "cloud", "DoD"}},
		{"gcc-high refuses commercial", []string{"GATEWAY_CLOUD=gcc-high"}, []string{"explain", "winatp-gw-weu.microsoft.com:443"}, 1,
			[]string{"refused", "cloud"}},
		{"gcc-high streamlined", []string{"GATEWAY_CLOUD=gcc-high"}, []string{"explain", "edr.endpoint.security.microsoft.us:443"}, 0,
			[]string{"allowed", "streamlined", "USGov"}},
		{"gcc mod config", []string{"GATEWAY_CLOUD=gcc"}, []string{"explain", "https://gccmod.ecs.office.com/config/v1/x"}, 0,
			[]string{"allowed", "config-management", "GCC"}},
		{"dod refuses gcc mod", []string{"GATEWAY_CLOUD=dod"}, []string{"explain", "https://gccmod.ecs.office.com/config/v1/x"}, 1,
			[]string{"refused", "cloud"}},
		{"gov crl path", []string{"GATEWAY_CLOUD=dod"}, []string{"explain", "http://crl.microsoft.com/pki/crl/products/a.crl"}, 0,
			[]string{"allowed", "crl", "USGov"}},
		{"gov crl other path", []string{"GATEWAY_CLOUD=dod"}, []string{"explain", "http://crl.microsoft.com/other"}, 1,
			[]string{"not-listed"}},
		{"--cloud flag", nil, []string{"explain", "--cloud", "dod", "winatp-gw-usgv.microsoft.com:443"}, 0, []string{"allowed", "cloud dod"}},
		{"--cloud sets env geographies aside", []string{"GATEWAY_GEOGRAPHIES=EU"}, []string{"explain", "winatp-gw-usmt.microsoft.com", "--cloud", "gcc"}, 0,
			[]string{"allowed", "cloud gcc"}},
		{"--cloud and --geo together", nil, []string{"explain", "--cloud", "gcc", "--geo", "EU", "a.example.com"}, 2,
			[]string{"--geo EU cannot be combined with --cloud gcc"}},
		{"--geo with a government cloud in the environment", []string{"GATEWAY_CLOUD=gcc"}, []string{"explain", "--geo", "EU", "a.example.com"}, 2,
			[]string{"--geo EU cannot be combined with GATEWAY_CLOUD=gcc"}},
		{"cloud and geographies together", []string{"GATEWAY_CLOUD=gcc", "GATEWAY_GEOGRAPHIES=EU"}, []string{"explain", "a.example.com"}, 2,
			[]string{"GATEWAY_GEOGRAPHIES=EU", "GATEWAY_CLOUD=gcc"}},
		{"unknown cloud", []string{"GATEWAY_CLOUD=azure-china"}, []string{"explain", "a.example.com"}, 2,
			[]string{"GATEWAY_CLOUD", "commercial, gcc, gcc-high, dod"}},
		{"json", nil, []string{"explain", "--format", "json", "127.0.0.1:443"}, 1, []string{`"reason": "ip-literal"`, `"cloud": "commercial"`}},
		{"bad geography", []string{"GATEWAY_GEOGRAPHIES=MARS"}, []string{"explain", "a.example.com"}, 2,
			[]string{"GATEWAY_GEOGRAPHIES"}},
		{"no target", nil, []string{"explain"}, 2, []string{"usage"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := runCLI(t, tt.env, tt.args...)
			if code != tt.wantCode {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tt.wantCode, out, errOut)
			}
			for _, w := range tt.want {
				if !strings.Contains(out+errOut, w) {
					t.Errorf("output lacks %q:\n%s%s", w, out, errOut)
				}
			}
		})
	}
}

func TestCatalogCLI(t *testing.T) {
	out, _, code := runCLI(t, []string{"GATEWAY_GEOGRAPHIES=EU"}, "catalog", "--format", "json")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	var doc struct {
		Version     string   `json:"catalog_version"`
		Geographies []string `json:"geographies"`
		Rules       []struct {
			Host      string `json:"host"`
			Geography string `json:"geography"`
		} `json:"rules"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatal(err)
	}
	if doc.Version == "" || strings.Join(doc.Geographies, ",") != "WW,EU" {
		t.Errorf("version %q geographies %v", doc.Version, doc.Geographies)
	}
	hosts := map[string]bool{}
	for _, r := range doc.Rules {
		hosts[r.Host] = true
		if r.Geography != "WW" && r.Geography != "EU" {
			t.Errorf("EU catalog lists %s of %s", r.Host, r.Geography)
		}
	}
	if !hosts["winatp-gw-weu.microsoft.com"] || hosts["winatp-gw-cus.microsoft.com"] {
		t.Errorf("EU catalog: weu %v cus %v", hosts["winatp-gw-weu.microsoft.com"], hosts["winatp-gw-cus.microsoft.com"])
	}

	out, _, code = runCLI(t, nil, "catalog", "--format", "csv", "--all")
	recs, err := csv.NewReader(strings.NewReader(out)).ReadAll()
	if code != 0 || err != nil || len(recs) < 100 {
		t.Fatalf("csv: exit %d, err %v, %d records", code, err, len(recs))
	}
	out, _, code = runCLI(t, nil, "catalog")
	if code != 0 || !strings.Contains(out, "# Defender catalog") || !strings.Contains(out, "*.wdcp.microsoft.com") {
		t.Errorf("table output:\n%s", out)
	}
	if _, _, code := runCLI(t, nil, "catalog", "--format", "xml"); code != 2 {
		t.Errorf("bad format: exit %d, want 2", code)
	}
	if out, _, code := runCLI(t, nil, "--help"); code != 0 || !strings.Contains(out, "explain") || !strings.Contains(out, "catalog") {
		t.Errorf("--help: exit %d\n%s", code, out)
	}
}

// servedGateway is the real binary serving on loopback.
type servedGateway struct {
	cmd   *exec.Cmd
	addr  string   // the first proxy listener
	addrs []string // every proxy listener (GATEWAY_LISTEN)
	admin string
	// transparent lists the GATEWAY_TRANSPARENT_LISTEN addresses, comma
	// separated ("" if none).
	transparent string
	stderr      *bytes.Buffer
	lines       chan string
}

// startGateway starts the binary and waits for its "gateway listening" line.
func startGateway(t *testing.T, env ...string) *servedGateway {
	t.Helper()
	return startGatewayCmd(t, exec.Command(gatewayBin, "serve"), env...)
}

// startGatewayCmd is startGateway with the command given (a wrapper that
// runs the binary, say).
func startGatewayCmd(t *testing.T, cmd *exec.Cmd, env ...string) *servedGateway {
	t.Helper()
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "GATEWAY_LISTEN=127.0.0.1:0",
		"GATEWAY_ADMIN_LISTEN=127.0.0.1:0"}, env...)
	pr, pw := io.Pipe()
	cmd.Stderr = pw
	g := &servedGateway{cmd: cmd, stderr: &bytes.Buffer{}, lines: make(chan string, 1000)}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			g.lines <- sc.Text()
		}
		close(g.lines)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		pw.Close()
	})
	deadline := time.After(10 * time.Second)
	for g.addr == "" {
		select {
		case l, ok := <-g.lines:
			if !ok {
				t.Fatalf("gateway exited before listening:\n%s", g.stderr)
			}
			g.stderr.WriteString(l + "\n")
			var m struct {
				Msg         string `json:"msg"`
				Listen      string `json:"listen"`
				Admin       string `json:"admin"`
				Transparent string `json:"transparent"`
			}
			if json.Unmarshal([]byte(l), &m) == nil && m.Msg == "gateway listening" {
				g.addrs = strings.Split(m.Listen, ",")
				g.addr, g.admin, g.transparent = g.addrs[0], m.Admin, m.Transparent
			}
		case <-deadline:
			t.Fatalf("gateway did not start:\n%s", g.stderr)
		}
	}
	return g
}

// log drains the log lines read so far.
func (g *servedGateway) log() string {
	for {
		select {
		case l, ok := <-g.lines:
			if !ok {
				return g.stderr.String()
			}
			g.stderr.WriteString(l + "\n")
		case <-time.After(50 * time.Millisecond):
			return g.stderr.String()
		}
	}
}

func TestServeBinary(t *testing.T) {
	dns := testutil.NewDNS(t)
	ca := testutil.NewCA(t)
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "lab upstream")
	}))
	up.TLS = &tls.Config{Certificates: []tls.Certificate{ca.Leaf(t, "app.lab.test")}}
	up.StartTLS()
	t.Cleanup(up.Close)
	upPort := up.Listener.Addr().(*net.TCPAddr).Port
	dns.Set("app.lab.test", "127.0.0.1")
	dns.Set("winatp-gw-cus.microsoft.com", "127.0.0.1")

	// A canary proxy: if the gateway ever followed HTTP(S)_PROXY from its
	// environment, the canary would see a connection.
	canary := testutil.Sink(t, "127.0.0.1:0")
	canaryURL := "http://" + canary.Addr().String()

	rules := filepath.Join(t.TempDir(), "rules.yaml")
	writeFile(t, rules, fmt.Sprintf("rules:\n  - action: allow\n    host: '*.lab.test'\n    ports: [%d]\n", upPort))
	g := startGateway(t,
		"GATEWAY_GEOGRAPHIES=EU",
		"GATEWAY_DNS_SERVERS="+dns.Addr,
		"GATEWAY_RULES_FILE="+rules,
		"GATEWAY_ALLOW_PRIVATE_DESTINATIONS=127.0.0.1/32",
		"GATEWAY_LOG_LEVEL=debug", // per-request outcome lines go to the operational log only at debug
		"HTTPS_PROXY="+canaryURL, "HTTP_PROXY="+canaryURL, "https_proxy="+canaryURL, "http_proxy="+canaryURL,
		"ALL_PROXY="+canaryURL,
	)
	proxyURL, _ := url.Parse("http://" + g.addr)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		Proxy: http.ProxyURL(proxyURL), TLSClientConfig: &tls.Config{RootCAs: ca.Pool}}}

	resp, err := client.Get(fmt.Sprintf("https://app.lab.test:%d/", upPort))
	if err != nil {
		t.Fatalf("allowed tunnel: %v\n%s", err, g.log())
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "lab upstream" {
		t.Errorf("body %q", body)
	}

	_, err = client.Get("https://winatp-gw-cus.microsoft.com/")
	if err == nil || !strings.Contains(err.Error(), "Forbidden") {
		t.Errorf("US host through EU gateway: err = %v, want Forbidden", err)
	}
	if n := canary.Accepted(); n != 0 {
		t.Errorf("canary proxy from HTTPS_PROXY/HTTP_PROXY saw %d connections", n)
	}
	client.CloseIdleConnections()
	log := g.log()
	for _, want := range []string{`"msg":"outcome","action":"ConnectionBlocked"`, `"reason":"geography"`, `"catalog_version"`} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %s:\n%s", want, log)
		}
	}

	// SIGTERM stops it cleanly.
	g.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- g.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("exit after SIGTERM: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("gateway did not stop on SIGTERM")
	}
}

func TestServeBinaryWarnsWithoutGeographies(t *testing.T) {
	dns := testutil.NewDNS(t)
	g := startGateway(t, "GATEWAY_DNS_SERVERS="+dns.Addr, "GATEWAY_GEOGRAPHY=EU")
	log := g.log()
	if !strings.Contains(log, "GATEWAY_GEOGRAPHIES is not set") {
		t.Errorf("no geography warning:\n%s", log)
	}
	if !strings.Contains(log, `"variable":"GATEWAY_GEOGRAPHY"`) {
		t.Errorf("no warning about the unknown GATEWAY_GEOGRAPHY:\n%s", log)
	}
}

func TestServeBinaryBadConfig(t *testing.T) {
	tests := []struct {
		name string
		env  []string
		want string
	}{
		{"geography", []string{"GATEWAY_GEOGRAPHIES=EU,XX"}, "GATEWAY_GEOGRAPHIES"},
		{"timeout", []string{"GATEWAY_IDLE_TIMEOUT=forever"}, "GATEWAY_IDLE_TIMEOUT"},
		{"listen in use", nil, "GATEWAY_LISTEN"},
		{"non-bcrypt htpasswd", nil, "line 2"},
		{"unlisted without htpasswd", []string{"GATEWAY_UNLISTED=authenticated"}, "GATEWAY_AUTH_HTPASSWD"},
		{"bad client cidr", []string{"GATEWAY_CLIENT_CIDRS=10.0.0.0/33"}, "GATEWAY_CLIENT_CIDRS"},
		{"bad mode", []string{"GATEWAY_MODE=block"}, "GATEWAY_MODE"},
		{"inspect cert without key", []string{"GATEWAY_INSPECT_CA_CERT=/x.pem"}, "GATEWAY_INSPECT_CA_KEY"},
		{"bad blob scope", []string{"GATEWAY_BLOB_SCOPE=some"}, "GATEWAY_BLOB_SCOPE"},
		{"bad tunnel copy", []string{"GATEWAY_TUNNEL_COPY=sendfile"}, "GATEWAY_TUNNEL_COPY"},
		{"bad pprof switch", []string{"GATEWAY_PPROF=maybe"}, "GATEWAY_PPROF"},
		{"https parent", []string{"GATEWAY_PARENT_PROXY=https://gw:s3cret@proxy.corp:443"}, "GATEWAY_PARENT_PROXY"},
		{"parent without port", []string{"GATEWAY_PARENT_PROXY=http://gw:s3cret@proxy.corp"}, "GATEWAY_PARENT_PROXY"},
		{"bypass without parent", []string{"GATEWAY_PARENT_BYPASS=*.contoso.com"}, "GATEWAY_PARENT_PROXY"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := tt.env
			switch tt.name {
			case "listen in use":
				l := testutil.Listen(t, "127.0.0.1:0")
				env = []string{"GATEWAY_LISTEN=" + l.Addr().String(), "GATEWAY_DNS_SERVERS=127.0.0.1:53"}
			case "non-bcrypt htpasswd":
				f := filepath.Join(t.TempDir(), "users.htpasswd")
				writeFile(t, f, "# users\nbob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n")
				env = []string{"GATEWAY_AUTH_HTPASSWD=" + f, "GATEWAY_DNS_SERVERS=127.0.0.1:53"}
				tt.want = f + " line 2"
			}
			_, errOut, code := runCLI(t, env, "serve")
			if code == 0 || !strings.Contains(errOut, tt.want) || strings.Contains(errOut, "W6ph5Mm5") || strings.Contains(errOut, "s3cret") {
				t.Errorf("exit %d, stderr %q: want non-zero and a message naming %s", code, errOut, tt.want)
			}
		})
	}
}

// runCLIWithin is runCLI for a command that must end by itself: one still
// running after d (a "serve --help" that started the proxy) fails the test.
func runCLIWithin(t *testing.T, d time.Duration, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	cmd := exec.CommandContext(ctx, gatewayBin, args...)
	// Listeners on OS-chosen ports, so that a command that wrongly starts
	// a gateway neither clashes with anything nor fails for a busy port.
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "GATEWAY_LISTEN=127.0.0.1:0", "GATEWAY_ADMIN_LISTEN=127.0.0.1:0"}, env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("gateway %s still running after %s (it should have ended at once):\n%s%s", strings.Join(args, " "), d, o.String(), e.String())
	}
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return o.String(), e.String(), code
}

// subcommands are every subcommand with the first line of its usage.
var subcommands = []struct {
	args  []string
	usage string
}{
	{[]string{"serve"}, "usage: gateway [serve]"},
	{[]string{"explain"}, "usage: gateway explain [flags] TARGET"},
	{[]string{"catalog"}, "usage: gateway catalog [flags]"},
	{[]string{"catalog", "import"}, "usage: gateway catalog import FILE... [flags]"},
	{[]string{"lab"}, "usage: gateway lab [flags]"},
	{[]string{"healthcheck"}, "usage: gateway healthcheck [flags]"},
	{[]string{"pac"}, "usage: gateway pac [flags]"},
	{[]string{"client-config"}, "usage: gateway client-config --proxy HOST:PORT [flags]"},
	{[]string{"probe"}, "usage: gateway probe [flags]"},
	{[]string{"version"}, "usage: gateway version"},
}

func TestSubcommandHelp(t *testing.T) {
	for _, sc := range subcommands {
		name := strings.Join(sc.args, " ")
		for _, h := range []string{"--help", "-h", "-help"} {
			t.Run(name+" "+h, func(t *testing.T) {
				out, errOut, code := runCLIWithin(t, 10*time.Second, nil, append(append([]string{}, sc.args...), h)...)
				if code != 0 || errOut != "" {
					t.Errorf("exit %d, stderr %q; want 0 and nothing on stderr", code, errOut)
				}
				if first, _, _ := strings.Cut(out, "\n"); first != sc.usage {
					t.Errorf("first line %q, want %q", first, sc.usage)
				}
			})
		}
		// A help flag among other arguments is still a request for help,
		// not a run (a lab or a proxy would start).
		t.Run(name+" with other flags and --help", func(t *testing.T) {
			args := append(append([]string{}, sc.args...), "--help")
			if name == "explain" || name == "probe" || name == "pac" || name == "catalog" || name == "lab" {
				args = append(append([]string{}, sc.args...), "--geo", "EU", "--help")
			}
			out, _, code := runCLIWithin(t, 10*time.Second, nil, args...)
			if code != 0 || !strings.HasPrefix(out, sc.usage) {
				t.Errorf("exit %d, stdout %.80q; want 0 and the usage", code, out)
			}
		})
		t.Run(name+" unknown flag", func(t *testing.T) {
			out, errOut, code := runCLIWithin(t, 10*time.Second, nil, append(append([]string{}, sc.args...), "--no-such-flag")...)
			if code != 2 || out != "" {
				t.Errorf("exit %d, stdout %q; want 2 and nothing on stdout", code, out)
			}
			if !strings.Contains(strings.ToLower(errOut), "usage") || !strings.Contains(errOut, "no-such-flag") {
				t.Errorf("stderr lacks the usage or the flag:\n%s", errOut)
			}
		})
	}
	t.Run("help COMMAND", func(t *testing.T) {
		for _, sc := range subcommands {
			want, _, _ := runCLI(t, nil, append(append([]string{}, sc.args...), "--help")...)
			if len(sc.args) > 1 {
				continue // "help catalog import" is not a form
			}
			got, _, code := runCLI(t, nil, "help", sc.args[0])
			if code != 0 || got != want {
				t.Errorf("help %s: exit %d, output differs from %s --help:\n%s", sc.args[0], code, sc.args[0], got)
			}
		}
		for _, args := range [][]string{{"help"}, {"help", "help"}, {"--help"}, {"-h"}} {
			if out, _, code := runCLIWithin(t, 10*time.Second, nil, args...); code != 0 || !strings.HasPrefix(out, "Microsoft Defender egress allowlist gateway.") {
				t.Errorf("%v: exit %d, want 0 and the overview", args, code)
			}
		}
	})
}

// TestHelpListsEveryFlag: healthcheck and catalog import, whose flags are
// parsed in files of their own, describe in --help every flag the usage
// after an unknown flag lists.
func TestHelpListsEveryFlag(t *testing.T) {
	flagLine := regexp.MustCompile(`(?m)^  --([a-z-]+)`)
	for _, args := range [][]string{{"healthcheck"}, {"catalog", "import"}} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			_, defaults, _ := runCLI(t, nil, append(append([]string{}, args...), "--no-such-flag")...)
			help, _, _ := runCLI(t, nil, append(append([]string{}, args...), "--help")...)
			names := flagLine.FindAllStringSubmatch(defaults, -1)
			if len(names) == 0 {
				t.Fatalf("no flags listed after an unknown flag:\n%s", defaults)
			}
			for _, m := range names {
				if !regexp.MustCompile(`(?m)^  --` + m[1] + `\b`).MatchString(help) {
					t.Errorf("--help does not describe --%s:\n%s", m[1], help)
				}
			}
		})
	}
}

// TestFlagErrors: a flag's error names the flag as typed, never the
// GATEWAY_* variable it stands in for, an internal field name or a doubled
// prefix.
func TestFlagErrors(t *testing.T) {
	dir := t.TempDir()
	badRules := filepath.Join(dir, "rules.yaml")
	writeFile(t, badRules, "rules:\n  - action: allow\n    host: 'a b'\n")
	missing := filepath.Join(dir, "missing.yaml")
	tests := []struct {
		name string
		env  []string
		args []string
		want []string // in stderr
		not  []string // nowhere in stderr
	}{
		{"explain --geo", nil, []string{"explain", "--geo", "XX", "a.example.com"}, []string{"gateway explain: --geo: ", `"XX"`}, []string{"GATEWAY_GEOGRAPHIES"}},
		{"explain --geo empty list", nil, []string{"explain", "--geo", ",", "a.example.com"}, []string{"--geo"}, []string{"GATEWAY_GEOGRAPHIES"}},
		{"explain --cloud", nil, []string{"explain", "--cloud", "azure-china", "a.example.com"}, []string{"gateway explain: --cloud: ", "azure-china"}, []string{"GATEWAY_CLOUD"}},
		{"explain --rules missing", nil, []string{"explain", "--rules", missing, "a.example.com"}, []string{"--rules: ", missing}, []string{"GATEWAY_RULES_FILE"}},
		{"explain --rules bad", nil, []string{"explain", "--rules", badRules, "a.example.com"}, []string{"--rules: ", badRules}, []string{"GATEWAY_RULES_FILE"}},
		{"rules from the environment", []string{"GATEWAY_RULES_FILE=" + missing}, []string{"explain", "a.example.com"}, []string{"GATEWAY_RULES_FILE"}, []string{"--rules"}},
		{"catalog --geo", nil, []string{"catalog", "--geo", "Mars"}, []string{"gateway catalog: --geo: "}, []string{"GATEWAY_GEOGRAPHIES"}},
		{"catalog --cloud", nil, []string{"catalog", "--cloud", "x"}, []string{"gateway catalog: --cloud: "}, []string{"GATEWAY_CLOUD"}},
		{"catalog --geo GCC", nil, []string{"catalog", "--geo", "GCC"}, []string{"--geo: ", "--cloud"}, []string{"GATEWAY_GEOGRAPHIES:"}},
		{"pac --geo", nil, []string{"pac", "--proxy", "gw:3128", "--geo", "XX"}, []string{"gateway pac: --geo: "}, []string{"GATEWAY_GEOGRAPHIES", "pac: pac:"}},
		{"pac --cloud and --geo", nil, []string{"pac", "--proxy", "gw:3128", "--cloud", "dod", "--geo", "EU"}, []string{"--geo EU cannot be combined with --cloud dod"}, []string{"GATEWAY_"}},
		{"pac --proxy", nil, []string{"pac", "--proxy", "gw"}, []string{`gateway pac: --proxy "gw": want host:port`}, []string{"pac: pac:", "pac: proxy"}},
		{"pac --default", nil, []string{"pac", "--proxy", "gw:3128", "--default", "SOCKS"}, []string{`gateway pac: --default "SOCKS": want DIRECT or PROXY`}, []string{"pac: pac:"}},
		{"pac GATEWAY_PUBLIC_ADDR", []string{"GATEWAY_PUBLIC_ADDR=gw:0"}, []string{"pac"}, []string{`gateway pac: GATEWAY_PUBLIC_ADDR "gw:0": port`}, []string{"--proxy"}},
		{"probe --geo", nil, []string{"probe", "--geo", "XX"}, []string{"gateway probe: --geo: "}, []string{"GATEWAY_GEOGRAPHIES"}},
		{"probe --cloud", nil, []string{"probe", "--cloud", "x"}, []string{"gateway probe: --cloud: "}, []string{"GATEWAY_CLOUD"}},
		{"probe --proxy-user without password", nil, []string{"probe", "--proxy-user", "alice"}, []string{"gateway probe: --proxy-user: ", "user:password"}, nil},
		{"probe --timeout", nil, []string{"probe", "--timeout", "soon"}, []string{`gateway probe: --timeout: invalid value "soon": want a duration such as 5s`}, []string{" -timeout", "for flag"}},
		{"probe --via", nil, []string{"probe", "--via", "gw:3128"}, []string{"gateway probe: --via: "}, nil},
		{"lab --geo", nil, []string{"lab", "--listen", "127.0.0.1:0", "--geo", "XX"}, []string{"gateway lab: --geo: "}, []string{"GATEWAY_GEOGRAPHIES"}},
		{"lab --cloud", nil, []string{"lab", "--listen", "127.0.0.1:0", "--cloud", "x"}, []string{"gateway lab: --cloud: "}, []string{"GATEWAY_CLOUD"}},
		{"lab --listen", nil, []string{"lab", "--listen", "nowhere"}, []string{"gateway lab: --listen: "}, []string{"GATEWAY_LISTEN"}},
		{"lab --addr", nil, []string{"lab", "--listen", "127.0.0.1:0", "--addr", "localhost"}, []string{"gateway lab: --addr: "}, []string{"GATEWAY_ALLOW_PRIVATE_DESTINATIONS"}},
		{"client-config --proxy", nil, []string{"client-config", "--proxy", "gw"}, []string{"gateway client-config: --proxy: "}, []string{"client-config: client-config:", "Proxy:"}},
		{"client-config no --proxy", nil, []string{"client-config"}, []string{"gateway client-config: --proxy is required", "usage: gateway client-config"}, nil},
		{"client-config --pac-url", nil, []string{"client-config", "--proxy", "gw:3128", "--pac-url", "ftp://pac/x"}, []string{"gateway client-config: --pac-url: "}, []string{"PACURL", "client-config: client-config:"}},
		{"client-config --bypass", nil, []string{"client-config", "--proxy", "gw:3128", "--bypass", "<local>;bad host"}, []string{`gateway client-config: --bypass entry "bad host": `}, []string{"Bypass[", "client-config: client-config:"}},
		{"client-config --format", nil, []string{"client-config", "--proxy", "gw:3128", "--format", "bat"}, []string{`gateway client-config: --format: want cmd, ps1 or reg, got "bat"`}, []string{"client-config: client-config:"}},
		{"serve argument", nil, []string{"serve", "extra"}, []string{`gateway serve: unexpected argument "extra"`, "usage: gateway [serve]"}, nil},
		{"version argument", nil, []string{"version", "extra"}, []string{`gateway version: unexpected argument "extra"`}, nil},
		{"explain two targets", nil, []string{"explain", "a.example.com", "b.example.com"}, []string{"gateway explain: want one TARGET", "usage: gateway explain"}, nil},
		{"flag needs a value", nil, []string{"explain", "a.example.com", "--geo"}, []string{"gateway explain: --geo: needs a value"}, []string{"-geo\n"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := runCLIWithin(t, 10*time.Second, tt.env, tt.args...)
			if code != 2 {
				t.Errorf("exit %d, want 2\nstdout: %.300s\nstderr: %s", code, out, errOut)
			}
			checkContains(t, "stderr", errOut, tt.want, tt.not)
		})
	}
}

// waitFileContains waits until the file at path holds want (an event log
// line the gateway writes asynchronously).
func waitFileContains(t *testing.T, path, want string) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		b, _ := os.ReadFile(path)
		if strings.Contains(string(b), want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s lacks %q: %q", path, want, b)
		}
	}
}

// checkContains reports each of want that s lacks and each of notWant it
// holds; what names s in the messages.
func checkContains(t *testing.T, what, s string, want, notWant []string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(s, w) {
			t.Errorf("%s lacks %q:\n%s", what, w, s)
		}
	}
	for _, n := range notWant {
		if strings.Contains(s, n) {
			t.Errorf("%s has %q:\n%s", what, n, s)
		}
	}
}
