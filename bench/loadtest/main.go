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
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
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
	idleTLS    bool // idle tunnels carry a TLS session (SNI verified), as Defender's do
	idleRate   bool // measure new TLS tunnels while the idle ones are held
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
	gwEnv      []string // extra KEY=VALUE for the gateway (--gateway-env)
	gwUser     string   // run the gateway as this user (--gateway-user)
	streams    []int    // bulk stream counts (--bulk-streams)
}

func main() {
	if len(os.Args) == 4 && os.Args[1] == "relay-serve" {
		runRelay(os.Args[2], os.Args[3]) // the relay target, started by the harness
		return
	}
	var o options
	var only, targets string
	streams := "1,16"
	flag.StringVar(&o.gateway, "gateway", "", "gateway binary (built with go build -o PATH ./cmd/gateway); required for the gateway target")
	flag.StringVar(&o.squid, "squid", "squid", "squid binary")
	flag.StringVar(&o.tinyproxy, "tinyproxy", "tinyproxy", "tinyproxy binary")
	flag.IntVar(&o.rounds, "rounds", 3, "rounds; every scenario runs against every target once per round, medians are reported")
	flag.DurationVar(&o.duration, "duration", 2*time.Second, "length of one measurement")
	flag.IntVar(&o.idle, "idle", 5000, "idle tunnels for the idle-cost scenario")
	flag.BoolVar(&o.idleTLS, "idle-tls", false, "idle tunnels carry a TLS session, SNI-verified (default: plain TCP tunnels)")
	flag.BoolVar(&o.idleRate, "idle-rate", false, "while the idle tunnels are held, measure the proxy's CPU per new TLS tunnel (the growth check)")
	flag.StringVar(&only, "only", "", "comma-separated scenarios to run: "+strings.Join(allScenarios, ","))
	flag.StringVar(&targets, "targets", "gateway,squid,tinyproxy,relay,direct", "comma-separated targets (relay: a minimal Go CONNECT relay, the reference)")
	flag.StringVar(&o.out, "out", "", "write the Markdown report to this file (default: standard output)")
	flag.StringVar(&o.command, "command", "", "command line to print at the top of the report (default: this program's)")
	flag.DurationVar(&o.timeout, "timeout", 7*time.Minute, "overall time budget; measurements not started by then are reported as skipped")
	flag.IntVar(&o.latRate, "latency-rate", 500, "requests per second for the latency scenario")
	flag.IntVar(&o.clients, "clients", 64, "concurrent clients for the rate scenarios")
	flag.Float64Var(&o.maxForeign, "max-foreign", 0.3, "repeat a measurement (at most twice) when other processes used more than this many cores during it")
	flag.BoolVar(&o.keepDir, "keep", false, "keep the temporary directory (configs and proxy logs)")
	flag.Func("gateway-env", "KEY=VALUE added to the gateway's environment (repeatable), e.g. GATEWAY_TUNNEL_COPY=splice", func(v string) error {
		if k, _, ok := strings.Cut(v, "="); !ok || !strings.HasPrefix(k, "GATEWAY_") {
			return fmt.Errorf("want GATEWAY_NAME=VALUE, got %q", v)
		}
		o.gwEnv = append(o.gwEnv, v)
		return nil
	})
	flag.StringVar(&o.gwUser, "gateway-user", "", "run the gateway as this user (the harness must run as root), e.g. nobody")
	flag.StringVar(&streams, "bulk-streams", streams, "comma-separated stream counts of the bulk scenario (plain TCP and TLS each)")
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
		if !contains([]string{"gateway", "squid", "tinyproxy", "relay", "direct"}, t) {
			fatalf("--targets: unknown target %q", t)
		}
		o.targets = append(o.targets, t)
	}
	for _, f := range strings.Split(streams, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 9000 {
			fatalf("--bulk-streams: want stream counts between 1 and 9000, got %q", f)
		}
		o.streams = append(o.streams, n)
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
