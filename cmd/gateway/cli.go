package main

import (
	"encoding/csv"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"regexp"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/defendergw/gateway/internal/allowlist"
	"github.com/defendergw/gateway/internal/config"
)

// cliFlags are the flags explain and catalog share.
type cliFlags struct {
	geo, cloud, rules, format string
	all                       bool
}

// cmdHelp is what a subcommand's --help prints above its flags.
type cmdHelp struct {
	synopsis string // "gateway explain [flags] TARGET"
	about    string // what it does, and its exit status
}

// parseInterleaved parses flags that may appear before or after positional
// arguments ("explain host:443 --geo EU"). Everything after "--" is
// positional.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		// fs.Parse consumed a "--" right before rest: nothing after it is a flag.
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// parseArgs parses a subcommand's arguments. -h/--help prints its usage on
// stdout (exit 0); a flag error prints the error, naming the flag, and the
// usage on stderr (exit 2). ok is false when the command is to end with
// exit.
func parseArgs(fs *flag.FlagSet, args []string, h cmdHelp, stdout, stderr io.Writer) (pos []string, exit int, ok bool) {
	// The flag package's own messages say -geo where the user typed --geo,
	// and it would print its own usage: both are done here instead.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	pos, err := parseInterleaved(fs, args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		printUsage(stdout, fs, h)
		return nil, 0, false
	case err != nil:
		usageError(stderr, fs, h, flagErrorText(fs, err))
		return nil, 2, false
	}
	return pos, 0, true
}

// parseNoArgs is parseArgs for a subcommand that takes flags only: a
// positional argument is a usage error (exit 2).
func parseNoArgs(fs *flag.FlagSet, args []string, h cmdHelp, stdout, stderr io.Writer) (exit int, ok bool) {
	pos, exit, ok := parseArgs(fs, args, h, stdout, stderr)
	if ok && len(pos) > 0 {
		usageError(stderr, fs, h, fmt.Sprintf("unexpected argument %q", pos[0]))
		return 2, false
	}
	return exit, ok
}

// usageError prints "gateway CMD: msg" and the usage on stderr.
func usageError(stderr io.Writer, fs *flag.FlagSet, h cmdHelp, msg string) {
	fmt.Fprintf(stderr, "gateway %s: %s\n\n", fs.Name(), msg)
	printUsage(stderr, fs, h)
}

// printUsage prints the synopsis, the description and every flag in the
// double-dash form the documentation uses.
func printUsage(w io.Writer, fs *flag.FlagSet, h cmdHelp) {
	fmt.Fprintf(w, "usage: %s\n", h.synopsis)
	if h.about != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimRight(h.about, "\n"))
	}
	fmt.Fprintf(w, "\nflags:\n")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fs.VisitAll(func(f *flag.Flag) {
		name, text := flag.UnquoteUsage(f)
		if name != "" {
			name = " " + name
		}
		if d := f.DefValue; d != "" && d != "false" && d != "0" {
			text += " (default " + d + ")"
		}
		fmt.Fprintf(tw, "  --%s%s\t%s\n", f.Name, name, text)
	})
	fmt.Fprintf(tw, "  -h, --help\tprint this help\n")
	tw.Flush()
}

var (
	flagUndefined = regexp.MustCompile(`^flag provided but not defined: -+(.*)$`)
	flagBadValue  = regexp.MustCompile(`^invalid (?:boolean )?value (".*") for (?:flag )?-+([^:]+): (.*)$`)
	flagNoValue   = regexp.MustCompile(`^flag needs an argument: -+(.*)$`)
)

// flagErrorText rewords the flag package's errors with the flag named as
// the documentation writes it (--geo), and says what a value should be
// where the flag package only says "parse error".
func flagErrorText(fs *flag.FlagSet, err error) string {
	msg := err.Error()
	if m := flagUndefined.FindStringSubmatch(msg); m != nil {
		return "unknown flag --" + m[1]
	}
	if m := flagBadValue.FindStringSubmatch(msg); m != nil {
		why := m[3]
		if f := fs.Lookup(m[2]); f != nil {
			if g, ok := f.Value.(flag.Getter); ok {
				switch g.Get().(type) {
				case time.Duration:
					why = "want a duration such as 5s or 1m30s"
				case int:
					why = "want a whole number"
				case bool:
					why = "want true or false"
				}
			}
		}
		return "--" + m[2] + ": invalid value " + m[1] + ": " + why
	}
	if m := flagNoValue.FindStringSubmatch(msg); m != nil {
		return "--" + m[1] + ": needs a value"
	}
	return msg
}

