package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

type bulkResult struct {
	gbps     float64
	cpuPerGB float64 // proxy CPU-seconds per GB
	fds      int     // proxy's open files at the end of the window
	rssKiB   int64   // proxy's RSS at the end of the window
	// Why a proxy's stream is as fast as it is, on a machine whose cores
	// the generator shares: the generator's own CPU per GB (its TLS and
	// socket work on both ends), and the read(2) and write(2) calls per MB
	// of the generator and of the proxy (/proc/PID/io syscr, syscw;
	// splice(2) is not counted there), i.e. how many pieces the stream
	// arrives in.
	genCPUPerGB                    float64
	genReadsPerMB, genWritesPerMB  float64
	proxyReadsPerMB, proxyWritesMB float64
}

// bulk streams upstream→client over n tunnels and returns GB/s and, for a
// proxy, its CPU-seconds per GB and its file descriptors and RSS while the
// streams flow (splice holds pipes, a buffered copy holds buffers).
func (h *harness) bulk(ctx context.Context, t *target, useTLS bool, n int) (r bulkResult, err error) {
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < n; i++ {
		octx, cancel := context.WithTimeout(ctx, 5*time.Second)
		c, err := h.tunnel(octx, t, useTLS)
		cancel()
		if err != nil {
			return r, err
		}
		conns = append(conns, c)
		if _, err := c.Write([]byte{'S'}); err != nil {
			return r, err
		}
	}
	warm := 300 * time.Millisecond
	var total atomic.Int64
	var wg sync.WaitGroup
	for _, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(warm + h.o.duration + 10*time.Second))
		wg.Add(1)
		go func(c net.Conn) {
			defer wg.Done()
			buf := make([]byte, 256<<10)
			for {
				k, err := c.Read(buf)
				total.Add(int64(k))
				if err != nil {
					return
				}
			}
		}(c)
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
		wg.Wait()
	}()
	if !sleepCtx(ctx, warm) {
		return r, ctx.Err()
	}
	var cpu0, cpu1 int64
	var pio0, pio1 [2]int64
	if !t.direct() {
		if cpu0, err = cpuTicks(t.pid); err != nil {
			return r, err
		}
		pio0, _ = ioCounts(t.pid)
	}
	self := os.Getpid()
	gcpu0, _ := cpuTicks(self)
	gio0, _ := ioCounts(self)
	b0, t0 := total.Load(), time.Now()
	if !sleepCtx(ctx, h.o.duration) {
		return r, ctx.Err()
	}
	b1, t1 := total.Load(), time.Now()
	gcpu1, _ := cpuTicks(self)
	gio1, _ := ioCounts(self)
	if !t.direct() {
		if cpu1, err = cpuTicks(t.pid); err != nil {
			return r, err
		}
		pio1, _ = ioCounts(t.pid)
		if r.fds, err = fdCount(t.pid); err != nil {
			return r, err
		}
		if r.rssKiB, err = rssKiB(t.pid); err != nil {
			return r, err
		}
	}
	bytes := float64(b1 - b0)
	if bytes <= 0 {
		return r, errors.New("no bytes relayed")
	}
	r.gbps = bytes / 1e9 / t1.Sub(t0).Seconds()
	r.cpuPerGB = float64(cpu1-cpu0) / clkTck / (bytes / 1e9)
	mb := bytes / 1e6
	r.genCPUPerGB = float64(gcpu1-gcpu0) / clkTck / (bytes / 1e9)
	r.genReadsPerMB, r.genWritesPerMB = float64(gio1[0]-gio0[0])/mb, float64(gio1[1]-gio0[1])/mb
	r.proxyReadsPerMB, r.proxyWritesMB = float64(pio1[0]-pio0[0])/mb, float64(pio1[1]-pio0[1])/mb
	return r, nil
}

