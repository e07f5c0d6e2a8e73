package main

import (
	"encoding/csv"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/defendergw/gateway/internal/allowlist"
)

// cliFlags are the flags explain and catalog share.
type cliFlags struct {
	geo, cloud, rules, format string
	all                       bool
}

// parseInterleaved parses flags that may appear before or after positional
// arguments ("explain host:443 --geo EU").
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// cliPolicy builds the policy from the environment, with flag overrides.
func cliPolicy(f *cliFlags) (*allowlist.Policy, error) {
	_, p, err := cliConfigPolicy(f)
	return p, err
}

// cliConfigPolicy loads the configuration and policy, with flag overrides.
func cliConfigPolicy(f *cliFlags) (*Config, *allowlist.Policy, error) {
	environ := environMap()
	applyCloudGeo(environ, f.cloud, f.geo)
	if f.rules != "" {
		environ["GATEWAY_RULES_FILE"] = f.rules
	}
	cfg, _, err := loadConfig(environ)
	if err != nil {
		return nil, nil, err
	}
	p, err := cfg.buildPolicy()
	return cfg, p, err
}

func newFlagSet(name string, stderr io.Writer, f *cliFlags, defFormat string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&f.geo, "geo", "", "geographies (overrides GATEWAY_GEOGRAPHIES)")
	fs.StringVar(&f.cloud, "cloud", "", "commercial, gcc, gcc-high or dod (overrides GATEWAY_CLOUD)")
	fs.StringVar(&f.rules, "rules", "", "rules file (overrides GATEWAY_RULES_FILE)")
	fs.StringVar(&f.format, "format", defFormat, "output format")
	return fs
}

func explain(args []string, stdout, stderr io.Writer) int {
	var f cliFlags
	fs := newFlagSet("explain", stderr, &f, "text")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return 2
	}
	if len(pos) != 1 {
		fmt.Fprintln(stderr, "usage: gateway explain [--cloud C] [--geo LIST] [--rules FILE] [--format text|json] URL-or-host:port")
		return 2
	}
	p, err := cliPolicy(&f)
	if err != nil {
		fmt.Fprintf(stderr, "gateway: configuration: %v\n", err)
		return 2
	}
	e := p.Explain(pos[0])
	switch f.format {
	case "json":
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(e)
	case "text":
		printExplanation(stdout, e)
	default:
		fmt.Fprintf(stderr, "gateway explain: --format: want text or json, got %q\n", f.format)
		return 2
	}
	if !e.Allowed {
		return 1
	}
	return 0
}

func printExplanation(w io.Writer, e allowlist.Explanation) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	decision := "refused"
	if e.Allowed {
		decision = "allowed"
	}
	fmt.Fprintf(tw, "target:\t%s\n", or(e.Target, e.Input))
	fmt.Fprintf(tw, "decision:\t%s\n", decision)
	fmt.Fprintf(tw, "reason:\t%s\n", e.Reason)
	if e.Error != "" {
		fmt.Fprintf(tw, "detail:\t%s\n", e.Error)
	}
	if r := e.Rule; r != nil {
		fmt.Fprintf(tw, "rule:\t%s (%s %s, ports %s%s)\n", r.ID, r.Action, r.Host, r.PortsString(), pathsText(r.Paths))
		fmt.Fprintf(tw, "service:\t%s (%s)\n", r.ServiceID, r.ServiceName)
		fmt.Fprintf(tw, "geography:\t%s\n", r.Geography)
		if r.Source != "" {
			fmt.Fprintf(tw, "source:\t%s\n", r.Source)
		}
	} else {
		fmt.Fprintf(tw, "rule:\t(none)\n")
	}
	if e.Allowed {
		fmt.Fprintf(tw, "tls-exempt:\t%s\n", yesno(e.TLSExempt))
		fmt.Fprintf(tw, "anonymous:\t%s\n", yesno(e.Anonymous))
		if e.PathUnchecked {
			fmt.Fprintf(tw, "note:\tthe rule is limited to paths, which a CONNECT tunnel does not show\n")
		}
	}
	fmt.Fprintf(tw, "catalog:\t%s (cloud %s, geographies %s)\n", e.CatalogVersion, e.Cloud, strings.Join(e.Geographies, ","))
	tw.Flush()
}

