package main

import (
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"time"

	"github.com/defendergw/gateway/internal/clientconfig"
	"github.com/defendergw/gateway/internal/pac"
	"github.com/defendergw/gateway/internal/probe"
)

var pacHelp = cmdHelp{
	synopsis: "gateway pac [flags]",
	about: `Print the PAC file the gateway serves at /proxy.pac and /wpad.dat: the hosts of the allowlist in
force go to the gateway (PROXY --proxy), every other host gets --default.`,
}

// pacCmd prints the PAC file the gateway serves.
func pacCmd(args []string, stdout, stderr io.Writer) int {
	var f cliFlags
	fs := newPolicyFlagSet("pac", &f)
	proxyAddr := fs.String("proxy", "", "advertised gateway `HOST:PORT` (default: GATEWAY_PUBLIC_ADDR, else GATEWAY_LISTEN)")
	dflt := fs.String("default", "", "DIRECT or PROXY for hosts not on the allowlist (default: GATEWAY_PAC_DEFAULT)")
	if exit, ok := parseNoArgs(fs, args, pacHelp, stdout, stderr); !ok {
		return exit
	}
	cfg, p, err := cliConfigPolicy(&f)
	if err != nil {
		fmt.Fprintf(stderr, "gateway pac: %v\n", err)
		return 2
	}
	// Where each option came from, so that an error names it.
	addr, addrFrom := *proxyAddr, "--proxy"
	if addr == "" {
		addr, addrFrom = cfg.PublicAddr, "GATEWAY_PUBLIC_ADDR"
	}
	if addr == "" {
		// The first listener: the PAC file printed here reaches no
		// listener to tell which one the endpoint uses.
		host, _, _ := net.SplitHostPort(cfg.Listen[0])
		if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
			fmt.Fprintln(stderr, "gateway pac: the gateway listens on all interfaces: name the address endpoints use with --proxy or GATEWAY_PUBLIC_ADDR")
			return 2
		}
		addr, addrFrom = cfg.Listen[0], "GATEWAY_LISTEN"
	}
	dfltFrom := "--default"
	if *dflt == "" {
		*dflt, dfltFrom = string(cfg.PACDefault), "GATEWAY_PAC_DEFAULT"
	}
	body, err := pac.Render(p, pac.Options{Proxy: addr, Default: *dflt})
	if err != nil {
		var oe *pac.OptionError
		if errors.As(err, &oe) {
			from := addrFrom
			if oe.Option == pac.OptionDefault {
				from = dfltFrom
			}
			fmt.Fprintf(stderr, "gateway pac: %s %q: %s\n", from, oe.Value, oe.Reason)
			return 2
		}
		fmt.Fprintf(stderr, "gateway pac: %v\n", err)
		return 2
	}
	stdout.Write(body)
	return 0
}

var clientConfigHelp = cmdHelp{
	synopsis: "gateway client-config --proxy HOST:PORT [flags]",
	about: `Print the script that points all three Defender components (EDR sensor, Defender Antivirus and
the system-wide WinHTTP proxy) at the gateway, or with --undo the one that removes the settings.
--bypass takes what WinHTTP takes: entries separated by ';' or ',' (spaces around them are
ignored), host names, addresses, wildcards such as *.contoso.local or 10.*, and <local> (names
without a dot). The WinHTTP proxy is machine-wide: every program on the device that uses WinHTTP
goes through the gateway, which refuses what it does not list.`,
}

// clientConfigCmd prints the endpoint configuration kit.
func clientConfigCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("client-config", flag.ContinueOnError)
	proxyAddr := fs.String("proxy", "", "gateway `HOST:PORT` the endpoints use (required)")
	format := fs.String("format", "cmd", "output `FORMAT`: cmd, ps1 or reg")
	pacURL := fs.String("pac-url", "", "optional Defender Antivirus ProxyPacUrl, an http:// or https:// `URL`")
	bypass := fs.String("bypass", "", "optional bypass `LIST` (ProxyBypass and the netsh bypass-list), e.g. '<local>;*.contoso.local'")
	offline := fs.Bool("offline", false, "fully offline devices: also set PreferStaticProxyForHttpRequest")
	undo := fs.Bool("undo", false, "print the script that removes the settings")
	if exit, ok := parseNoArgs(fs, args, clientConfigHelp, stdout, stderr); !ok {
		return exit
	}
	switch {
	case *proxyAddr == "":
		usageError(stderr, fs, clientConfigHelp, "--proxy is required")
		return 2
	}
	c := clientconfig.Config{Proxy: *proxyAddr, PACURL: *pacURL, Offline: *offline, Undo: *undo}
	if *bypass != "" {
		// Render splits the list at ';' and ','.
		c.Bypass = []string{*bypass}
	}
	out, err := c.Render(*format)
	if err != nil {
		fmt.Fprintf(stderr, "gateway client-config: %v\n", err)
		return 2
	}
	stdout.Write(out)
	return 0
}