// loop runs fn from `workers` goroutines until the duration ends and returns
// completions per second, the error count and the last error.
func (h *harness) loop(ctx context.Context, workers int, fn func(context.Context) error) (float64, int64, error) {
	end := time.Now().Add(h.o.duration)
	var ok, bad atomic.Int64
	var lastErr atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 1_000_000 && time.Now().Before(end) && ctx.Err() == nil; i++ {
				octx, cancel := context.WithTimeout(ctx, 5*time.Second)
				err := fn(octx)
				cancel()
				if time.Now().After(end) {
					return // completed after the window: not counted
				}
				if err != nil {
					bad.Add(1)
					lastErr.Store(err)
					time.Sleep(time.Millisecond)
					continue
				}
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	el := end.Sub(start).Seconds()
	var le error
	if v := lastErr.Load(); v != nil {
		le = v.(error)
	}
	if ok.Load() == 0 {
		if le == nil {
			le = errors.New("nothing completed")
		}
		return 0, bad.Load(), le
	}
	return float64(ok.Load()) / el, bad.Load(), le
}

// tunnelRate returns new tunnels per second and the proxy's CPU per tunnel
// (µs), read from /proc/PID/stat around the loop.
func (h *harness) tunnelRate(ctx context.Context, t *target, useTLS bool) (rate, cpuUS float64, bad int64, err error) {
	return h.perUnit(t, func() (float64, int64, error) {
		return h.loop(ctx, h.o.clients, func(ctx context.Context) error { return h.requestResponse(ctx, t, useTLS) })
	})
}

// getRate returns GETs per second and the proxy's CPU per request (µs).
func (h *harness) getRate(ctx context.Context, t *target) (rate, cpuUS float64, bad int64, err error) {
	tr := h.transport(t, h.o.clients)
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	u := h.objURL()
	return h.perUnit(t, func() (float64, int64, error) {
		return h.loop(ctx, h.o.clients, func(ctx context.Context) error { return getOnce(ctx, c, u) })
	})
}

// perUnit runs a rate loop and divides the proxy's CPU over it by the units
// completed: the proxy's own cost per tunnel or request, which a rate alone
// hides behind the load generator's on a shared machine.
func (h *harness) perUnit(t *target, loop func() (float64, int64, error)) (rate, cpuUS float64, bad int64, err error) {
	var cpu0, cpu1 int64
	if !t.direct() {
		if cpu0, err = cpuTicks(t.pid); err != nil {
			return 0, 0, 0, err
		}
	}
	start := time.Now()
	rate, bad, err = loop()
	el := time.Since(start).Seconds()
	if !t.direct() && rate > 0 {
		if cpu1, err = cpuTicks(t.pid); err != nil {
			return 0, 0, 0, err
		}
		cpuUS = float64(cpu1-cpu0) / clkTck * 1e6 / (rate * el)
	}
	return rate, cpuUS, bad, err
}

func percentiles(lat []time.Duration) (p50, p99 float64) {
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	at := func(q float64) float64 {
		i := int(q*float64(len(lat))+0.5) - 1
		i = max(0, min(i, len(lat)-1))
		return float64(lat[i].Nanoseconds()) / 1e3
	}
	return at(0.50), at(0.99)
}

// getLatency sends absolute-form GETs at a fixed rate (open loop) and returns
// p50/p99 in µs.
func (h *harness) getLatency(ctx context.Context, t *target) (p50, p99 float64, err error) {
	tr := h.transport(t, 64)
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	u := h.objURL()
	interval := time.Second / time.Duration(h.o.latRate)
	warm := 300 * time.Millisecond
	start := time.Now()
	measureFrom, end := start.Add(warm), start.Add(warm+h.o.duration)
	var mu sync.Mutex
	var lat []time.Duration
	var bad, dropped atomic.Int64
	var lastErr atomic.Value
	var inflight atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < 10_000_000; i++ {
		at := start.Add(time.Duration(i) * interval)
		if at.After(end) || ctx.Err() != nil {
			break
		}
		if d := time.Until(at); d > 0 {
			time.Sleep(d)
		}
		if inflight.Load() >= 256 {
			dropped.Add(1)
			continue
		}
		inflight.Add(1)
		wg.Add(1)
		go func(rec bool) {
			defer wg.Done()
			defer inflight.Add(-1)
			t0 := time.Now()
			err := getOnce(ctx, c, u)
			d := time.Since(t0)
			if err != nil {
				bad.Add(1)
				lastErr.Store(err)
				return
			}
			if rec {
				mu.Lock()
				lat = append(lat, d)
				mu.Unlock()
			}
		}(!at.Before(measureFrom))
	}
	wg.Wait()
	if len(lat) == 0 {
		if v := lastErr.Load(); v != nil {
			return 0, 0, v.(error)
		}
		return 0, 0, errors.New("no samples")
	}
	if bad.Load() > 0 || dropped.Load() > 0 {
		le, _ := lastErr.Load().(error)
		h.note("latency GET %s: %d errors, %d not sent (256 in flight) (last error: %v)", t.name, bad.Load(), dropped.Load(), le)
	}
	p50, p99 = percentiles(lat)
	return p50, p99, nil
}

// tunnelLatency does 64-byte round trips over one established plain tunnel at
// the fixed rate and returns p50/p99 in µs.
func (h *harness) tunnelLatency(ctx context.Context, t *target) (p50, p99 float64, err error) {
	octx, cancel := context.WithTimeout(ctx, 5*time.Second)
	c, err := h.tunnel(octx, t, false)
	cancel()
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(h.o.duration + 15*time.Second))
	if _, err := c.Write([]byte{'P'}); err != nil {
		return 0, 0, err
	}
	interval := time.Second / time.Duration(h.o.latRate)
	warm := 300 * time.Millisecond
	start := time.Now()
	measureFrom, end := start.Add(warm), start.Add(warm+h.o.duration)
	var lat []time.Duration
	var b [msgSize]byte
	for i := 0; i < 10_000_000; i++ {
		at := start.Add(time.Duration(i) * interval)
		if at.After(end) || ctx.Err() != nil {
			break
		}
		if d := time.Until(at); d > 0 {
			time.Sleep(d)
		}
		t0 := time.Now()
		if _, err := c.Write(b[:]); err != nil {
			return 0, 0, err
		}
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return 0, 0, err
		}
		if !at.Before(measureFrom) {
			lat = append(lat, time.Since(t0))
		}
	}
	if len(lat) == 0 {
		return 0, 0, errors.New("no samples")
	}
	p50, p99 = percentiles(lat)
	return p50, p99, nil
}

