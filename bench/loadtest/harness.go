package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

type harness struct {
	o       options
	dir     string
	up      *upstreams
	isoErr  error
	mu      sync.Mutex
	started []*target
	targets map[string]*target // long-lived targets of the throughput/rate/latency phase
	na      map[string]string  // target -> why n/a
	res     map[string]map[string][]float64
	errs    map[string]map[string]string
	notes   []string
	skipped int
	start   time.Time
	// loadStart is /proc/loadavg when the run began.
	loadStart string
	revision  string // git revision of the working tree the gateway was built from
	deadline  time.Time

	// Results of the measurement in progress, committed once it is kept.
	pend      []pendingValue
	pendNotes []string
	// Other processes' CPU (cores) during kept measurements, and retries.
	foreign []float64
	retried int
}

type pendingValue struct {
	key, target string
	v           float64
}

func newHarness(o options) (*harness, error) {
	dir, err := os.MkdirTemp("", "gateway-bench-")
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	h := &harness{o: o, dir: dir, targets: map[string]*target{}, na: map[string]string{},
		res: map[string]map[string][]float64{}, errs: map[string]map[string]string{}, start: time.Now(), loadStart: loadAvg(), deadline: time.Now().Add(o.timeout),
		revision: gitRevision()}
	if h.up, err = startUpstreams(); err != nil {
		return nil, fmt.Errorf("upstreams: %w", err)
	}
	if contains(o.targets, "squid") || contains(o.targets, "tinyproxy") {
		h.isoErr = probeIsolation()
	}
	return h, nil
}

func (h *harness) cleanup() {
	h.mu.Lock()
	started := h.started
	h.started = nil
	h.mu.Unlock()
	for _, t := range started {
		t.stop()
	}
	for _, c := range h.up.closers {
		_ = c.Close()
	}
	if !h.o.keepDir {
		_ = os.RemoveAll(h.dir)
	}
}

// record holds a value of the measurement in progress until commit.
func (h *harness) record(key, target string, v float64) {
	h.pend = append(h.pend, pendingValue{key, target, v})
}

// commit keeps the pending values and notes; discard drops them.
func (h *harness) commit() {
	for _, p := range h.pend {
		if h.res[p.key] == nil {
			h.res[p.key] = map[string][]float64{}
		}
		h.res[p.key][p.target] = append(h.res[p.key][p.target], p.v)
	}
	h.notes = append(h.notes, h.pendNotes...)
	h.discard()
}

func (h *harness) discard() { h.pend, h.pendNotes = nil, nil }

func (h *harness) fail(key, target string, err error) {
	if h.errs[key] == nil {
		h.errs[key] = map[string]string{}
	}
	if _, ok := h.errs[key][target]; !ok {
		h.errs[key][target] = err.Error()
	}
	logf("  %s %s: %v", key, target, err)
}

func (h *harness) note(format string, a ...any) {
	s := fmt.Sprintf(format, a...)
	h.pendNotes = append(h.pendNotes, s)
	logf("  note: %s", s)
}

// cpuSnap is the machine's busy CPU time next to ours (this process and the
// proxy under test), to tell how much other work ran during a measurement.
type cpuSnap struct {
	busy, ours int64
	at         time.Time
}

func (h *harness) snap(t *target) cpuSnap {
	s := cpuSnap{at: time.Now()}
	if b, err := os.ReadFile("/proc/stat"); err == nil {
		line, _, _ := strings.Cut(string(b), "\n")
		// cpu user nice system idle iowait irq softirq steal ...: with tick-based
		// accounting, irq and softirq ticks are also charged to the interrupted
		// task (mostly ours: loopback packets are processed in the sender's
		// context), so they count as busy here.
		f := strings.Fields(line)
		for _, i := range []int{1, 2, 3, 6, 7} {
			if i >= len(f) {
				break
			}
			v, _ := strconv.ParseInt(f[i], 10, 64)
			s.busy += v
		}
	}
	s.ours, _ = cpuTicks(os.Getpid())
	if t != nil && !t.direct() && t.pid > 0 {
		p, _ := cpuTicks(t.pid)
		s.ours += p
	}
	return s
}

// foreignCores is the CPU (in cores) that other processes used between a and b.
func foreignCores(a, b cpuSnap) float64 {
	el := b.at.Sub(a.at).Seconds()
	if el <= 0 {
		return 0
	}
	return max(0, float64((b.busy-a.busy)-(b.ours-a.ours))/clkTck/el)
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}

// Running: every measurement against every target, alternating, for several rounds.

type measurement struct {
	scenario string // --only group
	name     string
	run      func(ctx context.Context, t *target) error
}

