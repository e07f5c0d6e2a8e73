// Command loadtest runs the gateway, Squid, tinyproxy and a direct path side by
// side on loopback and writes a Markdown report.
//
// Everything it starts listens on, and every byte it sends goes to, 127.0.0.0/8:
// a miekg/dns server answering the bench names with 127.0.0.1, TCP/TLS
// source-sink upstreams, an HTTP upstream, and the proxies under test (Squid and
// tinyproxy run in a private mount namespace whose /etc/hosts and
// /etc/resolv.conf only know loopback). Every loop is bounded in count and time.
//
//	go run ./bench/loadtest --gateway /tmp/gateway [--rounds 3] [--duration 2s] [--idle 5000]
//	    [--only bulk,rate,get,latency,idle] [--targets gateway,squid,tinyproxy,direct] [--out FILE]
//
// See bench/README.md.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

const (
	plainHost = "bench.lab.test" // raw tunnels without SNI verification, and plain HTTP
	tlsHost   = "tls.lab.test"   // TLS tunnels, SNI verified by the gateway
	msgSize   = 64               // request/response size inside tunnels
	objSize   = 1024             // HTTP object
	clkTck    = 100              // USER_HZ on Linux
)

var allScenarios = []string{"bulk", "rate", "get", "latency", "idle"}

type options struct {
	gateway    string
	squid      string
	tinyproxy  string
	rounds     int
	duration   time.Duration
	idle       int
	only       map[string]bool
	targets    []string
	out        string
	command    string
	self       string
	timeout    time.Duration
	latRate    int
	maxForeign float64
	clients    int
	keepDir    bool
}

func main() {
	var o options
	var only, targets string
	flag.StringVar(&o.gateway, "gateway", "", "gateway binary (built with go build -o PATH ./cmd/gateway); required for the gateway target")
	flag.StringVar(&o.squid, "squid", "squid", "squid binary")
	flag.StringVar(&o.tinyproxy, "tinyproxy", "tinyproxy", "tinyproxy binary")
	flag.IntVar(&o.rounds, "rounds", 3, "rounds; every scenario runs against every target once per round, medians are reported")
	flag.DurationVar(&o.duration, "duration", 2*time.Second, "length of one measurement")
	flag.IntVar(&o.idle, "idle", 5000, "idle tunnels for the idle-cost scenario")
	flag.StringVar(&only, "only", "", "comma-separated scenarios to run: "+strings.Join(allScenarios, ","))
	flag.StringVar(&targets, "targets", "gateway,squid,tinyproxy,direct", "comma-separated targets")
	flag.StringVar(&o.out, "out", "", "write the Markdown report to this file (default: standard output)")
	flag.StringVar(&o.command, "command", "", "command line to print at the top of the report (default: this program's)")
	flag.DurationVar(&o.timeout, "timeout", 7*time.Minute, "overall time budget; measurements not started by then are reported as skipped")
	flag.IntVar(&o.latRate, "latency-rate", 500, "requests per second for the latency scenario")
	flag.IntVar(&o.clients, "clients", 64, "concurrent clients for the rate scenarios")
	flag.Float64Var(&o.maxForeign, "max-foreign", 0.3, "repeat a measurement (at most twice) when other processes used more than this many cores during it")
	flag.BoolVar(&o.keepDir, "keep", false, "keep the temporary directory (configs and proxy logs)")
	flag.Parse()
	o.only = map[string]bool{}
	if only == "" {
		for _, s := range allScenarios {
			o.only[s] = true
		}
	} else {
		for _, s := range strings.Split(only, ",") {
			s = strings.TrimSpace(s)
			if !contains(allScenarios, s) {
				fatalf("--only: unknown scenario %q (want %s)", s, strings.Join(allScenarios, ","))
			}
			o.only[s] = true
		}
	}
	for _, t := range strings.Split(targets, ",") {
		t = strings.TrimSpace(t)
		if !contains([]string{"gateway", "squid", "tinyproxy", "direct"}, t) {
			fatalf("--targets: unknown target %q", t)
		}
		o.targets = append(o.targets, t)
	}
	if o.rounds < 1 || o.rounds > 20 || o.duration <= 0 || o.duration > time.Minute || o.idle < 0 || o.idle > 9000 ||
		o.clients < 1 || o.clients > 1024 || o.latRate < 1 || o.latRate > 20000 {
		fatalf("flags out of range (rounds 1..20, duration ≤ 1m, idle ≤ 9000, clients ≤ 1024, latency-rate ≤ 20000)")
	}
	var self []string
	flag.Visit(func(f *flag.Flag) {
		if f.Name != "command" {
			self = append(self, "--"+f.Name, f.Value.String())
		}
	})
	o.self = strings.TrimSpace("go run ./bench/loadtest " + shellJoin(self))
	if o.command == "" {
		o.command = o.self
	}

	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() { <-sigs; cancel() }()

	h, err := newHarness(o)
	if err != nil {
		fatalf("%v", err)
	}
	defer h.cleanup()
	h.run(ctx)
	report := h.report()
	if o.out == "" {
		fmt.Print(report)
		return
	}
	if err := os.WriteFile(o.out, []byte(report), 0o644); err != nil {
		h.cleanup()
		fatalf("%v", err)
	}
	fmt.Fprintf(os.Stderr, "loadtest: wrote %s\n", o.out)
}

func fatalf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "loadtest: "+format+"\n", a...)
	os.Exit(2)
}

func logf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, a...)...)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func shellJoin(args []string) string {
	var b strings.Builder
	for i, a := range args {
		if i > 0 {
			b.WriteByte(' ')
		}
		if a != "" && strings.Trim(a, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./=,:") == "" {
			b.WriteString(a)
		} else {
			b.WriteString("'" + strings.ReplaceAll(a, "'", `'\''`) + "'")
		}
	}
	return b.String()
}

// ---------------------------------------------------------------------------
// Loopback-only dialing.

var srcCounter atomic.Uint32

// srcAddr spreads client connections over 127.0.0.2–127.0.0.251 so that no
// source address runs out of ports and no per-client limit is reached.
func srcAddr() *net.TCPAddr {
	n := srcCounter.Add(1)
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+n%250))}
}