func catalog(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "import" {
		return catalogImport(args[1:], stdout, stderr)
	}
	var f cliFlags
	fs := newFlagSet("catalog", stderr, &f, "table")
	fs.BoolVar(&f.all, "all", false, "include rows of geographies that are not configured")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return 2
	}
	if len(pos) != 0 {
		fmt.Fprintln(stderr, "usage: gateway catalog [--format table|json|csv] [--all] [--cloud C] [--geo LIST] [--rules FILE]\n       gateway catalog import FILE... [--out FILE] [--diff] [--check]")
		return 2
	}
	p, err := cliPolicy(&f)
	if err != nil {
		fmt.Fprintf(stderr, "gateway: configuration: %v\n", err)
		return 2
	}
	var rules []allowlist.Rule
	for _, r := range p.Rules() {
		if f.all || p.InGeography(r.Geography) {
			rules = append(rules, r)
		}
	}
	var geos []string
	for _, g := range p.Geographies() {
		geos = append(geos, g.String())
	}
	switch f.format {
	case "json":
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(p.List(f.all))
	case "csv":
		w := csv.NewWriter(stdout)
		w.Write([]string{"id", "action", "service_id", "service_name", "geography", "host", "paths", "ports",
			"required", "tls_exempt", "anonymous", "source", "comment"})
		for _, r := range rules {
			w.Write([]string{r.ID, r.Action.String(), r.ServiceID, r.ServiceName, r.Geography.String(), r.Host,
				strings.Join(r.Paths, "|"), r.PortsString(), yesno(r.Required), yesno(r.TLSExempt), yesno(r.Anonymous),
				r.Source, r.Comment})
		}
		w.Flush()
	case "table":
		fmt.Fprintf(stdout, "# Defender catalog %s (published %s), cloud %s, geographies %s, %d rules\n", p.Version(),
			p.Published().Format(time.DateOnly), p.Cloud(), strings.Join(geos, ","), len(rules))
		tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "SERVICE\tGEO\tACTION\tHOST\tPORTS\tPATHS\tREQUIRED\tTLS-EXEMPT\tANONYMOUS")
		for _, r := range rules {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.ServiceID, r.Geography, r.Action, r.Host,
				r.PortsString(), or(strings.Join(r.Paths, "|"), "*"), yesno(r.Required), yesno(r.TLSExempt), yesno(r.Anonymous))
		}
		tw.Flush()
	default:
		fmt.Fprintf(stderr, "gateway catalog: --format: want table, json or csv, got %q\n", f.format)
		return 2
	}
	return 0
}

// printVersion prints the gateway's version and the catalog in force for
// the environment's settings (GATEWAY_CATALOG_FILE, GATEWAY_CLOUD).
func printVersion(w, stderr io.Writer) int {
	cfg, _, err := loadConfig(environMap())
	if err != nil {
		fmt.Fprintf(w, "gateway %s\n", buildVersion())
		fmt.Fprintf(stderr, "gateway: configuration: %v\n", err)
		return 2
	}
	cat, origin, err := cfg.loadCatalog()
	if err != nil {
		fmt.Fprintf(w, "gateway %s\n", buildVersion())
		fmt.Fprintf(stderr, "gateway: %v\n", err)
		return 2
	}
	fmt.Fprintf(w, "gateway %s, catalog %s (%s, published %s), cloud %s\n", buildVersion(), cat.Version, origin,
		cat.Published.Format(time.DateOnly), cfg.Cloud)
	return 0
}

// applyCloudGeo applies --cloud and --geo over the environment. --cloud
// naming a government cloud sets aside GATEWAY_GEOGRAPHIES (a government
// cloud has no data locations), unless --geo is given too, which is an
// error loadConfig reports.
func applyCloudGeo(environ map[string]string, cloud, geo string) {
	if cloud != "" {
		environ["GATEWAY_CLOUD"] = cloud
		if c, err := allowlist.ParseCloud(cloud); err == nil && c.Government() && geo == "" {
			delete(environ, "GATEWAY_GEOGRAPHIES")
		}
	}
	if geo != "" {
		environ["GATEWAY_GEOGRAPHIES"] = geo
	}
}

func pathsText(p []string) string {
	if len(p) == 0 {
		return ""
	}
	return ", paths " + strings.Join(p, "|")
}

func yesno(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
