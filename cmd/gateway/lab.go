package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/defendergw/gateway/internal/allowlist"
	"github.com/defendergw/gateway/internal/lab"
	"github.com/defendergw/gateway/internal/proxy"
)

// labCmd runs the lab replica: a DNS server answering the catalog's names
// with a loopback address, simulated Defender endpoints, and the gateway
// configured to use them.
func labCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("lab", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:3128", "gateway listener")
	addr := fs.String("addr", "127.0.0.1", "address of the simulated endpoints and DNS server")
	dir := fs.String("dir", "", "directory for the lab CA (default: a new temporary directory)")
	geo := fs.String("geo", "", "geographies (overrides GATEWAY_GEOGRAPHIES)")
	if _, err := parseInterleaved(fs, args); err != nil {
		return 2
	}
	if *dir == "" {
		d, err := os.MkdirTemp("", "gateway-lab-")
		if err != nil {
			fmt.Fprintf(stderr, "gateway lab: %v\n", err)
			return 1
		}
		*dir = d
	}
	cat, err := allowlist.Embedded()
	if err != nil {
		fmt.Fprintf(stderr, "gateway lab: %v\n", err)
		return 1
	}
	l, err := lab.Start(lab.Options{Addr: *addr, Dir: *dir, Catalog: cat})
	if err != nil {
		fmt.Fprintf(stderr, "gateway lab: %v\n", err)
		return 1
	}
	defer l.Close()

	environ := environMap()
	environ["GATEWAY_LISTEN"] = *listen
	environ["GATEWAY_DNS_SERVERS"] = l.DNSAddr
	if p := environ["GATEWAY_ALLOW_PRIVATE_DESTINATIONS"]; p != "" {
		environ["GATEWAY_ALLOW_PRIVATE_DESTINATIONS"] = p + "," + *addr
	} else {
		environ["GATEWAY_ALLOW_PRIVATE_DESTINATIONS"] = *addr
	}
	if *geo != "" {
		environ["GATEWAY_GEOGRAPHIES"] = *geo
	}
	cfg, unknown, err := loadConfig(environ)
	if err != nil {
		fmt.Fprintf(stderr, "gateway lab: configuration: %v\n", err)
		return 2
	}
	logger := cfg.newLogger(os.Stderr)
	for _, k := range unknown {
		logger.Warn("unknown setting ignored (typo?)", "variable", k)
	}
	g, err := newGateway(cfg, logger, func(d proxy.Dialer) proxy.Dialer {
		return lab.PortMap{Dialer: d, Ports: l.Ports()}
	})
	if err != nil {
		fmt.Fprintf(stderr, "gateway lab: %v\n", err)
		return 2
	}
	gw := "http://" + g.ln.Addr().String()
	fmt.Fprintf(stdout, "lab gateway: %s\n", gw)
	fmt.Fprintf(stdout, "lab CA: %s\n", l.CAFile)
	fmt.Fprintf(stdout, "lab DNS: %s\n", l.DNSAddr)
	if g.adminLn != nil {
		fmt.Fprintf(stdout, "lab admin: http://%s\n", g.adminLn.Addr())
	}
	fmt.Fprintf(stdout, "try: gateway probe --via %s --ca %s\n", gw, l.CAFile)
	fmt.Fprintf(stdout, "try: curl -x %s --cacert %s https://winatp-gw-weu.microsoft.com/test\n", gw, filepath.Clean(l.CAFile))
	if f, ok := stdout.(interface{ Sync() error }); ok {
		f.Sync()
	}
	if err := g.run(context.Background()); err != nil {
		fmt.Fprintf(stderr, "gateway lab: %v\n", err)
		return 1
	}
	return 0
}