// wantsHelp reports whether args ask for help (-h, -help or --help before
// any "--"), for the subcommands whose flags are parsed elsewhere.
func wantsHelp(args []string) bool {
	for _, a := range args {
		switch a {
		case "--":
			return false
		case "-h", "-help", "--help":
			return true
		}
	}
	return false
}

// cliPolicy builds the policy from the environment, with flag overrides.
func cliPolicy(f *cliFlags) (*allowlist.Policy, error) {
	_, p, err := cliConfigPolicy(f)
	return p, err
}

// cliConfigPolicy loads the configuration and policy, with flag overrides.
// Errors name the flag the user typed where a flag set the value.
func cliConfigPolicy(f *cliFlags) (*config.Config, *allowlist.Policy, error) {
	environ := config.EnvironMap()
	if err := applyFlags(environ, f); err != nil {
		return nil, nil, err
	}
	cfg, _, err := config.Load(environ)
	if err != nil {
		return nil, nil, flagNamed(err, f)
	}
	p, err := cfg.BuildPolicy()
	if err != nil {
		return nil, nil, flagNamed(err, f)
	}
	return cfg, p, nil
}

// applyFlags puts --cloud, --geo and --rules over the environment. The
// values are checked here, before they become GATEWAY_* variables, so that
// an error names the flag and not the variable it stands in for.
func applyFlags(environ map[string]string, f *cliFlags) error {
	cloud, cloudFrom := allowlist.Commercial, ""
	if f.cloud != "" {
		c, err := allowlist.ParseCloud(f.cloud)
		if err != nil {
			return fmt.Errorf("--cloud: %w", err)
		}
		cloud, cloudFrom = c, "--cloud "+c.String()
	} else if v := environ["GATEWAY_CLOUD"]; v != "" {
		// An invalid GATEWAY_CLOUD is config.Load's to report, by its name.
		if c, err := allowlist.ParseCloud(v); err == nil {
			cloud, cloudFrom = c, "GATEWAY_CLOUD="+v
		}
	}
	if f.geo != "" {
		n := 0
		for _, g := range strings.Split(f.geo, ",") {
			if g = strings.TrimSpace(g); g == "" {
				continue
			}
			if _, err := allowlist.ParseDataLocation(g); err != nil {
				return fmt.Errorf("--geo: %w", err)
			}
			n++
		}
		if n == 0 {
			return fmt.Errorf("--geo %q: no data location (e.g. --geo EU or --geo US,UK)", f.geo)
		}
		if cloud.Government() {
			// Microsoft's government lists have no data locations: the
			// cloud decides.
			return fmt.Errorf("--geo %s cannot be combined with %s: a US Government cloud has no commercial data locations; drop --geo",
				f.geo, cloudFrom)
		}
	}
	applyCloudGeo(environ, f.cloud, f.geo)
	if f.rules != "" {
		environ["GATEWAY_RULES_FILE"] = f.rules
	}
	return nil
}

// flagNamed rewords a configuration error that names a variable a flag
// set, so that it names the flag.
func flagNamed(err error, f *cliFlags) error {
	msg := err.Error()
	for _, r := range []struct{ flag, set, variable string }{
		{"--rules", f.rules, "GATEWAY_RULES_FILE"},
		{"--geo", f.geo, "GATEWAY_GEOGRAPHIES"},
		{"--cloud", f.cloud, "GATEWAY_CLOUD"},
	} {
		if r.set != "" {
			msg = strings.ReplaceAll(msg, r.variable, r.flag)
		}
	}
	if msg == err.Error() {
		return err
	}
	return &renamedError{msg: msg, err: err}
}

// renamedError is an error reworded by flagNamed; it still wraps the
// original.
type renamedError struct {
	msg string
	err error
}

func (e *renamedError) Error() string { return e.msg }
func (e *renamedError) Unwrap() error { return e.err }

