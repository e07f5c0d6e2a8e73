// Package upcheck runs the probe's checks of the required Defender
// endpoints from the gateway itself, on a timer: the gateway's own resolver
// and checked dialer, direct to the endpoints as the endpoints' tunnels go,
// never through the gateway's listener. It answers the question the status
// page and the DefenderServiceUnreachable alert ask: do the services work
// from here, whether or not an endpoint happens to be trying right now.
package upcheck

import (
	"cmp"
	"context"
	"crypto/x509"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/defendergw/gateway/internal/probe"
)

// Options configure a checker.
type Options struct {
	// Interval between runs; Run returns at once when it is not positive.
	Interval time.Duration
	// Targets returns what to check: the required probe targets of the
	// policy in force (RequiredTargets), read at every run so a reload
	// takes effect at the next one.
	Targets func() []probe.Target
	// DialContext connects to a host:port: the gateway's checked dialer,
	// which resolves with its own resolver and refuses internal addresses
	// and the gateway's own listeners.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// RootCAs verifies the endpoints' certificates; nil means the system
	// roots.
	RootCAs *x509.CertPool
	// Timeout bounds each URL (default 15s); a run is bounded by
	// Timeout × targets / Concurrency.
	Timeout time.Duration
	// Concurrency bounds the URLs checked at once (default 4: the check is
	// background work and must not compete with the endpoints' traffic).
	Concurrency int
	// Report receives each run's report.
	Report func(Report)
}

// Report is one run of the check.
type Report struct {
	Started  time.Time       `json:"started"`
	Duration time.Duration   `json:"duration_ns"`
	Services []ServiceResult `json:"services"`
}

// ServiceResult says whether one service's required endpoints all answered.
type ServiceResult struct {
	Service string   `json:"service"`
	OK      bool     `json:"ok"`
	URLs    int      `json:"urls"`
	Failed  []Failed `json:"failed,omitempty"`
}

// Failed is one URL that did not answer as the service should.
type Failed struct {
	URL       string `json:"url"`
	Status    int    `json:"status,omitempty"`
	Diagnosis string `json:"diagnosis"`
	Detail    string `json:"detail"`
}

// RequiredTargets returns the targets a check runs: the required ones (the
// rows an endpoint cannot do without).
func RequiredTargets(all []probe.Target) []probe.Target {
	var out []probe.Target
	for _, t := range all {
		if t.Required {
			out = append(out, t)
		}
	}
	return out
}

// Run checks at once and then every Interval until ctx ends.
func Run(ctx context.Context, opts Options) {
	if opts.Interval <= 0 {
		return
	}
	t := time.NewTicker(opts.Interval)
	defer t.Stop()
	for {
		r := Check(ctx, opts)
		if ctx.Err() != nil {
			return // a run cut short by shutdown is not a result
		}
		if opts.Report != nil {
			opts.Report(r)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Check runs the check once.
func Check(ctx context.Context, opts Options) Report {
	if opts.Concurrency <= 0 {
		opts.Concurrency = 4
	}
	targets := opts.Targets()
	r := Report{Started: time.Now()}
	results := probe.Run(ctx, targets, probe.Options{
		RootCAs: opts.RootCAs, Timeout: opts.Timeout, Concurrency: opts.Concurrency,
		DialContext: opts.DialContext,
	})
	r.Duration = time.Since(r.Started)
	by := map[string]*ServiceResult{}
	for _, res := range results {
		// Rows that share a URL name every service they serve.
		for _, svc := range strings.Split(res.Target.Service, ",") {
			s := by[svc]
			if s == nil {
				s = &ServiceResult{Service: svc, OK: true}
				by[svc] = s
			}
			s.URLs++
			if !res.OK {
				s.OK = false
				s.Failed = append(s.Failed, Failed{URL: res.Target.URL, Status: res.Status,
					Diagnosis: res.Diagnosis, Detail: res.Detail})
			}
		}
	}
	for _, s := range by {
		r.Services = append(r.Services, *s)
	}
	slices.SortFunc(r.Services, func(a, b ServiceResult) int { return cmp.Compare(a.Service, b.Service) })
	return r
}