// dialLoopback dials addr, which must be a 127.0.0.0/8 address: the harness
// never sends a byte anywhere else.
func dialLoopback(ctx context.Context, addr string) (net.Conn, error) {
	ap, err := net.ResolveTCPAddr("tcp", addr) // literal only: addr is always ip:port
	if err != nil || ap.IP == nil || !ap.IP.IsLoopback() || ap.IP.To4() == nil {
		return nil, fmt.Errorf("refusing to dial non-loopback address %q", addr)
	}
	d := net.Dialer{LocalAddr: srcAddr(), Timeout: 5 * time.Second}
	return d.DialContext(ctx, "tcp", addr)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// ---------------------------------------------------------------------------
// Upstreams.

// Upstream protocol (plain and TLS): the client sends one op byte.
//
//	'S'            stream bytes until the client goes away
//	'N' + uint64   stream exactly N bytes, then close
//	'D'            discard everything the client sends
//	'R' + 64 bytes answer 64 bytes, then close (the upstream closes first, so
//	               no client port sits in TIME_WAIT)
//	'P'            ping-pong: answer every 64 bytes with 64 bytes
//	nothing        idle until the client closes
func serveConn(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Minute))
	var op [1]byte
	if _, err := io.ReadFull(c, op[:]); err != nil {
		return
	}
	switch op[0] {
	case 'S':
		buf := make([]byte, 256<<10)
		for {
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	case 'N':
		var n [8]byte
		if _, err := io.ReadFull(c, n[:]); err != nil {
			return
		}
		_, _ = io.CopyN(c, zeroReader{}, int64(binary.BigEndian.Uint64(n[:])))
	case 'D':
		_, _ = io.Copy(io.Discard, c)
	case 'R':
		var b [msgSize]byte
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return
		}
		_, _ = c.Write(b[:])
	case 'P':
		var b [msgSize]byte
		for {
			if _, err := io.ReadFull(c, b[:]); err != nil {
				return
			}
			if _, err := c.Write(b[:]); err != nil {
				return
			}
		}
	}
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

func acceptLoop(l net.Listener, serve func(net.Conn)) {
	for {
		c, err := l.Accept()
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond) // EMFILE and friends: back off, bounded by the process's life
			continue
		}
		go serve(c)
	}
}

type upstreams struct {
	tcpPort, tlsPort, httpPort int
	dnsAddr                    string
	clientTLS                  *tls.Config
	closers                    []io.Closer
}

func (u *upstreams) tcpAddr() string  { return fmt.Sprintf("127.0.0.1:%d", u.tcpPort) }
func (u *upstreams) tlsAddr() string  { return fmt.Sprintf("127.0.0.1:%d", u.tlsPort) }
func (u *upstreams) httpAddr() string { return fmt.Sprintf("127.0.0.1:%d", u.httpPort) }

func startUpstreams() (*upstreams, error) {
	u := &upstreams{}
	cert, pool, err := selfSigned()
	if err != nil {
		return nil, err
	}
	// X25519 only: what most endpoints offer today, and cheaper for the load
	// generator than the default hybrid post-quantum key exchange.
	u.clientTLS = &tls.Config{ServerName: tlsHost, RootCAs: pool, MinVersion: tls.VersionTLS12,
		CurvePreferences: []tls.CurveID{tls.X25519}}

	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	u.closers = append(u.closers, tl)
	u.tcpPort = tl.Addr().(*net.TCPAddr).Port
	go acceptLoop(tl, serveConn)

	sl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	u.closers = append(u.closers, sl)
	u.tlsPort = sl.Addr().(*net.TCPAddr).Port
	go acceptLoop(tls.NewListener(sl, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}), serveConn)

	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	u.httpPort = hl.Addr().(*net.TCPAddr).Port
	obj := bytes.Repeat([]byte("x"), objSize)
	hs := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/octet-stream")
			w.Header().Set("Content-Length", strconv.Itoa(objSize))
			w.Header().Set("Cache-Control", "no-store")
			_, _ = w.Write(obj)
		}),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       60 * time.Second,
		ErrorLog:          nil,
	}
	u.closers = append(u.closers, hs)
	go func() { _ = hs.Serve(hl) }()

	// DNS: A records for the bench names, NODATA for other types, NXDOMAIN otherwise.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	u.dnsAddr = pc.LocalAddr().String()
	mux := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Authoritative = true
		if len(r.Question) == 1 {
			q := r.Question[0]
			switch strings.ToLower(q.Name) {
			case plainHost + ".", tlsHost + ".":
				if q.Qtype == dns.TypeA {
					m.Answer = append(m.Answer, &dns.A{
						Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 300},
						A:   net.IPv4(127, 0, 0, 1).To4(),
					})
				}
			case ".":
			default:
				m.Rcode = dns.RcodeNameError
			}
		}
		_ = w.WriteMsg(m)
	})
	ds := &dns.Server{PacketConn: pc, Handler: mux}
	u.closers = append(u.closers, closerFunc(func() error { return ds.Shutdown() }))
	go func() { _ = ds.ActivateAndServe() }()
	if tcpl, err := net.Listen("tcp", u.dnsAddr); err == nil { // TCP twin, for truncation retries
		dt := &dns.Server{Listener: tcpl, Handler: mux}
		u.closers = append(u.closers, closerFunc(func() error { return dt.Shutdown() }))
		go func() { _ = dt.ActivateAndServe() }()
	}
	return u, nil
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

func selfSigned() (tls.Certificate, *x509.CertPool, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: tlsHost},
		DNSNames:              []string{tlsHost, plainHost},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool, nil
}

