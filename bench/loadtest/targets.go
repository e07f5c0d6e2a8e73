package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

type target struct {
	name      string
	proxyAddr string // "" for direct
	adminAddr string // gateway only
	cmd       *exec.Cmd
	pid       int
	dir       string
	logFile   string
	naReason  string // set when the target could not start
	exited    atomic.Bool
	done      chan struct{}
}

func (t *target) direct() bool { return t.name == "direct" }

// forwards reports whether the target forwards plain HTTP (the relay only
// tunnels).
func (t *target) forwards() bool { return t.name != "relay" }

func (t *target) alive() error {
	if t.naReason != "" {
		return errors.New(t.naReason)
	}
	if t.exited.Load() {
		return fmt.Errorf("%s exited%s", t.name, t.logTail())
	}
	return nil
}

func (t *target) stop() {
	if t.cmd == nil || t.cmd.Process == nil {
		return
	}
	if !t.exited.Load() {
		_ = syscall.Kill(-t.pid, syscall.SIGTERM) // its own process group, started by us
		select {
		case <-t.done:
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(-t.pid, syscall.SIGKILL)
			select {
			case <-t.done:
			case <-time.After(5 * time.Second):
			}
		}
	}
	t.cmd = nil
}

// logTail returns the last lines of the target's log and of its standard
// output and error.
func (t *target) logTail() string {
	if t.dir == "" {
		return ""
	}
	var b []byte
	for _, p := range []string{t.logFile, filepath.Join(t.dir, "stdout.log")} {
		if p == "" {
			continue
		}
		if x, err := os.ReadFile(p); err == nil {
			b = append(append(b, x...), '\n')
		}
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 3 {
		lines = lines[len(lines)-3:]
	}
	s := strings.Join(lines, " | ")
	if len(s) > 400 {
		s = s[len(s)-400:]
	}
	return ": " + s
}

func (h *harness) launch(t *target, name string, args []string, env []string) error {
	return h.launchAs(t, name, args, env, nil)
}

// launchAs starts name in its own process group, as cred's user if cred is
// non-nil.
func (h *harness) launchAs(t *target, name string, args []string, env []string, cred *syscall.Credential) error {
	cmd := exec.Command(name, args...)
	cmd.Env = env
	cmd.Dir = t.dir
	lf, err := os.OpenFile(filepath.Join(t.dir, "stdout.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer lf.Close()
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, Credential: cred}
	if err := cmd.Start(); err != nil {
		return err
	}
	t.cmd, t.pid, t.done = cmd, cmd.Process.Pid, make(chan struct{})
	t.exited.Store(false)
	h.mu.Lock()
	h.started = append(h.started, t)
	h.mu.Unlock()
	go func() { _ = cmd.Wait(); t.exited.Store(true); close(t.done) }()
	return nil
}

// waitReady polls until the target relays a plain tunnel, a TLS tunnel and a GET.
func (h *harness) waitReady(ctx context.Context, t *target, ready func() bool) error {
	deadline := time.Now().Add(20 * time.Second)
	var lastErr error
	for i := 0; i < 200 && time.Now().Before(deadline); i++ {
		if err := t.alive(); err != nil {
			return err
		}
		if ready == nil || ready() {
			if lastErr = h.smoke(ctx, t); lastErr == nil {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	if lastErr == nil {
		lastErr = errors.New("not ready")
	}
	return fmt.Errorf("%s did not become ready within 20s: %v%s", t.name, lastErr, t.logTail())
}

func (h *harness) smoke(ctx context.Context, t *target) error {
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := h.requestResponse(sctx, t, false); err != nil {
		return fmt.Errorf("plain tunnel: %w", err)
	}
	if err := h.requestResponse(sctx, t, true); err != nil {
		return fmt.Errorf("TLS tunnel: %w", err)
	}
	if !t.forwards() {
		return nil
	}
	tr := h.transport(t, 1)
	defer tr.CloseIdleConnections()
	if err := getOnce(sctx, &http.Client{Transport: tr, Timeout: 5 * time.Second}, h.objURL()); err != nil {
		return fmt.Errorf("GET: %w", err)
	}
	return nil
}

func (h *harness) newTarget(name string) (*target, error) {
	dir, err := os.MkdirTemp(h.dir, name+"-")
	if err != nil {
		return nil, err
	}
	// Squid and tinyproxy drop privileges; let them write their logs and pid files.
	if err := os.Chmod(dir, 0o777); err != nil {
		return nil, err
	}
	return &target{name: name, dir: dir}, nil
}

func (h *harness) startTarget(ctx context.Context, name string) *target {
	t, err := h.newTarget(name)
	if err != nil {
		return &target{name: name, naReason: err.Error()}
	}
	switch name {
	case "direct":
		return t
	case "gateway":
		err = h.startGateway(ctx, t)
	case "squid":
		err = h.startSquid(ctx, t)
	case "tinyproxy":
		err = h.startTinyproxy(ctx, t)
	case "relay":
		err = h.startRelay(ctx, t)
	}
	if err != nil {
		t.stop()
		t.naReason = err.Error()
		logf("%s: n/a: %v", name, err)
	}
	return t
}

func (h *harness) startGateway(ctx context.Context, t *target) error {
	if h.o.gateway == "" {
		return errors.New("no --gateway binary given")
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	admin, err := freePort()
	if err != nil {
		return err
	}
	t.proxyAddr = fmt.Sprintf("127.0.0.1:%d", port)
	t.adminAddr = fmt.Sprintf("127.0.0.1:%d", admin)
	rules := fmt.Sprintf(`rules:
  - action: allow
    host: %s
    ports: [%d, %d]
    verify_sni: false
    anonymous: true
    tls_exempt: true
    comment: "bench: plain TCP tunnels (no SNI check) and plain HTTP"
  - action: allow
    host: %s
    ports: [%d]
    anonymous: true
    tls_exempt: true
    comment: "bench: TLS tunnels, SNI verified"
`, plainHost, h.up.tcpPort, h.up.httpPort, tlsHost, h.up.tlsPort)
	rulesFile := filepath.Join(t.dir, "rules.yaml")
	if err := os.WriteFile(rulesFile, []byte(rules), 0o644); err != nil {
		return err
	}
	env := []string{}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GATEWAY_") || os.Getenv("BENCH_KEEP_GATEWAY_ENV") != "" {
			env = append(env, kv)
		}
	}
	env = append(env,
		"GATEWAY_LISTEN="+t.proxyAddr,
		"GATEWAY_ADMIN_LISTEN="+t.adminAddr,
		"GATEWAY_ACCESS_LOG=off",
		"GATEWAY_LOG_LEVEL=error",
		"GATEWAY_DNS_SERVERS="+h.up.dnsAddr,
		"GATEWAY_ALLOW_PRIVATE_DESTINATIONS=127.0.0.1",
		"GATEWAY_CLIENT_CIDRS=127.0.0.0/8",
		"GATEWAY_GEOGRAPHIES=EU",
		"GATEWAY_RULES_FILE="+rulesFile,
	)
	env = append(env, h.o.gwEnv...) // last wins
	var cred *syscall.Credential
	if h.o.gwUser != "" {
		u, err := user.Lookup(h.o.gwUser)
		if err != nil {
			return fmt.Errorf("--gateway-user: %w", err)
		}
		uid, _ := strconv.ParseUint(u.Uid, 10, 32)
		gid, _ := strconv.ParseUint(u.Gid, 10, 32)
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}
	}
	if err := h.launchAs(t, h.o.gateway, []string{"serve"}, env, cred); err != nil {
		return err
	}
	return h.waitReady(ctx, t, func() bool {
		resp, err := (&http.Client{Timeout: time.Second, Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return dialLoopback(ctx, t.adminAddr) },
		}}).Get("http://" + t.adminAddr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
}

// isolated runs name in a private mount namespace whose /etc/hosts maps the
// bench names to 127.0.0.1 and whose /etc/resolv.conf names only 127.0.0.1, so
// the proxy's own name lookups can never leave loopback.
func (h *harness) isolated(t *target, name string, args ...string) (string, []string, error) {
	bin, err := exec.LookPath(name)
	if err != nil {
		return "", nil, fmt.Errorf("%s is not installed (%v)", name, err)
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		return "", nil, fmt.Errorf("unshare(1) is needed to keep %s's DNS on loopback: %v", name, err)
	}
	hosts := filepath.Join(t.dir, "hosts")
	resolv := filepath.Join(t.dir, "resolv.conf")
	if err := os.WriteFile(hosts, []byte(fmt.Sprintf("127.0.0.1 localhost %s %s\n", plainHost, tlsHost)), 0o644); err != nil {
		return "", nil, err
	}
	if err := os.WriteFile(resolv, []byte("nameserver "+h.nameserver()+"\n"), 0o644); err != nil {
		return "", nil, err
	}
	script := `mount --bind "$1" /etc/hosts && mount --bind "$2" /etc/resolv.conf && shift 2 && exec "$@"`
	return unshare, append([]string{"--mount", "--propagation", "private", "sh", "-c", script, "sh", hosts, resolv, bin}, args...), nil
}

// nameserver is the DNS server for Squid and tinyproxy (port 53 only).
func (h *harness) nameserver() string {
	if h.up.dnsPort53 != "" {
		return h.up.dnsPort53
	}
	return "127.0.0.1"
}

// probeIsolation checks once that a private mount namespace can be made.
func probeIsolation() error {
	out, err := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c",
		`mount --bind /dev/null /etc/resolv.conf && test ! -s /etc/resolv.conf && echo ok`).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "ok") {
		return fmt.Errorf("cannot make a private mount namespace (unshare --mount, needs root): %v %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (h *harness) startSquid(ctx context.Context, t *target) error {
	if h.isoErr != nil {
		return h.isoErr
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	t.proxyAddr = fmt.Sprintf("127.0.0.1:%d", port)
	t.logFile = filepath.Join(t.dir, "cache.log")
	conf := fmt.Sprintf(`# generated by bench/loadtest
http_port 127.0.0.1:%[1]d
workers 1
cache deny all
cache_mem 0 MB
access_log none
cache_store_log none
cache_log %[2]s/cache.log
pid_filename %[2]s/squid.pid
coredump_dir %[2]s
visible_hostname bench-squid
hosts_file %[2]s/hosts
dns_nameservers %[8]s
icp_port 0
htcp_port 0
pinger_enable off
max_filedescriptors 20000
cache_effective_user proxy
shutdown_lifetime 0 seconds
acl CONNECT method CONNECT
acl bench dstdomain %[3]s %[4]s
acl bench_ports port %[5]d %[6]d %[7]d
http_access allow CONNECT bench bench_ports
http_access allow bench bench_ports
http_access deny all
`, port, t.dir, plainHost, tlsHost, h.up.tcpPort, h.up.tlsPort, h.up.httpPort, h.nameserver())
	confFile := filepath.Join(t.dir, "squid.conf")
	if err := os.WriteFile(confFile, []byte(conf), 0o644); err != nil {
		return err
	}
	pbin, pargs, err := h.isolated(t, h.o.squid, "-k", "parse", "-f", confFile)
	if err != nil {
		return err
	}
	if out, err := exec.Command(pbin, pargs...).CombinedOutput(); err != nil {
		return fmt.Errorf("squid -k parse: %v: %s", err, lastLines(string(out), 3))
	}
	bin, args, err := h.isolated(t, h.o.squid, "-N", "-f", confFile)
	if err != nil {
		return err
	}
	if err := h.launch(t, bin, args, os.Environ()); err != nil {
		return err
	}
	return h.waitReady(ctx, t, nil)
}

func (h *harness) startTinyproxy(ctx context.Context, t *target) error {
	if h.isoErr != nil {
		return h.isoErr
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	t.proxyAddr = fmt.Sprintf("127.0.0.1:%d", port)
	t.logFile = filepath.Join(t.dir, "tinyproxy.log")
	conf := fmt.Sprintf(`# generated by bench/loadtest
User nobody
Group nogroup
Port %[1]d
Listen 127.0.0.1
Timeout 900
MaxClients 12000
Allow 127.0.0.0/8
ConnectPort %[3]d
ConnectPort %[4]d
ConnectPort %[5]d
LogLevel Critical
LogFile "%[2]s/tinyproxy.log"
PidFile "%[2]s/tinyproxy.pid"
`, port, t.dir, h.up.tcpPort, h.up.tlsPort, h.up.httpPort)
	confFile := filepath.Join(t.dir, "tinyproxy.conf")
	if err := os.WriteFile(confFile, []byte(conf), 0o644); err != nil {
		return err
	}
	bin, args, err := h.isolated(t, h.o.tinyproxy, "-d", "-c", confFile)
	if err != nil {
		return err
	}
	if err := h.launch(t, bin, args, os.Environ()); err != nil {
		return err
	}
	return h.waitReady(ctx, t, nil)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
