package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/defendergw/gateway/internal/allowlist"
	"github.com/defendergw/gateway/internal/endpoint"
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
	cloud := fs.String("cloud", "", "commercial, gcc, gcc-high or dod (overrides GATEWAY_CLOUD)")
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
	environ := environMap()
	environ["GATEWAY_LISTEN"] = *listen
	if p := environ["GATEWAY_ALLOW_PRIVATE_DESTINATIONS"]; p != "" {
		environ["GATEWAY_ALLOW_PRIVATE_DESTINATIONS"] = p + "," + *addr
	} else {
		environ["GATEWAY_ALLOW_PRIVATE_DESTINATIONS"] = *addr
	}
	applyCloudGeo(environ, *cloud, *geo)
	// The lab serves the names of the catalog in force (GATEWAY_CATALOG_FILE
	// included), so that an imported catalog can be tried before it is
	// deployed.
	environ["GATEWAY_DNS_SERVERS"] = "127.0.0.1" // replaced by the lab's own below
	cfg, unknown, err := loadConfig(environ)
	if err != nil {
		fmt.Fprintf(stderr, "gateway lab: configuration: %v\n", err)
		return 2
	}
	cat, _, err := cfg.loadCatalog()
	if err != nil {
		fmt.Fprintf(stderr, "gateway lab: %v\n", err)
		return 2
	}
	l, err := lab.Start(lab.Options{Addr: *addr, Dir: *dir, Catalog: cat})
	if err != nil {
		fmt.Fprintf(stderr, "gateway lab: %v\n", err)
		return 1
	}
	defer l.Close()
	cfg.DNSServers = []string{l.DNSAddr}
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
	var scope string
	if c := cfg.Cloud; c.Government() {
		scope += " --cloud " + c.String()
	}
	if len(cfg.geos) > 0 {
		var gs []string
		for _, g := range cfg.geos {
			gs = append(gs, g.String())
		}
		scope += " --geo " + strings.Join(gs, ",")
	}
	fmt.Fprintf(stdout, "try: gateway probe --via %s --ca %s%s\n", gw, l.CAFile, scope)
	if u := labExample(g.policy.Load()); u != "" {
		fmt.Fprintf(stdout, "try: curl -x %s --cacert %s %s\n", gw, filepath.Clean(l.CAFile), u)
	}
	if f, ok := stdout.(interface{ Sync() error }); ok {
		f.Sync()
	}
	if err := g.run(context.Background()); err != nil {
		fmt.Fprintf(stderr, "gateway lab: %v\n", err)
		return 1
	}
	return 0
}

// labExample is a command-and-control test URL the lab's gateway allows (an
// EDR gateway of the configured cloud and geography), for the printed curl
// example.
func labExample(p *allowlist.Policy) string {
	for _, t := range endpoint.ProbeTargets(p) {
		if strings.HasSuffix(t.URL, "/commands/test") {
			return t.URL
		}
	}
	return ""
}