func (h *harness) measurements() []measurement {
	var ms []measurement
	for _, b := range h.bulkCases() {
		ms = append(ms, measurement{"bulk", "bulk " + b.key, func(ctx context.Context, t *target) error {
			r, err := h.bulk(ctx, t, b.useTLS, b.n)
			if err != nil {
				return err
			}
			h.record("bulk-"+b.key, t.name, r.gbps)
			h.record("gencpu-"+b.key, t.name, r.genCPUPerGB)
			h.record("genrd-"+b.key, t.name, r.genReadsPerMB)
			h.record("genwr-"+b.key, t.name, r.genWritesPerMB)
			if !t.direct() {
				h.record("pxrd-"+b.key, t.name, r.proxyReadsPerMB)
				h.record("pxwr-"+b.key, t.name, r.proxyWritesMB)
				h.record("cpu-"+b.key, t.name, r.cpuPerGB)
				h.record("bulkfd-"+b.key, t.name, float64(r.fds))
				h.record("bulkrss-"+b.key, t.name, float64(r.rssKiB)/1024)
			}
			return nil
		}})
	}
	for _, r := range []struct {
		key    string
		useTLS bool
	}{{"tcp", false}, {"tls", true}} {
		ms = append(ms, measurement{"rate", "rate " + r.key, func(ctx context.Context, t *target) error {
			v, cpu, bad, err := h.tunnelRate(ctx, t, r.useTLS)
			if v == 0 {
				return err
			}
			if bad > 0 {
				h.note("new tunnels (%s) %s: %d failed (last: %v)", r.key, t.name, bad, err)
			}
			h.record("rate-"+r.key, t.name, v)
			if !t.direct() {
				h.record("cpu-rate-"+r.key, t.name, cpu)
			}
			return nil
		}})
	}
	ms = append(ms, measurement{"get", "get", func(ctx context.Context, t *target) error {
		if !t.forwards() {
			return nil
		}
		v, cpu, bad, err := h.getRate(ctx, t)
		if v == 0 {
			return err
		}
		if bad > 0 {
			h.note("GET rate %s: %d failed (last: %v)", t.name, bad, err)
		}
		h.record("get", t.name, v)
		if !t.direct() {
			h.record("cpu-get", t.name, cpu)
		}
		return nil
	}})
	ms = append(ms, measurement{"latency", "latency get", func(ctx context.Context, t *target) error {
		if !t.forwards() {
			return nil
		}
		p50, p99, err := h.getLatency(ctx, t)
		if err != nil {
			return err
		}
		h.record("lat-get-p50", t.name, p50)
		h.record("lat-get-p99", t.name, p99)
		return nil
	}})
	ms = append(ms, measurement{"latency", "latency tunnel", func(ctx context.Context, t *target) error {
		p50, p99, err := h.tunnelLatency(ctx, t)
		if err != nil {
			return err
		}
		h.record("lat-tun-p50", t.name, p50)
		h.record("lat-tun-p99", t.name, p99)
		return nil
	}})
	return ms
}

type bulkCase struct {
	key    string // "tcp-16"
	label  string // "plain TCP, 16 streams"
	useTLS bool
	n      int
}

// bulkCases are the bulk measurements: plain TCP, then TLS, at each
// --bulk-streams count.
func (h *harness) bulkCases() []bulkCase {
	var cs []bulkCase
	for _, useTLS := range []bool{false, true} {
		for _, n := range h.o.streams {
			key, label := fmt.Sprintf("tcp-%d", n), "plain TCP"
			if useTLS {
				key, label = fmt.Sprintf("tls-%d", n), "TLS"
			}
			unit := "streams"
			if n == 1 {
				unit = "stream"
			}
			cs = append(cs, bulkCase{key, fmt.Sprintf("%s, %d %s", label, n, unit), useTLS, n})
		}
	}
	return cs
}

// keysOf returns the result rows a measurement fills (for error reporting).
func (h *harness) keysOf(name string) []string {
	if k, ok := strings.CutPrefix(name, "bulk "); ok {
		return []string{"bulk-" + k, "cpu-" + k, "bulkfd-" + k, "bulkrss-" + k, "gencpu-" + k, "genrd-" + k, "genwr-" + k, "pxrd-" + k, "pxwr-" + k}
	}
	return keysOf[name]
}

var keysOf = map[string][]string{
	"rate tcp": {"rate-tcp"}, "rate tls": {"rate-tls"}, "get": {"get"},
	"latency get":    {"lat-get-p50", "lat-get-p99"},
	"latency tunnel": {"lat-tun-p50", "lat-tun-p99"},
	"idle":           {"idle-rss", "idle-fd", "idle-gor", "idle-stack", "idle-heap", "idle-rss-total", "idle-gor-total", "idle-newtls"},
}

