package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"

	"github.com/defendergw/gateway/internal/allowlist"
	"github.com/defendergw/gateway/internal/config"
	"github.com/defendergw/gateway/internal/gateway"
	"github.com/defendergw/gateway/internal/lab"
	"github.com/defendergw/gateway/internal/probe"
	"github.com/defendergw/gateway/internal/proxy"
)

var labHelp = cmdHelp{
	synopsis: "gateway lab [flags]",
	about: `Run a loopback replica: a DNS server answering the catalog's names with --addr, simulated Defender
endpoints (their CA written to --dir) and the gateway configured to use them, until SIGINT or
SIGTERM. It prints the commands to try against it, which work as printed. Without --dir the CA
goes to a new temporary directory, removed when the lab stops.`,
}

// labCmd runs the lab replica: a DNS server answering the catalog's names
// with a loopback address, simulated Defender endpoints, and the gateway
// configured to use them.
func labCmd(args []string, stdout, stderr io.Writer) int {
	var f cliFlags
	fs := flag.NewFlagSet("lab", flag.ContinueOnError)
	addScopeFlags(fs, &f)
	listen := fs.String("listen", "127.0.0.1:3128", "gateway listener `HOST:PORT`")
	addr := fs.String("addr", "127.0.0.1", "`IP` address of the simulated endpoints and DNS server")
	dir := fs.String("dir", "", "`DIR` to write the lab CA to, kept when the lab stops (default: a new temporary directory, removed)")
	if exit, ok := parseNoArgs(fs, args, labHelp, stdout, stderr); !ok {
		return exit
	}
	// Checked here, so that the error names the flag rather than the
	// variables they become.
	if _, _, err := net.SplitHostPort(*listen); err != nil {
		fmt.Fprintf(stderr, "gateway lab: --listen: %q is not host:port\n", *listen)
		return 2
	}
	if net.ParseIP(*addr) == nil {
		fmt.Fprintf(stderr, "gateway lab: --addr: %q is not an IP address\n", *addr)
		return 2
	}
	environ := config.EnvironMap()
	environ["GATEWAY_LISTEN"] = *listen
	if p := environ["GATEWAY_ALLOW_PRIVATE_DESTINATIONS"]; p != "" {
		environ["GATEWAY_ALLOW_PRIVATE_DESTINATIONS"] = p + "," + *addr
	} else {
		environ["GATEWAY_ALLOW_PRIVATE_DESTINATIONS"] = *addr
	}
	if err := applyFlags(environ, &f); err != nil {
		fmt.Fprintf(stderr, "gateway lab: %v\n", err)
		return 2
	}
	// The lab serves the names of the catalog in force (GATEWAY_CATALOG_FILE
	// included), so that an imported catalog can be tried before it is
	// deployed.
	environ["GATEWAY_DNS_SERVERS"] = "127.0.0.1" // replaced by the lab's own below
	cfg, unknown, err := config.Load(environ)
	if err != nil {
		fmt.Fprintf(stderr, "gateway lab: %v\n", flagNamed(err, &f))
		return 2
	}
	cat, _, err := cfg.LoadCatalog()
	if err != nil {
		fmt.Fprintf(stderr, "gateway lab: %v\n", err)
		return 2
	}
	// Caught from here on, so that a signal sent as soon as the commands
	// are printed stops the lab cleanly, its temporary directory removed,
	// rather than killing it before the gateway watches for signals.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	kept := *dir != ""
	if kept {
		if err := os.MkdirAll(*dir, 0o700); err != nil {
			fmt.Fprintf(stderr, "gateway lab: --dir: %v\n", err)
			return 1
		}
	} else {
		d, err := os.MkdirTemp("", "gateway-lab-")
		if err != nil {
			fmt.Fprintf(stderr, "gateway lab: %v\n", err)
			return 1
		}
		// Registered before l.Close, so it runs after it: whatever the
		// lab wrote is gone when the lab is.
		defer os.RemoveAll(d)
		*dir = d
	}
	l, err := lab.Start(lab.Options{Addr: *addr, Dir: *dir, Catalog: cat})
	if err != nil {
		fmt.Fprintf(stderr, "gateway lab: %v\n", err)
		return 1
	}
	defer l.Close()
	cfg.DNSServers = []string{l.DNSAddr}
	// The lab's endpoints present lab-CA certificates: the gateway's own
	// upstream TLS (forwarded HTTPS, the upstream check) trusts it as
	// endpoints trust Microsoft's.
	if cfg.UpstreamCAFile == "" {
		cfg.UpstreamCAFile = l.CAFile
	}
	logger := cfg.NewLogger(os.Stderr)
	for _, k := range unknown {
		logger.Warn("unknown setting ignored (typo?)", "variable", k)
	}
	g, err := gateway.New(gateway.Options{Config: cfg, Logger: logger, Version: buildVersion(),
		WrapDialer: func(d proxy.Dialer) proxy.Dialer { return lab.PortMap{Dialer: d, Ports: l.Ports()} }})
	if err != nil {
		fmt.Fprintf(stderr, "gateway lab: %v\n", err)
		return 2
	}
	gw := "http://" + g.Addr().String()
	fmt.Fprintf(stdout, "lab gateway: %s\n", gw)
	fmt.Fprintf(stdout, "lab CA: %s\n", l.CAFile)
	if kept {
		fmt.Fprintf(stdout, "lab dir: %s (--dir: kept when the lab stops)\n", *dir)
	} else {
		fmt.Fprintf(stdout, "lab dir: %s (temporary: removed when the lab stops)\n", *dir)
	}
	fmt.Fprintf(stdout, "lab DNS: %s\n", l.DNSAddr)
	if a := g.AdminAddr(); a != nil {
		fmt.Fprintf(stdout, "lab admin: http://%s\n", a)
	}
	p := g.Policy()
	fmt.Fprintf(stdout, "try: %s\n", labProbeCommand(selfCommand(), cfg, p, gw, l.CAFile))
	if u := labExample(p); u != "" {
		fmt.Fprintf(stdout, "try: %s\n", shellJoin([]string{"curl", "--fail", "-x", gw, "--cacert", filepath.Clean(l.CAFile), u}))
	}
	if f, ok := stdout.(interface{ Sync() error }); ok {
		f.Sync()
	}
	if err := g.Run(ctx); err != nil {
		fmt.Fprintf(stderr, "gateway lab: %v\n", err)
		return 1
	}
	return 0
}

