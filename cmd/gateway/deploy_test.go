package main

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/defendergw/gateway/internal/testutil"
)

// TestDockerfileBuild builds the gateway with exactly the Dockerfile's build
// command and checks the result is a static binary with the catalog inside.
func TestDockerfileBuild(t *testing.T) {
	df, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^RUN (CGO_ENABLED=0 go build .*) -o /out/gateway (\./cmd/gateway)$`).FindSubmatch(df)
	if m == nil {
		t.Fatal("Dockerfile has no `RUN CGO_ENABLED=0 go build ... -o /out/gateway ./cmd/gateway` line")
	}
	for _, want := range []string{"-trimpath", "CGO_ENABLED=0", "gcr.io/distroless/static", "USER 65532:65532",
		"EXPOSE 3128 3138", `HEALTHCHECK`, `"/gateway", "healthcheck"`, "GATEWAY_LISTEN=0.0.0.0:3128", "org.opencontainers.image.source"} {
		if !strings.Contains(string(df), want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
	out := filepath.Join(t.TempDir(), "gateway")
	script := strings.ReplaceAll(string(m[1]), "${VERSION}", "ci-test") + " -o " + out + " " + string(m[2])
	cmd := exec.Command("sh", "-c", script)
	cmd.Dir = "../.."
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", script, err, b)
	}
	f, err := elf.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("binary has an ELF interpreter: not static")
		}
	}
	v, err := exec.Command(out, "version").Output()
	if err != nil || !strings.Contains(string(v), "gateway ci-test, catalog ") {
		t.Errorf("version: %q, %v", v, err)
	}
}

func TestHealthcheck(t *testing.T) {
	dns := testutil.NewDNS(t)
	g := startGateway(t, "GATEWAY_DNS_SERVERS="+dns.Addr, "GATEWAY_GEOGRAPHIES=EU")
	if out, errOut, code := runCLI(t, []string{"GATEWAY_ADMIN_LISTEN=" + g.admin}, "healthcheck"); code != 0 || !strings.Contains(out, "ok") {
		t.Errorf("healthcheck: exit %d %q %q", code, out, errOut)
	}
	if _, _, code := runCLI(t, []string{"GATEWAY_ADMIN_LISTEN=" + g.admin}, "healthcheck", "--ready"); code != 0 {
		t.Errorf("healthcheck --ready: exit %d", code)
	}
	closed := testutil.Listen(t, "127.0.0.1:0")
	addr := closed.Addr().String()
	closed.Close()
	if _, _, code := runCLI(t, []string{"GATEWAY_ADMIN_LISTEN=" + addr}, "healthcheck"); code != 1 {
		t.Errorf("healthcheck with nothing listening: exit %d, want 1", code)
	}
}

// TestSystemdUnit verifies the unit with systemd-analyze, pointing
// ExecStart at a real binary (verify checks that it exists).
func TestSystemdUnit(t *testing.T) {
	unit, err := os.ReadFile("../../deploy/systemd/defender-gateway.service")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"DynamicUser=yes", "NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes",
		"EnvironmentFile=", "ExecReload=/bin/kill -HUP $MAINPID", "CapabilityBoundingSet="} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("unit lacks %q", want)
		}
	}
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed")
	}
	dir := t.TempDir()
	fixed := strings.ReplaceAll(string(unit), "/usr/local/bin/gateway", gatewayBin)
	f := filepath.Join(dir, "defender-gateway.service")
	writeFile(t, f, fixed)
	out, err := exec.Command(sa, "verify", "--man=no", f).CombinedOutput()
	// Outside a booted systemd (containers, CI) verify may complain about
	// the system manager itself; only messages about our unit count.
	var problems []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "defender-gateway.service") {
			problems = append(problems, l)
		}
	}
	if len(problems) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, strings.Join(problems, "\n"))
	}
}

// TestSystemdSyscallFilter checks that the unit's SystemCallFilter lets the
// gateway make every system call its relay depends on: a filtered call
// kills the process with SIGSYS (splice, pipes and their size, the
// queued-bytes ioctl, the room poll, the poller, the file limit).
func TestSystemdSyscallFilter(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed")
	}
	unit, err := os.ReadFile("../../deploy/systemd/defender-gateway.service")
	if err != nil {
		t.Fatal(err)
	}
	// expand lists a syscall group's members, nested groups included.
	var expand func(group string, into map[string]bool)
	expand = func(group string, into map[string]bool) {
		out, err := exec.Command(sa, "syscall-filter", group).Output()
		if err != nil {
			t.Fatalf("systemd-analyze syscall-filter %s: %v", group, err)
		}
		for _, l := range strings.Split(string(out), "\n")[1:] {
			f := strings.Fields(l)
			switch {
			case len(f) == 0 || strings.HasPrefix(f[0], "#"):
			case strings.HasPrefix(f[0], "@"):
				expand(f[0], into)
			default:
				into[f[0]] = true
			}
		}
	}
	allowed, denied := map[string]bool{}, map[string]bool{}
	for _, l := range strings.Split(string(unit), "\n") {
		v, ok := strings.CutPrefix(strings.TrimSpace(l), "SystemCallFilter=")
		if !ok {
			continue
		}
		into := allowed
		if v, ok = strings.CutPrefix(v, "~"); ok {
			into = denied
		}
		for _, name := range strings.Fields(v) {
			if strings.HasPrefix(name, "@") {
				expand(name, into)
			} else {
				into[name] = true
			}
		}
	}
	if len(allowed) == 0 {
		t.Fatal("unit has no allow-list SystemCallFilter")
	}
	for _, sc := range []string{"splice", "pipe2", "fcntl", "ioctl", "ppoll", "poll", "read", "write", "recvfrom",
		"sendto", "shutdown", "close", "epoll_pwait", "epoll_ctl", "accept4", "connect", "setsockopt", "prlimit64"} {
		if !allowed[sc] || denied[sc] {
			t.Errorf("SystemCallFilter: %s allowed = %v, denied = %v; the gateway needs it", sc, allowed[sc], denied[sc])
		}
	}
}