func rotate(list []*target, k int) []*target {
	if len(list) == 0 {
		return list
	}
	k %= len(list)
	return append(append([]*target{}, list[k:]...), list[:k]...)
}

func (h *harness) run(ctx context.Context) {
	var ms []measurement
	for _, m := range h.measurements() {
		if h.o.only[m.scenario] {
			ms = append(ms, m)
		}
	}
	if len(ms) > 0 {
		var live []*target
		for _, name := range h.o.targets {
			logf("starting %s", name)
			t := h.startTarget(ctx, name)
			h.targets[name] = t
			if t.naReason != "" {
				h.na[name] = t.naReason
				continue
			}
			live = append(live, t)
		}
		for round := 0; round < h.o.rounds; round++ {
			for mi, m := range ms {
				for _, t := range rotate(live, round+mi) {
					if ctx.Err() != nil {
						h.skipped++
						continue
					}
					if err := t.alive(); err != nil {
						h.failAll(m.name, t.name, err)
						continue
					}
					// Other work on the machine (its load comes and goes) distorts a
					// measurement: repeat one during which other processes used more
					// than --max-foreign cores, at most twice and only while the time
					// budget still covers the rest of the run.
					for attempt := 0; ; attempt++ {
						logf("round %d/%d %-15s %s", round+1, h.o.rounds, m.name, t.name)
						a := h.snap(t)
						err := m.run(ctx, t)
						fc := foreignCores(a, h.snap(t))
						logf("  other processes: %.2f cores", fc)
						sleepCtx(ctx, 200*time.Millisecond) // let sockets settle between measurements
						if err != nil {
							h.discard()
							h.failAll(m.name, t.name, err)
							break
						}
						left := (h.o.rounds-round-1)*len(ms)*len(live) + (len(ms)-mi)*len(live)
						if fc > h.o.maxForeign && attempt < 2 && h.affordable(left) {
							logf("  other processes used %.2f cores: repeating", fc)
							h.retried++
							h.discard()
							continue
						}
						h.foreign = append(h.foreign, fc)
						h.commit()
						break
					}
				}
			}
		}
		for _, t := range live {
			t.stop()
		}
	}
	if h.o.only["idle"] && h.o.idle > 0 {
		for round := 0; round < h.o.rounds; round++ {
			for _, name := range rotateNames(h.o.targets, round) {
				if name == "direct" {
					continue
				}
				if _, bad := h.na[name]; bad || ctx.Err() != nil {
					if ctx.Err() != nil {
						h.skipped++
					}
					continue
				}
				logf("round %d/%d idle %d       %s (fresh process)", round+1, h.o.rounds, h.o.idle, name)
				t := h.startTarget(ctx, name)
				if t.naReason != "" {
					h.na[name] = t.naReason
					continue
				}
				r, err := h.idleCost(ctx, t, h.o.idle)
				t.stop()
				if err != nil {
					h.failAll("idle", name, err)
					continue
				}
				h.record("idle-rss", name, r.rssPer)
				h.record("idle-fd", name, r.fdPer)
				h.record("idle-rss-total", name, r.rssAfterMiB)
				if name == "gateway" {
					h.record("idle-gor", name, r.gorPer)
					h.record("idle-stack", name, r.stackPer)
					h.record("idle-heap", name, r.heapPer)
					h.record("idle-gor-total", name, r.gorAfter)
				}
				if h.o.idleRate {
					h.record("idle-newtls", name, r.newTLSCPU)
				}
				h.commit()
				sleepCtx(ctx, 500*time.Millisecond)
			}
		}
	}
	if h.skipped > 0 {
		h.note("time budget (--timeout %s) ran out: %d measurements skipped", h.o.timeout, h.skipped)
	}
	h.commit()
}

// affordable reports whether one more measurement still leaves time for the
// `left` measurements after it and the idle phase.
func (h *harness) affordable(left int) bool {
	per := h.o.duration + 900*time.Millisecond
	need := time.Duration(left+1) * per
	if h.o.only["idle"] && h.o.idle > 0 {
		need += time.Duration(h.o.rounds*3) * (4*time.Second + time.Duration(h.o.idle)*time.Millisecond)
	}
	return time.Now().Add(need).Before(h.deadline)
}

func rotateNames(list []string, k int) []string {
	k %= len(list)
	return append(append([]string{}, list[k:]...), list[:k]...)
}

func (h *harness) failAll(mname, target string, err error) {
	for _, k := range h.keysOf(mname) {
		h.fail(k, target, err)
	}
}
