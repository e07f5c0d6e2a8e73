// Command gateway is an egress allowlist gateway for Microsoft Defender: a
// forward proxy that lets endpoints reach exactly the Defender services of
// their data location.
//
//	gateway [serve]                 run the proxy (configured from GATEWAY_* variables)
//	gateway explain [flags] TARGET  show the decision for a URL or host:port
//	gateway catalog [flags]         print the effective catalog
//	gateway catalog import FILE...  turn Microsoft's published lists into a catalog file
//	gateway pac, client-config      what endpoints need to use the gateway
//	gateway probe, lab              check connectivity; a loopback replica to try it on
//	gateway healthcheck, version
//
// Every subcommand takes -h/--help.
package main

import (
	"fmt"
	"io"
	"os"
	"runtime/debug"
)

const usage = `Microsoft Defender egress allowlist gateway.

Usage:
  gateway [serve]                    run the forward proxy; no flags: it is configured from GATEWAY_* variables
  gateway explain [flags] TARGET     show the decision for TARGET (URL, host or host:port);
                                     exits 0 if allowed, 1 if refused, 2 on error
      --cloud C       commercial, gcc, gcc-high or dod instead of GATEWAY_CLOUD
      --geo LIST      data locations to use instead of GATEWAY_GEOGRAPHIES (e.g. EU or US,UK)
      --rules FILE    rules file to use instead of GATEWAY_RULES_FILE
      --format F      text (default) or json
  gateway catalog [flags]            print the effective catalog for the current settings
      --format F      table (default), json or csv
      --all           include rows of geographies that are not configured
      --cloud C, --geo LIST, --rules FILE as for explain
  gateway catalog import FILE... [flags]
                                     read Microsoft's lists (mde-urls-commercial.xlsx, mde-urls-gov.xlsx, the articles'
                                     markdown) and write a catalog for GATEWAY_CATALOG_FILE; exit 1 with --check when
                                     something would change
      --out FILE      write the catalog there (atomically) instead of standard output
      --diff          print what would change against the catalog in force, by service
      --check         as --diff, and exit 1 when anything would change
      --base FILE     the catalog to update and compare with ("embedded", or a file; default: the catalog in force)
      --version V, --published YYYY-MM-DD   name the new catalog (default: today)
  gateway pac [flags]                print the PAC file the gateway serves at /proxy.pac and /wpad.dat
      --proxy HOST:PORT  advertised gateway address (default GATEWAY_PUBLIC_ADDR, else GATEWAY_LISTEN)
      --default D        DIRECT or PROXY for hosts not on the allowlist (default GATEWAY_PAC_DEFAULT)
      --cloud C, --geo LIST, --rules FILE as for explain
  gateway client-config --proxy HOST:PORT [flags]
                                     print what points all three Defender components at the gateway
      --format F      cmd (default), ps1 or reg
      --pac-url URL   Defender Antivirus ProxyPacUrl
      --bypass LIST   ProxyBypass and WinHTTP bypass-list, as WinHTTP takes it: entries separated by ';' or ',',
                      e.g. '<local>;*.contoso.local;10.*' (the WinHTTP proxy is machine-wide: see README.md)
      --offline       also set PreferStaticProxyForHttpRequest (fully offline devices)
      --undo          print the script that removes the settings
  gateway probe [flags]              check every catalog endpoint like the MDE client analyzer; exits 1 when a
                                     required endpoint fails
      --via URL       through this gateway (http://host:port); default direct
      --cloud C, --geo LIST  cloud and data locations to probe;  --format text|json;  --ca FILE  extra roots (the lab CA)
      --proxy-user USER:PASSWORD  credentials for the gateway;  --timeout D;  --concurrency N
  gateway lab [flags]                a loopback replica: DNS answering the catalog's names, simulated Defender
                                     endpoints (lab CA written to disk) and the gateway using them; prints a probe
                                     and a curl command that work as printed
      --listen ADDR   gateway listener (default 127.0.0.1:3128)
      --addr IP       address of the simulated endpoints and DNS (default 127.0.0.1)
      --dir DIR       where to write the lab CA, kept (default: a temporary directory, removed when the lab stops)
      --cloud C, --geo LIST  cloud and data locations
  gateway healthcheck [flags]        exit 0 if the local gateway answers /healthz (the container HEALTHCHECK)
      --ready         check /readyz instead
      --url URL       check this URL instead of GATEWAY_ADMIN_LISTEN
      --timeout D     give up after D (default 2s)
  gateway version                    print the gateway version, the catalog in force and the cloud
  gateway help [COMMAND]             this text, or COMMAND's (as gateway COMMAND --help)

Configuration comes from GATEWAY_* environment variables; see README.md.
`

// serveHelp is "gateway serve --help": serve has no flags, so none are
// parsed; any argument is an error rather than a proxy started anyway.
const serveHelp = `usage: gateway [serve]

Run the forward proxy until SIGINT or SIGTERM (SIGHUP reloads the catalog and rules file). It takes
no flags or arguments: it is configured from GATEWAY_* environment variables (GATEWAY_LISTEN,
GATEWAY_CLOUD, GATEWAY_GEOGRAPHIES, GATEWAY_ADMIN_LISTEN, ...; see README.md).
`

const versionHelp = `usage: gateway version

Print the gateway's version, the catalog in force (GATEWAY_CATALOG_FILE, else the embedded one) and
the cloud (GATEWAY_CLOUD).
`

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	cmd := "serve"
	if len(args) > 0 {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "serve":
		return serveCmd(args, stdout, stderr)
	case "explain":
		return explain(args, stdout, stderr)
	case "catalog":
		return catalog(args, stdout, stderr)
	case "lab":
		return labCmd(args, stdout, stderr)
	case "healthcheck":
		return healthcheck(args, stdout, stderr)
	case "pac":
		return pacCmd(args, stdout, stderr)
	case "client-config":
		return clientConfigCmd(args, stdout, stderr)
	case "probe":
		return probeCmd(args, stdout, stderr)
	case "version", "--version":
		switch {
		case wantsHelp(args):
			fmt.Fprint(stdout, versionHelp)
			return 0
		case len(args) > 0:
			fmt.Fprintf(stderr, "gateway version: unexpected argument %q\n\n%s", args[0], versionHelp)
			return 2
		}
		return printVersion(stdout, stderr)
	case "help", "-h", "-help", "--help":
		// "gateway help explain" is "gateway explain --help".
		if len(args) == 1 && !isHelpWord(args[0]) {
			return run([]string{args[0], "--help"}, stdout, stderr)
		}
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "gateway: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
}

func isHelpWord(s string) bool {
	switch s {
	case "help", "-h", "-help", "--help":
		return true
	}
	return false
}

// serveCmd runs the proxy. It parses no flags, so that "serve --help" (or
// a mistyped flag) can never start a proxy that ignores it.
func serveCmd(args []string, stdout, stderr io.Writer) int {
	switch {
	case wantsHelp(args):
		fmt.Fprint(stdout, serveHelp)
		return 0
	case len(args) > 0:
		fmt.Fprintf(stderr, "gateway serve: unexpected argument %q: serve takes no flags or arguments\n\n%s", args[0], serveHelp)
		return 2
	}
	return serve(stderr)
}