// ---------------------------------------------------------------------------
// Targets.

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
	cmd := exec.Command(name, args...)
	cmd.Env = env
	cmd.Dir = t.dir
	lf, err := os.OpenFile(filepath.Join(t.dir, "stdout.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer lf.Close()
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
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
	if err := h.launch(t, h.o.gateway, []string{"serve"}, env); err != nil {
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
	if err := os.WriteFile(resolv, []byte("nameserver 127.0.0.1\n"), 0o644); err != nil {
		return "", nil, err
	}
	script := `mount --bind "$1" /etc/hosts && mount --bind "$2" /etc/resolv.conf && shift 2 && exec "$@"`
	return unshare, append([]string{"--mount", "--propagation", "private", "sh", "-c", script, "sh", hosts, resolv, bin}, args...), nil
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
dns_nameservers 127.0.0.1
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
`, port, t.dir, plainHost, tlsHost, h.up.tcpPort, h.up.tlsPort, h.up.httpPort)
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

// ---------------------------------------------------------------------------
// Clients.

type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// tunnel opens a byte stream to host:port (one of the upstreams), through the
// target's CONNECT or directly.
func (h *harness) tunnel(ctx context.Context, t *target, useTLS bool) (net.Conn, error) {
	host, port, addr := plainHost, h.up.tcpPort, h.up.tcpAddr()
	if useTLS {
		host, port, addr = tlsHost, h.up.tlsPort, h.up.tlsAddr()
	}
	var c net.Conn
	var err error
	if t.direct() {
		if c, err = dialLoopback(ctx, addr); err != nil {
			return nil, err
		}
	} else {
		if c, err = dialLoopback(ctx, t.proxyAddr); err != nil {
			return nil, err
		}
		if dl, ok := ctx.Deadline(); ok {
			_ = c.SetDeadline(dl)
		}
		hp := net.JoinHostPort(host, strconv.Itoa(port))
		if _, err := io.WriteString(c, "CONNECT "+hp+" HTTP/1.1\r\nHost: "+hp+"\r\n\r\n"); err != nil {
			c.Close()
			return nil, err
		}
		br := bufio.NewReaderSize(c, 4096)
		status, err := br.ReadString('\n')
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("CONNECT: %w", err)
		}
		if f := strings.Fields(status); len(f) < 2 || f[1] != "200" {
			c.Close()
			return nil, fmt.Errorf("CONNECT answered %q", strings.TrimSpace(status))
		}
		for i := 0; ; i++ {
			line, err := br.ReadString('\n')
			if err != nil || i > 100 {
				c.Close()
				return nil, fmt.Errorf("CONNECT headers: %v", err)
			}
			if line == "\r\n" || line == "\n" {
				break
			}
		}
		_ = c.SetDeadline(time.Time{})
		c = &bufConn{Conn: c, r: br}
	}
	if !useTLS {
		return c, nil
	}
	tc := tls.Client(c, h.up.clientTLS) // SNI = tlsHost, a full handshake every time (no session cache)
	hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("TLS handshake: %w", err)
	}
	return tc, nil
}

// requestResponse opens a tunnel, exchanges 64 bytes each way and waits for
// the upstream's close.
func (h *harness) requestResponse(ctx context.Context, t *target, useTLS bool) error {
	c, err := h.tunnel(ctx, t, useTLS)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	var b [1 + msgSize]byte
	b[0] = 'R'
	if _, err := c.Write(b[:]); err != nil {
		return err
	}
	if _, err := io.ReadFull(c, b[:msgSize]); err != nil {
		return fmt.Errorf("response: %w", err)
	}
	var one [1]byte
	if n, err := c.Read(one[:]); n != 0 || (err != io.EOF && !isClosed(err)) {
		return fmt.Errorf("expected the upstream's close, got %d bytes, %v", n, err)
	}
	return nil
}

func isClosed(err error) bool {
	return err != nil && (errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET) || strings.Contains(err.Error(), "close_notify"))
}

func (h *harness) objURL() string {
	return fmt.Sprintf("http://%s:%d/obj", plainHost, h.up.httpPort)
}

// transport sends absolute-form requests through the target (or straight to
// the HTTP upstream for direct), keeping up to conns connections alive.
func (h *harness) transport(t *target, conns int) *http.Transport {
	addr := t.proxyAddr
	var proxy func(*http.Request) (*url.URL, error)
	if t.direct() {
		addr = h.up.httpAddr()
	} else {
		pu := &url.URL{Scheme: "http", Host: t.proxyAddr}
		proxy = http.ProxyURL(pu)
	}
	return &http.Transport{
		Proxy:               proxy,
		DialContext:         func(ctx context.Context, _, _ string) (net.Conn, error) { return dialLoopback(ctx, addr) },
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		IdleConnTimeout:     30 * time.Second,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
	}
}

func getOnce(ctx context.Context, c *http.Client, u string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return err
	}
	if resp.StatusCode != 200 || n != objSize {
		return fmt.Errorf("GET answered %s with %d bytes", resp.Status, n)
	}
	return nil
}

// ---------------------------------------------------------------------------
// /proc readings.

func cpuTicks(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("bad /proc stat")
	}
	f := strings.Fields(s[i+1:]) // f[0] is field 3 (state); utime is field 14, stime 15
	if len(f) < 13 {
		return 0, errors.New("short /proc stat")
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, errors.New("bad utime/stime")
	}
	return ut + st, nil
}

func rssKiB(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			f := strings.Fields(line)
			if len(f) >= 2 {
				return strconv.ParseInt(f[1], 10, 64)
			}
		}
	}
	return 0, errors.New("no VmRSS")
}

func fdCount(pid int) (int, error) {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(ents), err
}

func (h *harness) goroutines(t *target) (int, error) {
	c := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return dialLoopback(ctx, t.adminAddr) },
	}}
	resp, err := c.Get("http://" + t.adminAddr + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 8<<20))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == "go_goroutines" {
			v, err := strconv.ParseFloat(f[1], 64)
			return int(v), err
		}
	}
	return 0, errors.New("go_goroutines not in /metrics")
}

// ---------------------------------------------------------------------------
// Scenarios.

type harness struct {
	o       options
	dir     string
	up      *upstreams
	isoErr  error
	mu      sync.Mutex
	started []*target
	targets map[string]*target // long-lived targets of the throughput/rate/latency phase
	na      map[string]string  // target -> why n/a
	res     map[string]map[string][]float64
	errs    map[string]map[string]string
	notes   []string
	skipped int
	start   time.Time
	// loadStart is /proc/loadavg when the run began.
	loadStart string
	revision  string // git revision of the working tree the gateway was built from
	deadline  time.Time

	// Results of the measurement in progress, committed once it is kept.
	pend      []pendingValue
	pendNotes []string
	// Other processes' CPU (cores) during kept measurements, and retries.
	foreign []float64
	retried int
}

type pendingValue struct {
	key, target string
	v           float64
}

func newHarness(o options) (*harness, error) {
	dir, err := os.MkdirTemp("", "gateway-bench-")
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	h := &harness{o: o, dir: dir, targets: map[string]*target{}, na: map[string]string{},
		res: map[string]map[string][]float64{}, errs: map[string]map[string]string{}, start: time.Now(), loadStart: loadAvg(), deadline: time.Now().Add(o.timeout),
		revision: gitRevision()}
	if h.up, err = startUpstreams(); err != nil {
		return nil, fmt.Errorf("upstreams: %w", err)
	}
	if contains(o.targets, "squid") || contains(o.targets, "tinyproxy") {
		h.isoErr = probeIsolation()
	}
	return h, nil
}

func (h *harness) cleanup() {
	h.mu.Lock()
	started := h.started
	h.started = nil
	h.mu.Unlock()
	for _, t := range started {
		t.stop()
	}
	for _, c := range h.up.closers {
		_ = c.Close()
	}
	if !h.o.keepDir {
		_ = os.RemoveAll(h.dir)
	}
}

// record holds a value of the measurement in progress until commit.
func (h *harness) record(key, target string, v float64) {
	h.pend = append(h.pend, pendingValue{key, target, v})
}

// commit keeps the pending values and notes; discard drops them.
func (h *harness) commit() {
	for _, p := range h.pend {
		if h.res[p.key] == nil {
			h.res[p.key] = map[string][]float64{}
		}
		h.res[p.key][p.target] = append(h.res[p.key][p.target], p.v)
	}
	h.notes = append(h.notes, h.pendNotes...)
	h.discard()
}

func (h *harness) discard() { h.pend, h.pendNotes = nil, nil }

func (h *harness) fail(key, target string, err error) {
	if h.errs[key] == nil {
		h.errs[key] = map[string]string{}
	}
	if _, ok := h.errs[key][target]; !ok {
		h.errs[key][target] = err.Error()
	}
	logf("  %s %s: %v", key, target, err)
}

func (h *harness) note(format string, a ...any) {
	s := fmt.Sprintf(format, a...)
	h.pendNotes = append(h.pendNotes, s)
	logf("  note: %s", s)
}

// cpuSnap is the machine's busy CPU time next to ours (this process and the
// proxy under test), to tell how much other work ran during a measurement.
type cpuSnap struct {
	busy, ours int64
	at         time.Time
}

func (h *harness) snap(t *target) cpuSnap {
	s := cpuSnap{at: time.Now()}
	if b, err := os.ReadFile("/proc/stat"); err == nil {
		line, _, _ := strings.Cut(string(b), "\n")
		// cpu user nice system idle iowait irq softirq steal ...: with tick-based
		// accounting, irq and softirq ticks are also charged to the interrupted
		// task (mostly ours: loopback packets are processed in the sender's
		// context), so they count as busy here.
		f := strings.Fields(line)
		for _, i := range []int{1, 2, 3, 6, 7} {
			if i >= len(f) {
				break
			}
			v, _ := strconv.ParseInt(f[i], 10, 64)
			s.busy += v
		}
	}
	s.ours, _ = cpuTicks(os.Getpid())
	if t != nil && !t.direct() && t.pid > 0 {
		p, _ := cpuTicks(t.pid)
		s.ours += p
	}
	return s
}

// foreignCores is the CPU (in cores) that other processes used between a and b.
func foreignCores(a, b cpuSnap) float64 {
	el := b.at.Sub(a.at).Seconds()
	if el <= 0 {
		return 0
	}
	return max(0, float64((b.busy-a.busy)-(b.ours-a.ours))/clkTck/el)
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}

// bulk streams upstream→client over n tunnels and returns GB/s and the proxy's
// CPU-seconds per GB.
func (h *harness) bulk(ctx context.Context, t *target, useTLS bool, n int) (gbps, cpuPerGB float64, err error) {
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < n; i++ {
		octx, cancel := context.WithTimeout(ctx, 5*time.Second)
		c, err := h.tunnel(octx, t, useTLS)
		cancel()
		if err != nil {
			return 0, 0, err
		}
		conns = append(conns, c)
		if _, err := c.Write([]byte{'S'}); err != nil {
			return 0, 0, err
		}
	}
	warm := 300 * time.Millisecond
	var total atomic.Int64
	var wg sync.WaitGroup
	for _, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(warm + h.o.duration + 10*time.Second))
		wg.Add(1)
		go func(c net.Conn) {
			defer wg.Done()
			buf := make([]byte, 256<<10)
			for {
				k, err := c.Read(buf)
				total.Add(int64(k))
				if err != nil {
					return
				}
			}
		}(c)
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
		wg.Wait()
	}()
	if !sleepCtx(ctx, warm) {
		return 0, 0, ctx.Err()
	}
	var cpu0, cpu1 int64
	if !t.direct() {
		if cpu0, err = cpuTicks(t.pid); err != nil {
			return 0, 0, err
		}
	}
	b0, t0 := total.Load(), time.Now()
	if !sleepCtx(ctx, h.o.duration) {
		return 0, 0, ctx.Err()
	}
	b1, t1 := total.Load(), time.Now()
	if !t.direct() {
		if cpu1, err = cpuTicks(t.pid); err != nil {
			return 0, 0, err
		}
	}
	bytes := float64(b1 - b0)
	if bytes <= 0 {
		return 0, 0, errors.New("no bytes relayed")
	}
	gbps = bytes / 1e9 / t1.Sub(t0).Seconds()
	cpuPerGB = float64(cpu1-cpu0) / clkTck / (bytes / 1e9)
	return gbps, cpuPerGB, nil
}

// loop runs fn from `workers` goroutines until the duration ends and returns
// completions per second, the error count and the last error.
func (h *harness) loop(ctx context.Context, workers int, fn func(context.Context) error) (float64, int64, error) {
	end := time.Now().Add(h.o.duration)
	var ok, bad atomic.Int64
	var lastErr atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 1_000_000 && time.Now().Before(end) && ctx.Err() == nil; i++ {
				octx, cancel := context.WithTimeout(ctx, 5*time.Second)
				err := fn(octx)
				cancel()
				if time.Now().After(end) {
					return // completed after the window: not counted
				}
				if err != nil {
					bad.Add(1)
					lastErr.Store(err)
					time.Sleep(time.Millisecond)
					continue
				}
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	el := end.Sub(start).Seconds()
	var le error
	if v := lastErr.Load(); v != nil {
		le = v.(error)
	}
	if ok.Load() == 0 {
		if le == nil {
			le = errors.New("nothing completed")
		}
		return 0, bad.Load(), le
	}
	return float64(ok.Load()) / el, bad.Load(), le
}

func (h *harness) tunnelRate(ctx context.Context, t *target, useTLS bool) (float64, int64, error) {
	return h.loop(ctx, h.o.clients, func(ctx context.Context) error { return h.requestResponse(ctx, t, useTLS) })
}

func (h *harness) getRate(ctx context.Context, t *target) (float64, int64, error) {
	tr := h.transport(t, h.o.clients)
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	u := h.objURL()
	return h.loop(ctx, h.o.clients, func(ctx context.Context) error { return getOnce(ctx, c, u) })
}

func percentiles(lat []time.Duration) (p50, p99 float64) {
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	at := func(q float64) float64 {
		i := int(q*float64(len(lat))+0.5) - 1
		i = max(0, min(i, len(lat)-1))
		return float64(lat[i].Nanoseconds()) / 1e3
	}
	return at(0.50), at(0.99)
}

// getLatency sends absolute-form GETs at a fixed rate (open loop) and returns
// p50/p99 in µs.
func (h *harness) getLatency(ctx context.Context, t *target) (p50, p99 float64, err error) {
	tr := h.transport(t, 64)
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	u := h.objURL()
	interval := time.Second / time.Duration(h.o.latRate)
	warm := 300 * time.Millisecond
	start := time.Now()
	measureFrom, end := start.Add(warm), start.Add(warm+h.o.duration)
	var mu sync.Mutex
	var lat []time.Duration
	var bad, dropped atomic.Int64
	var lastErr atomic.Value
	var inflight atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < 10_000_000; i++ {
		at := start.Add(time.Duration(i) * interval)
		if at.After(end) || ctx.Err() != nil {
			break
		}
		if d := time.Until(at); d > 0 {
			time.Sleep(d)
		}
		if inflight.Load() >= 256 {
			dropped.Add(1)
			continue
		}
		inflight.Add(1)
		wg.Add(1)
		go func(rec bool) {
			defer wg.Done()
			defer inflight.Add(-1)
			t0 := time.Now()
			err := getOnce(ctx, c, u)
			d := time.Since(t0)
			if err != nil {
				bad.Add(1)
				lastErr.Store(err)
				return
			}
			if rec {
				mu.Lock()
				lat = append(lat, d)
				mu.Unlock()
			}
		}(!at.Before(measureFrom))
	}
	wg.Wait()
	if len(lat) == 0 {
		if v := lastErr.Load(); v != nil {
			return 0, 0, v.(error)
		}
		return 0, 0, errors.New("no samples")
	}
	if bad.Load() > 0 || dropped.Load() > 0 {
		le, _ := lastErr.Load().(error)
		h.note("latency GET %s: %d errors, %d not sent (256 in flight) (last error: %v)", t.name, bad.Load(), dropped.Load(), le)
	}
	p50, p99 = percentiles(lat)
	return p50, p99, nil
}

// tunnelLatency does 64-byte round trips over one established plain tunnel at
// the fixed rate and returns p50/p99 in µs.
func (h *harness) tunnelLatency(ctx context.Context, t *target) (p50, p99 float64, err error) {
	octx, cancel := context.WithTimeout(ctx, 5*time.Second)
	c, err := h.tunnel(octx, t, false)
	cancel()
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(h.o.duration + 15*time.Second))
	if _, err := c.Write([]byte{'P'}); err != nil {
		return 0, 0, err
	}
	interval := time.Second / time.Duration(h.o.latRate)
	warm := 300 * time.Millisecond
	start := time.Now()
	measureFrom, end := start.Add(warm), start.Add(warm+h.o.duration)
	var lat []time.Duration
	var b [msgSize]byte
	for i := 0; i < 10_000_000; i++ {
		at := start.Add(time.Duration(i) * interval)
		if at.After(end) || ctx.Err() != nil {
			break
		}
		if d := time.Until(at); d > 0 {
			time.Sleep(d)
		}
		t0 := time.Now()
		if _, err := c.Write(b[:]); err != nil {
			return 0, 0, err
		}
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return 0, 0, err
		}
		if !at.Before(measureFrom) {
			lat = append(lat, time.Since(t0))
		}
	}
	if len(lat) == 0 {
		return 0, 0, errors.New("no samples")
	}
	p50, p99 = percentiles(lat)
	return p50, p99, nil
}

type idleResult struct {
	rssPer, fdPer, gorPer float64
	rssAfterMiB           float64
	gorAfter              float64
}

// idleCost opens n tunnels (one 64-byte round trip each, then idle) and reads
// the proxy's RSS, file descriptors and goroutines before and after.
func (h *harness) idleCost(ctx context.Context, t *target, n int) (r idleResult, err error) {
	// Warm up the code paths first, so the baseline is not a cold process.
	for i := 0; i < 20; i++ {
		if err := h.requestResponse(ctx, t, false); err != nil {
			return r, fmt.Errorf("warm-up: %w", err)
		}
	}
	sleepCtx(ctx, 500*time.Millisecond)
	rss0, err := rssKiB(t.pid)
	if err != nil {
		return r, err
	}
	fd0, err := fdCount(t.pid)
	if err != nil {
		return r, err
	}
	gor0 := 0
	if t.adminAddr != "" {
		if gor0, err = h.goroutines(t); err != nil {
			return r, err
		}
	}
	conns := make([]net.Conn, n)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	openCtx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	var next atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n || openCtx.Err() != nil || firstErr.Load() != nil {
					return
				}
				err := func() error {
					octx, cancel := context.WithTimeout(openCtx, 10*time.Second)
					defer cancel()
					c, err := h.tunnel(octx, t, false)
					if err != nil {
						return err
					}
					conns[i] = c
					_ = c.SetDeadline(time.Now().Add(10 * time.Second))
					var b [1 + msgSize]byte
					b[0] = 'P'
					if _, err := c.Write(b[:]); err != nil {
						return err
					}
					if _, err := io.ReadFull(c, b[:msgSize]); err != nil {
						return err
					}
					return c.SetDeadline(time.Time{})
				}()
				if err != nil {
					firstErr.CompareAndSwap(nil, fmt.Errorf("tunnel %d of %d: %w", i+1, n, err))
					return
				}
			}
		}()
	}
	wg.Wait()
	if v := firstErr.Load(); v != nil {
		return r, v.(error)
	}
	if openCtx.Err() != nil {
		return r, fmt.Errorf("opening %d tunnels: %w", n, openCtx.Err())
	}
	sleepCtx(ctx, time.Second)
	if err := t.alive(); err != nil {
		return r, err
	}
	rss1, err := rssKiB(t.pid)
	if err != nil {
		return r, err
	}
	fd1, err := fdCount(t.pid)
	if err != nil {
		return r, err
	}
	r.rssPer = float64(rss1-rss0) / float64(n)
	r.fdPer = float64(fd1-fd0) / float64(n)
	r.rssAfterMiB = float64(rss1) / 1024
	if t.adminAddr != "" {
		gor1, err := h.goroutines(t)
		if err != nil {
			return r, err
		}
		r.gorPer = float64(gor1-gor0) / float64(n)
		r.gorAfter = float64(gor1)
	}
	return r, nil
}

// ---------------------------------------------------------------------------
// Running.

type measurement struct {
	scenario string // --only group
	name     string
	run      func(ctx context.Context, t *target) error
}

func (h *harness) measurements() []measurement {
	var ms []measurement
	for _, b := range []struct {
		key    string
		useTLS bool
		n      int
	}{{"tcp-1", false, 1}, {"tcp-16", false, 16}, {"tls-1", true, 1}, {"tls-16", true, 16}} {
		ms = append(ms, measurement{"bulk", "bulk " + b.key, func(ctx context.Context, t *target) error {
			g, cpu, err := h.bulk(ctx, t, b.useTLS, b.n)
			if err != nil {
				return err
			}
			h.record("bulk-"+b.key, t.name, g)
			if !t.direct() {
				h.record("cpu-"+b.key, t.name, cpu)
			}
			return nil
		}})
	}
	for _, r := range []struct {
		key    string
		useTLS bool
	}{{"tcp", false}, {"tls", true}} {
		ms = append(ms, measurement{"rate", "rate " + r.key, func(ctx context.Context, t *target) error {
			v, bad, err := h.tunnelRate(ctx, t, r.useTLS)
			if v == 0 {
				return err
			}
			if bad > 0 {
				h.note("new tunnels (%s) %s: %d failed (last: %v)", r.key, t.name, bad, err)
			}
			h.record("rate-"+r.key, t.name, v)
			return nil
		}})
	}
	ms = append(ms, measurement{"get", "get", func(ctx context.Context, t *target) error {
		v, bad, err := h.getRate(ctx, t)
		if v == 0 {
			return err
		}
		if bad > 0 {
			h.note("GET rate %s: %d failed (last: %v)", t.name, bad, err)
		}
		h.record("get", t.name, v)
		return nil
	}})
	ms = append(ms, measurement{"latency", "latency get", func(ctx context.Context, t *target) error {
		p50, p99, err := h.getLatency(ctx, t)
		if err != nil {
			return err
		}
		h.record("lat-get-p50", t.name, p50)
		h.record("lat-get-p99", t.name, p99)
		return nil
	}})
	ms = append(ms, measurement{"latency", "latency tunnel", func(ctx context.Context, t *target) error {
		p50, p99, err := h.tunnelLatency(ctx, t)
		if err != nil {
			return err
		}
		h.record("lat-tun-p50", t.name, p50)
		h.record("lat-tun-p99", t.name, p99)
		return nil
	}})
	return ms
}

// keysOf maps a measurement to the result rows it fills (for error reporting).
var keysOf = map[string][]string{
	"bulk tcp-1": {"bulk-tcp-1", "cpu-tcp-1"}, "bulk tcp-16": {"bulk-tcp-16", "cpu-tcp-16"},
	"bulk tls-1": {"bulk-tls-1", "cpu-tls-1"}, "bulk tls-16": {"bulk-tls-16", "cpu-tls-16"},
	"rate tcp": {"rate-tcp"}, "rate tls": {"rate-tls"}, "get": {"get"},
	"latency get":    {"lat-get-p50", "lat-get-p99"},
	"latency tunnel": {"lat-tun-p50", "lat-tun-p99"},
	"idle":           {"idle-rss", "idle-fd", "idle-gor", "idle-rss-total", "idle-gor-total"},
}

func rotate(list []*target, k int) []*target {
	if len(list) == 0 {
		return list
	}
	k %= len(list)
	return append(append([]*target{}, list[k:]...), list[:k]...)
}

func (h *harness) run(ctx context.Context) {
	var ms []measurement
	for _, m := range h.measurements() {
		if h.o.only[m.scenario] {
			ms = append(ms, m)
		}
	}
	if len(ms) > 0 {
		var live []*target
		for _, name := range h.o.targets {
			logf("starting %s", name)
			t := h.startTarget(ctx, name)
			h.targets[name] = t
			if t.naReason != "" {
				h.na[name] = t.naReason
				continue
			}
			live = append(live, t)
		}
		for round := 0; round < h.o.rounds; round++ {
			for mi, m := range ms {
				for _, t := range rotate(live, round+mi) {
					if ctx.Err() != nil {
						h.skipped++
						continue
					}
					if err := t.alive(); err != nil {
						h.failAll(m.name, t.name, err)
						continue
					}
					// Other work on the machine (its load comes and goes) distorts a
					// measurement: repeat one during which other processes used more
					// than --max-foreign cores, at most twice and only while the time
					// budget still covers the rest of the run.
					for attempt := 0; ; attempt++ {
						logf("round %d/%d %-15s %s", round+1, h.o.rounds, m.name, t.name)
						a := h.snap(t)
						err := m.run(ctx, t)
						fc := foreignCores(a, h.snap(t))
						logf("  other processes: %.2f cores", fc)
						sleepCtx(ctx, 200*time.Millisecond) // let sockets settle between measurements
						if err != nil {
							h.discard()
							h.failAll(m.name, t.name, err)
							break
						}
						left := (h.o.rounds-round-1)*len(ms)*len(live) + (len(ms)-mi)*len(live)
						if fc > h.o.maxForeign && attempt < 2 && h.affordable(left) {
							logf("  other processes used %.2f cores: repeating", fc)
							h.retried++
							h.discard()
							continue
						}
						h.foreign = append(h.foreign, fc)
						h.commit()
						break
					}
				}
			}
		}
		for _, t := range live {
			t.stop()
		}
	}
	if h.o.only["idle"] && h.o.idle > 0 {
		for round := 0; round < h.o.rounds; round++ {
			for _, name := range rotateNames(h.o.targets, round) {
				if name == "direct" {
					continue
				}
				if _, bad := h.na[name]; bad || ctx.Err() != nil {
					if ctx.Err() != nil {
						h.skipped++
					}
					continue
				}
				logf("round %d/%d idle %d       %s (fresh process)", round+1, h.o.rounds, h.o.idle, name)
				t := h.startTarget(ctx, name)
				if t.naReason != "" {
					h.na[name] = t.naReason
					continue
				}
				r, err := h.idleCost(ctx, t, h.o.idle)
				t.stop()
				if err != nil {
					h.failAll("idle", name, err)
					continue
				}
				h.record("idle-rss", name, r.rssPer)
				h.record("idle-fd", name, r.fdPer)
				h.record("idle-rss-total", name, r.rssAfterMiB)
				if name == "gateway" {
					h.record("idle-gor", name, r.gorPer)
					h.record("idle-gor-total", name, r.gorAfter)
				}
				h.commit()
				sleepCtx(ctx, 500*time.Millisecond)
			}
		}
	}
	if h.skipped > 0 {
		h.note("time budget (--timeout %s) ran out: %d measurements skipped", h.o.timeout, h.skipped)
	}
	h.commit()
}

// affordable reports whether one more measurement still leaves time for the
// `left` measurements after it and the idle phase.
func (h *harness) affordable(left int) bool {
	per := h.o.duration + 900*time.Millisecond
	need := time.Duration(left+1) * per
	if h.o.only["idle"] && h.o.idle > 0 {
		need += time.Duration(h.o.rounds*3) * (4*time.Second + time.Duration(h.o.idle)*time.Millisecond)
	}
	return time.Now().Add(need).Before(h.deadline)
}

func rotateNames(list []string, k int) []string {
	k %= len(list)
	return append(append([]string{}, list[k:]...), list[:k]...)
}

func (h *harness) failAll(mname, target string, err error) {
	for _, k := range keysOf[mname] {
		h.fail(k, target, err)
	}
}

// ---------------------------------------------------------------------------
// Report.

type row struct {
	key, label string
	format     string
	derived    func(target string) (float64, bool) // computed from other rows
	directNA   bool
	gatewayOK  bool // only the gateway has this value
	noRatio    bool // a ratio is meaningless (e.g. added latency)
}

type group struct {
	title, note string
	scenario    string
	rows        []row
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func (h *harness) med(key, target string) (float64, bool) {
	v := h.res[key][target]
	if len(v) == 0 {
		return 0, false
	}
	return median(v), true
}

func (h *harness) groups() []group {
	added := func(key string) func(string) (float64, bool) {
		return func(target string) (float64, bool) {
			v, ok1 := h.med(key, target)
			d, ok2 := h.med(key, "direct")
			return v - d, ok1 && ok2
		}
	}
	return []group{
		{"Bulk CONNECT throughput", "GB/s, upstream → client, higher is better. Plain TCP tunnels use the `verify_sni: false` rule; TLS tunnels carry a TLS 1.3 session whose SNI the gateway verifies.", "bulk", []row{
			{key: "bulk-tcp-1", label: "plain TCP, 1 stream (GB/s)", format: "%.2f"},
			{key: "bulk-tcp-16", label: "plain TCP, 16 streams (GB/s)", format: "%.2f"},
			{key: "bulk-tls-1", label: "TLS, 1 stream (GB/s)", format: "%.2f"},
			{key: "bulk-tls-16", label: "TLS, 16 streams (GB/s)", format: "%.2f"},
			{key: "cpu-tcp-1", label: "proxy CPU, plain TCP, 1 stream (CPU-s/GB)", format: "%.2f", directNA: true},
			{key: "cpu-tcp-16", label: "proxy CPU, plain TCP, 16 streams (CPU-s/GB)", format: "%.2f", directNA: true},
			{key: "cpu-tls-1", label: "proxy CPU, TLS, 1 stream (CPU-s/GB)", format: "%.2f", directNA: true},
			{key: "cpu-tls-16", label: "proxy CPU, TLS, 16 streams (CPU-s/GB)", format: "%.2f", directNA: true},
		}},
		{"New tunnels", fmt.Sprintf("tunnels/s, %d concurrent clients, higher is better: CONNECT, a 64-byte request and response through the tunnel, close.", h.o.clients), "rate", []row{
			{key: "rate-tcp", label: "plain TCP (tunnels/s)", format: "%.0f"},
			{key: "rate-tls", label: "TLS handshake inside the tunnel (tunnels/s)", format: "%.0f"},
		}},
		{"Plain HTTP", fmt.Sprintf("requests/s, absolute-form GET of a 1 KiB object, keep-alive, %d concurrent clients, higher is better.", h.o.clients), "get", []row{
			{key: "get", label: "GET 1 KiB (req/s)", format: "%.0f"},
		}},
		{"Latency at a fixed rate", fmt.Sprintf("µs, %d requests/s (open loop), lower is better. GET: absolute-form GET of the 1 KiB object. Tunnel: a 64-byte round trip over one established plain tunnel. \"added\" = the target's median minus direct's.", h.o.latRate), "latency", []row{
			{key: "lat-get-p50", label: "GET p50 (µs)", format: "%.0f"},
			{key: "lat-get-p99", label: "GET p99 (µs)", format: "%.0f"},
			{key: "lat-get-add50", label: "GET p50 added over direct (µs)", format: "%+.0f", derived: added("lat-get-p50"), noRatio: true},
			{key: "lat-get-add99", label: "GET p99 added over direct (µs)", format: "%+.0f", derived: added("lat-get-p99"), noRatio: true},
			{key: "lat-tun-p50", label: "tunnel round trip p50 (µs)", format: "%.0f"},
			{key: "lat-tun-p99", label: "tunnel round trip p99 (µs)", format: "%.0f"},
			{key: "lat-tun-add50", label: "tunnel p50 added over direct (µs)", format: "%+.0f", derived: added("lat-tun-p50"), noRatio: true},
			{key: "lat-tun-add99", label: "tunnel p99 added over direct (µs)", format: "%+.0f", derived: added("lat-tun-p99"), noRatio: true},
		}},
		{"Idle tunnels", fmt.Sprintf("%d established plain tunnels (one 64-byte round trip each, then idle), measured on a freshly started proxy after a warm-up; per tunnel = (after − before) / %d; lower is better.", h.o.idle, h.o.idle), "idle", []row{
			{key: "idle-rss", label: "RSS per tunnel (KiB)", format: "%.1f", directNA: true},
			{key: "idle-fd", label: "file descriptors per tunnel", format: "%.2f", directNA: true},
			{key: "idle-gor", label: "goroutines per tunnel", format: "%.2f", directNA: true, gatewayOK: true},
			{key: "idle-rss-total", label: fmt.Sprintf("RSS with %d idle tunnels (MiB)", h.o.idle), format: "%.1f", directNA: true},
			{key: "idle-gor-total", label: fmt.Sprintf("goroutines with %d idle tunnels", h.o.idle), format: "%.0f", directNA: true, gatewayOK: true},
		}},
	}
}

func (h *harness) value(r row, target string) (float64, bool) {
	if r.derived != nil {
		return r.derived(target)
	}
	return h.med(r.key, target)
}

func (h *harness) cell(r row, target string) string {
	if !contains(h.o.targets, target) {
		return "—"
	}
	if (r.directNA && target == "direct") || (r.gatewayOK && target != "gateway") {
		return "—"
	}
	if _, ok := h.na[target]; ok {
		return "n/a"
	}
	if v, ok := h.value(r, target); ok {
		return fmt.Sprintf(r.format, v)
	}
	if r.derived != nil {
		return "—"
	}
	if _, ok := h.errs[r.key][target]; ok {
		return "error"
	}
	return "—"
}

func (h *harness) ratio(r row, other string) string {
	if r.noRatio || r.gatewayOK || (r.directNA && other == "direct") {
		return "—"
	}
	g, ok1 := h.value(r, "gateway")
	o, ok2 := h.value(r, other)
	if !ok1 || !ok2 || o == 0 {
		return "—"
	}
	return fmt.Sprintf("%.2f", g/o)
}

func (h *harness) report() string {
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	w("# Benchmarks: gateway vs Squid vs tinyproxy vs direct\n\n")
	w("Produced by:\n\n```sh\n%s\n```\n\n", h.o.command)
	if h.o.command != h.o.self {
		w("which built the gateway (`go build -o <tmp>/gateway ./cmd/gateway`) and ran the equivalent of `%s`.\n\n", h.o.self)
	}
	w("Everything ran on loopback on one machine: the load generator, the upstreams and the proxy under test share its cores, so absolute numbers are lower bounds and the ratios are what to read. How each scenario works and its caveats: [`bench/README.md`](../bench/README.md).\n\n")
	w("| | |\n|---|---|\n")
	w("| date | %s |\n", time.Now().UTC().Format("2006-01-02 15:04 UTC"))
	w("| machine | %d × %s, %s GiB RAM, Linux %s |\n", runtime.NumCPU(), cpuModel(), memGiB(), kernel())
	w("| gateway | %s, source %s |\n", cmdFirstLine(h.o.gateway, "version"), h.revision)
	w("| squid | %s |\n", cmdFirstLine(h.o.squid, "-v"))
	w("| tinyproxy | %s |\n", cmdFirstLine(h.o.tinyproxy, "-v"))
	w("| go | %s |\n", goVersion())
	w("| load average (1/5/15 min) | %s at start, %s at the end (other work on the machine skews results) |\n", h.loadStart, loadAvg())
	w("| settings | %d rounds × %s per measurement (medians), %d concurrent clients, latency at %d/s, %d idle tunnels; run took %s |\n",
		h.o.rounds, h.o.duration, h.o.clients, h.o.latRate, h.o.idle, time.Since(h.start).Round(time.Second))
	if len(h.foreign) > 0 {
		w("| other processes' CPU during kept measurements | median %.2f, max %.2f cores; %d measurements repeated because it exceeded %.2f |\n",
			median(h.foreign), slices.Max(h.foreign), h.retried, h.o.maxForeign)
	}
	w("\n")
	w("Ratio columns divide the gateway's median by Squid's and by direct's: above 1 means a larger number for the gateway (better for rates, worse for CPU, latency and memory).\n\n")
	cols := []string{"gateway", "squid", "tinyproxy", "direct"}
	for _, g := range h.groups() {
		if !h.o.only[g.scenario] {
			continue
		}
		w("## %s\n\n%s\n\n", g.title, g.note)
		w("| scenario | gateway | squid | tinyproxy | direct | gateway/squid | gateway/direct |\n")
		w("|---|--:|--:|--:|--:|--:|--:|\n")
		for _, r := range g.rows {
			w("| %s |", r.label)
			for _, c := range cols {
				w(" %s |", h.cell(r, c))
			}
			w(" %s | %s |\n", h.ratio(r, "squid"), h.ratio(r, "direct"))
		}
		w("\n")
	}
	var problems []string
	for _, name := range cols {
		if why, ok := h.na[name]; ok {
			problems = append(problems, fmt.Sprintf("**%s: n/a** — %s", name, why))
		}
	}
	var keys []string
	for k := range h.errs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		for _, name := range cols {
			if e, ok := h.errs[k][name]; ok {
				if _, na := h.na[name]; !na {
					problems = append(problems, fmt.Sprintf("`%s` %s: error in at least one round: %s", k, name, e))
				}
			}
		}
	}
	problems = append(problems, h.notes...)
	if len(problems) > 0 {
		w("## Problems during the run\n\n")
		for _, p := range problems {
			w("- %s\n", strings.ReplaceAll(p, "\n", " "))
		}
		w("\n")
	}
	w("## Every round\n\n<details><summary>values per round (same units as above)</summary>\n\n")
	w("| row | target | rounds |\n|---|---|---|\n")
	for _, g := range h.groups() {
		for _, r := range g.rows {
			if r.derived != nil {
				continue
			}
			for _, c := range cols {
				v := h.res[r.key][c]
				if len(v) == 0 {
					continue
				}
				var s []string
				for _, x := range v {
					s = append(s, fmt.Sprintf(r.format, x))
				}
				w("| %s | %s | %s |\n", r.key, c, strings.Join(s, ", "))
			}
		}
	}
	w("\n</details>\n")
	return b.String()
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "model name") {
			if i := strings.IndexByte(line, ':'); i >= 0 {
				return strings.TrimSpace(line[i+1:])
			}
		}
	}
	return runtime.GOARCH
}

func loadAvg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func kernel() string {
	b, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return strings.TrimSpace(string(b))
}

func memGiB() string {
	b, _ := os.ReadFile("/proc/meminfo")
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "MemTotal:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return fmt.Sprintf("%.0f", kb/1024/1024)
		}
	}
	return "?"
}

func cmdFirstLine(name string, args ...string) string {
	if name == "" {
		return "n/a"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	s := strings.TrimSpace(string(out))
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if err != nil && s == "" {
		return "n/a (" + err.Error() + ")"
	}
	return s
}

func goVersion() string {
	if s := cmdFirstLine("go", "version"); !strings.HasPrefix(s, "n/a") {
		return s
	}
	return runtime.Version()
}

// gitRevision names the commit of the working tree (run.sh builds the gateway
// from it), and whether tracked files had uncommitted changes.
func gitRevision() string {
	s := cmdFirstLine("git", "describe", "--always", "--dirty=+uncommitted-changes", "--abbrev=12")
	if strings.HasPrefix(s, "n/a") || strings.Contains(s, "fatal") {
		return "unknown revision"
	}
	return "`" + s + "`"
}