// labProbeCommand is the probe of the lab's gateway, as a shell command
// that works as printed: it names the cloud and the data locations the lab
// serves (whatever GATEWAY_CLOUD and GATEWAY_GEOGRAPHIES say where it is
// run) and the catalog file the lab's names come from.
func labProbeCommand(self []string, cfg *config.Config, p *allowlist.Policy, gw, caFile string) string {
	args := append(append([]string{}, self...), "probe", "--via", gw, "--ca", caFile, "--cloud", p.Cloud().String())
	if !p.Cloud().Government() {
		// The data locations in force; none configured means all of them,
		// which the probe is told by name.
		var geos []string
		for _, g := range p.Geographies() {
			if g != allowlist.WW {
				geos = append(geos, g.String())
			}
		}
		if len(geos) == 0 {
			geos = []string{allowlist.WW.String()}
		}
		args = append(args, "--geo", strings.Join(geos, ","))
	}
	cmd := shellJoin(args)
	if cfg.CatalogFile != "" {
		// probe has no flag for the catalog: the variable goes first.
		file, err := filepath.Abs(cfg.CatalogFile)
		if err != nil {
			file = cfg.CatalogFile
		}
		cmd = "GATEWAY_CATALOG_FILE=" + shellQuote(file) + " " + cmd
	}
	return cmd
}

// selfCommand is how to run this binary again from a shell: its path (the
// README's "gateway" is not necessarily on PATH), or go run from the
// repository root when go run built it into the build cache, where it
// does not stay.
func selfCommand() []string {
	exe, err := os.Executable()
	if err != nil {
		return []string{"gateway"}
	}
	return selfCommandFor(exe)
}

var (
	// goCacheEntry and goCacheShard name the directories of a go run
	// executable the go command keeps in GOCACHE (Go 1.24 on):
	// $GOCACHE/3b/3ba2…-d/gateway.
	goCacheEntry = regexp.MustCompile(`^[0-9a-f]{64}-d$`)
	goCacheShard = regexp.MustCompile(`^[0-9a-f]{2}$`)
)

func selfCommandFor(exe string) []string {
	dir := filepath.Dir(exe)
	parent := filepath.Dir(dir)
	switch {
	case filepath.Base(dir) == "exe" && strings.HasPrefix(filepath.Base(filepath.Dir(parent)), "go-build"):
		// $TMPDIR/go-build123/b001/exe/gateway, removed when go run ends.
	case goCacheEntry.MatchString(filepath.Base(dir)) && goCacheShard.MatchString(filepath.Base(parent)):
	default:
		return []string{exe}
	}
	return []string{"go", "run", "./cmd/gateway"}
}

// shellSafe are the words a POSIX shell reads as they are.
var shellSafe = regexp.MustCompile(`^[A-Za-z0-9_@%+=:,./-]+$`)

// shellQuote quotes s for a POSIX shell where it needs it.
func shellQuote(s string) string {
	if shellSafe.MatchString(s) {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func shellJoin(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = shellQuote(a)
	}
	return strings.Join(q, " ")
}

// labExample is a command-and-control test URL the lab's gateway allows (an
// EDR gateway of the configured cloud and geography), for the printed curl
// example.
func labExample(p *allowlist.Policy) string {
	for _, t := range probe.Targets(p) {
		if strings.HasSuffix(t.URL, "/commands/test") {
			return t.URL
		}
	}
	return ""
}