var probeHelp = cmdHelp{
	synopsis: "gateway probe [flags]",
	about: `Check every probe-able catalog endpoint of the cloud and data locations, as the MDE client analyzer
does, through the gateway (--via) or direct. Exit status: 0 every required endpoint answered as
the real service does, 1 one failed, 2 error.`,
}

// probeCmd checks every probe-able catalog endpoint like Microsoft's client
// analyzer, through the gateway or direct.
func probeCmd(args []string, stdout, stderr io.Writer) int {
	var f cliFlags
	fs := newFlagSet("probe", &f, "text", "text or json")
	via := fs.String("via", "", "probe through this gateway, `URL` http://host:port (default: direct)")
	caFile := fs.String("ca", "", "extra PEM roots to trust, e.g. the lab CA (`FILE`)")
	user := fs.String("proxy-user", "", "`USER:PASSWORD` for the gateway")
	timeout := fs.Duration("timeout", 15*time.Second, "per-URL timeout, a `DURATION` such as 5s")
	conc := fs.Int("concurrency", 8, "`N` URLs probed at once")
	if exit, ok := parseNoArgs(fs, args, probeHelp, stdout, stderr); !ok {
		return exit
	}
	if f.format != "text" && f.format != "json" {
		fmt.Fprintf(stderr, "gateway probe: --format: want text or json, got %q\n", f.format)
		return 2
	}
	if *timeout <= 0 {
		fmt.Fprintf(stderr, "gateway probe: --timeout: want a positive duration, got %s\n", *timeout)
		return 2
	}
	if *conc <= 0 {
		fmt.Fprintf(stderr, "gateway probe: --concurrency: want a positive number, got %d\n", *conc)
		return 2
	}
	opts := probe.Options{Timeout: *timeout, Concurrency: *conc}
	if *via != "" {
		u, err := url.Parse(*via)
		if err != nil || u.Scheme != "http" || u.Host == "" {
			fmt.Fprintf(stderr, "gateway probe: --via: want http://host:port, got %q\n", *via)
			return 2
		}
		opts.Via = u
	}
	if *user != "" {
		u, err := probe.ParseProxyUser(*user)
		if err != nil {
			fmt.Fprintf(stderr, "gateway probe: --proxy-user: %v\n", err)
			return 2
		}
		opts.ProxyUser = u
	}
	if *caFile != "" {
		pem, err := os.ReadFile(*caFile)
		if err != nil {
			fmt.Fprintf(stderr, "gateway probe: --ca: %v\n", err)
			return 2
		}
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			fmt.Fprintf(stderr, "gateway probe: --ca: %s holds no PEM certificate\n", *caFile)
			return 2
		}
		opts.RootCAs = pool
	}
	_, p, err := cliConfigPolicy(&f)
	if err != nil {
		fmt.Fprintf(stderr, "gateway probe: %v\n", err)
		return 2
	}
	if f.format == "text" {
		// Nil unless stderr is a terminal: redrawn lines would litter a
		// file or a pipe.
		opts.Progress = probe.TerminalProgress(stderr)
	}
	results := probe.Run(context.Background(), probe.Targets(p), opts)
	if opts.Progress != nil {
		fmt.Fprintln(stderr)
	}
	if f.format == "text" {
		probe.WriteText(stdout, results, opts.Via, probe.NotProbed(p))
	} else if err := probe.WriteJSON(stdout, results, probe.NotProbed(p)); err != nil {
		fmt.Fprintf(stderr, "gateway probe: %v\n", err)
		return 2
	}
	if probe.Failed(results) {
		return 1
	}
	return 0
}