// addScopeFlags registers --cloud and --geo.
func addScopeFlags(fs *flag.FlagSet, f *cliFlags) {
	fs.StringVar(&f.cloud, "cloud", "", "the Microsoft `CLOUD`: commercial, gcc, gcc-high or dod (default: GATEWAY_CLOUD, else commercial)")
	fs.StringVar(&f.geo, "geo", "", "`LIST` of data locations, e.g. EU or US,UK (default: GATEWAY_GEOGRAPHIES)")
}

// newPolicyFlagSet is a flag set with --cloud, --geo and --rules.
func newPolicyFlagSet(name string, f *cliFlags) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	addScopeFlags(fs, f)
	fs.StringVar(&f.rules, "rules", "", "rules `FILE` (default: GATEWAY_RULES_FILE)")
	return fs
}

// newFlagSet is newPolicyFlagSet with --format.
func newFlagSet(name string, f *cliFlags, defFormat, formats string) *flag.FlagSet {
	fs := newPolicyFlagSet(name, f)
	fs.StringVar(&f.format, "format", defFormat, "output `FORMAT`: "+formats)
	return fs
}

var explainHelp = cmdHelp{
	synopsis: "gateway explain [flags] TARGET",
	about: `Show the gateway's decision for TARGET (a URL, host or host:port) with the settings in force
(GATEWAY_* variables, overridden by the flags). Exit status: 0 allowed, 1 refused, 2 error.`,
}

func explain(args []string, stdout, stderr io.Writer) int {
	var f cliFlags
	fs := newFlagSet("explain", &f, "text", "text or json")
	pos, exit, ok := parseArgs(fs, args, explainHelp, stdout, stderr)
	if !ok {
		return exit
	}
	if len(pos) != 1 {
		usageError(stderr, fs, explainHelp, "want one TARGET")
		return 2
	}
	if f.format != "text" && f.format != "json" {
		fmt.Fprintf(stderr, "gateway explain: --format: want text or json, got %q\n", f.format)
		return 2
	}
	p, err := cliPolicy(&f)
	if err != nil {
		fmt.Fprintf(stderr, "gateway explain: %v\n", err)
		return 2
	}
	e := p.Explain(pos[0])
	if f.format == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(e)
	} else {
		printExplanation(stdout, e)
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

var catalogHelp = cmdHelp{
	synopsis: "gateway catalog [flags]\n       gateway catalog import FILE... [flags]   (see gateway catalog import --help)",
	about: `Print the effective catalog for the settings in force (GATEWAY_* variables, overridden by the
flags): the rules of the configured cloud and geographies, or with --all every row.`,
}

func catalog(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "import" {
		return catalogImport(args[1:], stdout, stderr)
	}
	var f cliFlags
	fs := newFlagSet("catalog", &f, "table", "table, json or csv")
	fs.BoolVar(&f.all, "all", false, "include rows of geographies that are not configured")
	if exit, ok := parseNoArgs(fs, args, catalogHelp, stdout, stderr); !ok {
		return exit
	}
	if f.format != "table" && f.format != "json" && f.format != "csv" {
		fmt.Fprintf(stderr, "gateway catalog: --format: want table, json or csv, got %q\n", f.format)
		return 2
	}
	p, err := cliPolicy(&f)
	if err != nil {
		fmt.Fprintf(stderr, "gateway catalog: %v\n", err)
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
	}
	return 0
}

// printVersion prints the gateway's version and the catalog in force for
// the environment's settings (GATEWAY_CATALOG_FILE, GATEWAY_CLOUD).
func printVersion(w, stderr io.Writer) int {
	cfg, _, err := config.Load(config.EnvironMap())
	if err != nil {
		fmt.Fprintf(w, "gateway %s\n", buildVersion())
		fmt.Fprintf(stderr, "gateway version: %v\n", err)
		return 2
	}
	cat, origin, err := cfg.LoadCatalog()
	if err != nil {
		fmt.Fprintf(w, "gateway %s\n", buildVersion())
		fmt.Fprintf(stderr, "gateway version: %v\n", err)
		return 2
	}
	fmt.Fprintf(w, "gateway %s, catalog %s (%s, published %s), cloud %s\n", buildVersion(), cat.Version, origin,
		cat.Published.Format(time.DateOnly), cfg.Cloud)
	return 0
}

// applyCloudGeo applies --cloud and --geo over the environment. --cloud
// naming a government cloud sets aside GATEWAY_GEOGRAPHIES (a government
// cloud has no data locations), unless --geo is given too, which is an
// error applyFlags reports first.
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
