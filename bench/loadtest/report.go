package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

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
		{"Bulk CONNECT throughput", "GB/s, upstream → client, higher is better. Plain TCP tunnels use the `verify_sni: false` rule; TLS tunnels carry a TLS 1.3 session whose SNI the gateway verifies. Open files and RSS are the proxy's at the end of the measurement, while the streams flow.", "bulk", h.bulkRows()},
		{"New tunnels", fmt.Sprintf("tunnels/s, %d concurrent clients, higher is better: CONNECT, a 64-byte request and response through the tunnel, close.", h.o.clients), "rate", []row{
			{key: "rate-tcp", label: "plain TCP (tunnels/s)", format: "%.0f"},
			{key: "rate-tls", label: "TLS handshake inside the tunnel (tunnels/s)", format: "%.0f"},
			{key: "cpu-rate-tcp", label: "proxy CPU per plain TCP tunnel (CPU-µs)", format: "%.0f", directNA: true},
			{key: "cpu-rate-tls", label: "proxy CPU per TLS tunnel (CPU-µs)", format: "%.0f", directNA: true},
		}},
		{"Plain HTTP", fmt.Sprintf("requests/s, absolute-form GET of a 1 KiB object, keep-alive, %d concurrent clients, higher is better.", h.o.clients), "get", []row{
			{key: "get", label: "GET 1 KiB (req/s)", format: "%.0f"},
			{key: "cpu-get", label: "proxy CPU per GET (CPU-µs)", format: "%.0f", directNA: true},
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
			{key: "idle-stack", label: "of which Go stacks per tunnel (KiB)", format: "%.1f", directNA: true, gatewayOK: true},
			{key: "idle-heap", label: "of which Go heap per tunnel (KiB)", format: "%.1f", directNA: true, gatewayOK: true},
			{key: "idle-rss-total", label: fmt.Sprintf("RSS with %d idle tunnels (MiB)", h.o.idle), format: "%.1f", directNA: true},
			{key: "idle-gor-total", label: fmt.Sprintf("goroutines with %d idle tunnels", h.o.idle), format: "%.0f", directNA: true, gatewayOK: true},
			{key: "idle-newtls", label: fmt.Sprintf("proxy CPU per new TLS tunnel with %d idle tunnels held (CPU-µs; --idle-rate)", h.o.idle), format: "%.0f", directNA: true},
		}},
	}
}

// bulkRows lists throughput, then CPU per GB, then open files and RSS while
// streaming, for every bulk case.
func (h *harness) bulkRows() []row {
	var rows []row
	cs := h.bulkCases()
	for _, c := range cs {
		rows = append(rows, row{key: "bulk-" + c.key, label: c.label + " (GB/s)", format: "%.2f"})
	}
	for _, c := range cs {
		rows = append(rows, row{key: "cpu-" + c.key, label: "proxy CPU, " + c.label + " (CPU-s/GB)", format: "%.2f", directNA: true})
	}
	for _, c := range cs {
		rows = append(rows, row{key: "bulkfd-" + c.key, label: "proxy open files, " + c.label, format: "%.0f", directNA: true})
	}
	for _, c := range cs {
		rows = append(rows, row{key: "bulkrss-" + c.key, label: "proxy RSS, " + c.label + " (MiB)", format: "%.1f", directNA: true})
	}
	for _, c := range cs {
		rows = append(rows, row{key: "gencpu-" + c.key, label: "load generator CPU, " + c.label + " (CPU-s/GB)", format: "%.2f"},
			row{key: "genrd-" + c.key, label: "load generator read(2) per MB, " + c.label, format: "%.1f"},
			row{key: "genwr-" + c.key, label: "load generator write(2) per MB, " + c.label, format: "%.1f"},
			row{key: "pxrd-" + c.key, label: "proxy read(2) per MB, " + c.label + " (splice not counted)", format: "%.1f", directNA: true},
			row{key: "pxwr-" + c.key, label: "proxy write(2) per MB, " + c.label, format: "%.1f", directNA: true})
	}
	return rows
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
	w("relay is a minimal Go CONNECT relay (bench/loadtest/relay.go: no policy, no logs, io.Copy), the least any Go proxy's tunnel costs; it forwards no plain HTTP. ")
	w("Ratio columns divide the gateway's median by Squid's, the relay's and direct's: above 1 means a larger number for the gateway (better for rates, worse for CPU, latency and memory).\n\n")
	cols := []string{"gateway", "squid", "tinyproxy", "relay", "direct"}
	for _, g := range h.groups() {
		if !h.o.only[g.scenario] {
			continue
		}
		w("## %s\n\n%s\n\n", g.title, g.note)
		w("| scenario | gateway | squid | tinyproxy | relay | direct | gateway/squid | gateway/relay | gateway/direct |\n")
		w("|---|--:|--:|--:|--:|--:|--:|--:|--:|\n")
		for _, r := range g.rows {
			w("| %s |", r.label)
			for _, c := range cols {
				w(" %s |", h.cell(r, c))
			}
			w(" %s | %s | %s |\n", h.ratio(r, "squid"), h.ratio(r, "relay"), h.ratio(r, "direct"))
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