type idleResult struct {
	rssPer, fdPer, gorPer float64
	stackPer, heapPer     float64 // KiB of Go stack and heap per tunnel (gateway)
	rssAfterMiB           float64
	gorAfter              float64
	// newTLSCPU is the proxy's CPU per new TLS tunnel (µs) measured while
	// the n idle tunnels are held (--idle-rate): what a new tunnel costs
	// at that size.
	newTLSCPU float64
}

// idleCost opens n tunnels (one 64-byte round trip each, then idle) and reads
// the proxy's RSS, file descriptors and goroutines before and after.
func (h *harness) idleCost(ctx context.Context, t *target, n int) (r idleResult, err error) {
	// Warm up the code paths first, so the baseline is not a cold process.
	for i := 0; i < 20; i++ {
		if err := h.requestResponse(ctx, t, false); err != nil {
			return r, fmt.Errorf("warm-up: %w", err)
		}
	}
	sleepCtx(ctx, 500*time.Millisecond)
	rss0, err := rssKiB(t.pid)
	if err != nil {
		return r, err
	}
	fd0, err := fdCount(t.pid)
	if err != nil {
		return r, err
	}
	gor0, stack0, heap0 := 0, 0.0, 0.0
	if t.adminAddr != "" {
		if gor0, stack0, heap0, err = h.goStats(t); err != nil {
			return r, err
		}
	}
	conns := make([]net.Conn, n)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	openCtx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	var next atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n || openCtx.Err() != nil || firstErr.Load() != nil {
					return
				}
				err := func() error {
					octx, cancel := context.WithTimeout(openCtx, 10*time.Second)
					defer cancel()
					c, err := h.tunnel(octx, t, h.o.idleTLS)
					if err != nil {
						return err
					}
					conns[i] = c
					_ = c.SetDeadline(time.Now().Add(10 * time.Second))
					var b [1 + msgSize]byte
					b[0] = 'P'
					if _, err := c.Write(b[:]); err != nil {
						return err
					}
					if _, err := io.ReadFull(c, b[:msgSize]); err != nil {
						return err
					}
					return c.SetDeadline(time.Time{})
				}()
				if err != nil {
					firstErr.CompareAndSwap(nil, fmt.Errorf("tunnel %d of %d: %w", i+1, n, err))
					return
				}
			}
		}()
	}
	wg.Wait()
	if v := firstErr.Load(); v != nil {
		return r, v.(error)
	}
	if openCtx.Err() != nil {
		return r, fmt.Errorf("opening %d tunnels: %w", n, openCtx.Err())
	}
	sleepCtx(ctx, time.Second)
	if err := t.alive(); err != nil {
		return r, err
	}
	rss1, err := rssKiB(t.pid)
	if err != nil {
		return r, err
	}
	fd1, err := fdCount(t.pid)
	if err != nil {
		return r, err
	}
	r.rssPer = float64(rss1-rss0) / float64(n)
	r.fdPer = float64(fd1-fd0) / float64(n)
	r.rssAfterMiB = float64(rss1) / 1024
	if t.adminAddr != "" {
		gor1, stack1, heap1, err := h.goStats(t)
		if err != nil {
			return r, err
		}
		r.gorPer = float64(gor1-gor0) / float64(n)
		r.stackPer = (stack1 - stack0) / 1024 / float64(n)
		r.heapPer = (heap1 - heap0) / 1024 / float64(n)
		r.gorAfter = float64(gor1)
	}
	if h.o.idleRate {
		// New tunnels while the idle ones are held: the growth check
		// (a new tunnel must not cost more because many are open).
		if _, r.newTLSCPU, _, err = h.tunnelRate(ctx, t, true); err != nil {
			return r, fmt.Errorf("new tunnels with %d idle: %w", n, err)
		}
	}
	return r, nil
}
