package main

import (
	"context"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/defendergw/gateway/internal/allowlist"
	"github.com/defendergw/gateway/internal/endpoint"
)

// pacCache remembers the PAC file of one policy and advertised address.
type pacCache struct {
	policy *allowlist.Policy
	addr   string
	body   []byte
}

// pacServer renders the PAC file served on the proxy port.
type pacServer struct {
	public, dflt string
	listen       net.Addr
	cache        atomic.Pointer[pacCache]
}

// pac returns the PAC file for p. The advertised address is
// GATEWAY_PUBLIC_ADDR, else the proxy listener's, else (listening on all
// interfaces) the address the client used to fetch the file.
func (s *pacServer) pac(p *allowlist.Policy, requestHost string) ([]byte, error) {
	addr := s.public
	if addr == "" {
		addr = advertisedAddr(s.listen, requestHost)
	}
	if c := s.cache.Load(); c != nil && c.policy == p && c.addr == addr {
		return c.body, nil
	}
	body, err := endpoint.PAC(p, endpoint.PACOptions{Proxy: addr, Default: s.dflt})
	if err != nil {
		return nil, err
	}
	s.cache.Store(&pacCache{policy: p, addr: addr, body: body})
	return body, nil
}

func advertisedAddr(listen net.Addr, requestHost string) string {
	host, port, _ := net.SplitHostPort(listen.String())
	if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() {
		return listen.String()
	}
	if h, _, err := net.SplitHostPort(requestHost); err == nil {
		return net.JoinHostPort(strings.Trim(h, "[]"), port)
	}
	if requestHost != "" {
		return net.JoinHostPort(strings.Trim(requestHost, "[]"), port)
	}
	return listen.String()
}

// pacCmd prints the PAC file the gateway serves.
func pacCmd(args []string, stdout, stderr io.Writer) int {
	var f cliFlags
	fs := newFlagSet("pac", stderr, &f, "")
	proxyAddr := fs.String("proxy", "", "advertised gateway host:port (default GATEWAY_PUBLIC_ADDR, else GATEWAY_LISTEN)")
	dflt := fs.String("default", "", "DIRECT or PROXY for hosts not on the allowlist (default GATEWAY_PAC_DEFAULT)")
	if pos, err := parseInterleaved(fs, args); err != nil || len(pos) != 0 {
		fmt.Fprintln(stderr, "usage: gateway pac [--proxy host:port] [--default DIRECT|PROXY] [--geo LIST] [--rules FILE]")
		return 2
	}
	cfg, p, err := cliConfigPolicy(&f)
	if err != nil {
		fmt.Fprintf(stderr, "gateway: configuration: %v\n", err)
		return 2
	}
	addr := *proxyAddr
	if addr == "" {
		addr = cfg.PublicAddr
	}
	if addr == "" {
		host, _, _ := net.SplitHostPort(cfg.Listen)
		if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
			fmt.Fprintln(stderr, "gateway pac: the gateway listens on all interfaces: name the address endpoints use with --proxy or GATEWAY_PUBLIC_ADDR")
			return 2
		}
		addr = cfg.Listen
	}
	if *dflt == "" {
		*dflt = cfg.PACDefault
	}
	body, err := endpoint.PAC(p, endpoint.PACOptions{Proxy: addr, Default: *dflt})
	if err != nil {
		fmt.Fprintf(stderr, "gateway pac: %v\n", err)
		return 2
	}
	stdout.Write(body)
	return 0
}

// clientConfigCmd prints the endpoint configuration kit.
func clientConfigCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("client-config", flag.ContinueOnError)
	fs.SetOutput(stderr)
	proxyAddr := fs.String("proxy", "", "gateway host:port the endpoints use (required)")
	format := fs.String("format", "cmd", "cmd, ps1 or reg")
	pacURL := fs.String("pac-url", "", "optional Defender Antivirus ProxyPacUrl")
	bypass := fs.String("bypass", "", "optional comma-separated bypass list (ProxyBypass, netsh bypass-list)")
	offline := fs.Bool("offline", false, "fully offline devices: also set PreferStaticProxyForHttpRequest")
	undo := fs.Bool("undo", false, "print the script that removes the settings")
	if pos, err := parseInterleaved(fs, args); err != nil || len(pos) != 0 || *proxyAddr == "" {
		fmt.Fprintln(stderr, "usage: gateway client-config --proxy host:port [--format cmd|ps1|reg] [--pac-url URL] [--bypass LIST] [--offline] [--undo]")
		return 2
	}
	c := endpoint.ClientConfig{Proxy: *proxyAddr, PACURL: *pacURL, Offline: *offline, Undo: *undo}
	if *bypass != "" {
		c.Bypass = trimList(strings.Split(*bypass, ","))
	}
	out, err := c.Render(*format)
	if err != nil {
		fmt.Fprintf(stderr, "gateway client-config: %v\n", err)
		return 2
	}
	stdout.Write(out)
	return 0
}

// probeCmd checks every probe-able catalog endpoint like Microsoft's client
// analyzer, through the gateway or direct.
func probeCmd(args []string, stdout, stderr io.Writer) int {
	var f cliFlags
	fs := newFlagSet("probe", stderr, &f, "text")
	via := fs.String("via", "", "probe through this gateway (http://host:port); default: direct")
	caFile := fs.String("ca", "", "extra PEM roots to trust (e.g. the lab CA)")
	user := fs.String("proxy-user", "", "user:password for the gateway")
	timeout := fs.Duration("timeout", 15*time.Second, "per-URL timeout")
	conc := fs.Int("concurrency", 8, "URLs probed at once")
	if pos, err := parseInterleaved(fs, args); err != nil || len(pos) != 0 {
		fmt.Fprintln(stderr, "usage: gateway probe [--via http://gateway:port] [--geo LIST] [--format text|json] [--ca FILE] [--proxy-user user:pass]")
		return 2
	}
	if f.format != "text" && f.format != "json" {
		fmt.Fprintf(stderr, "gateway probe: --format: want text or json, got %q\n", f.format)
		return 2
	}
	_, p, err := cliConfigPolicy(&f)
	if err != nil {
		fmt.Fprintf(stderr, "gateway: configuration: %v\n", err)
		return 2
	}
	opts := endpoint.ProbeOptions{Timeout: *timeout, Concurrency: *conc}
	if *via != "" {
		u, err := url.Parse(*via)
		if err != nil || u.Scheme != "http" || u.Host == "" {
			fmt.Fprintf(stderr, "gateway probe: --via: want http://host:port, got %q\n", *via)
			return 2
		}
		opts.Via = u
	}
	if *user != "" {
		name, pass, _ := strings.Cut(*user, ":")
		opts.ProxyUser = url.UserPassword(name, pass)
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
	if f.format == "text" {
		opts.Progress = func(done, total int) { fmt.Fprintf(stderr, "\rprobing %d/%d", done, total) }
	}
	results := endpoint.Probe(context.Background(), endpoint.ProbeTargets(p), opts)
	if f.format == "text" {
		fmt.Fprintln(stderr)
		endpoint.WriteText(stdout, results, opts.Via, endpoint.NotProbed(p))
	} else if err := endpoint.WriteJSON(stdout, results, endpoint.NotProbed(p)); err != nil {
		fmt.Fprintf(stderr, "gateway probe: %v\n", err)
		return 2
	}
	if endpoint.Failed(results) {
		return 1
	}
	return 0
}
