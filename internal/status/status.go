// Package status keeps what the admin listener's status page shows: how each
// Defender service fares through the gateway over the last 15 minutes, the
// most recent refusals, the most refused destinations, and the upstream
// check's last run.
//
// A Board reads the same connection events the access log writes (one
// outcome, one record), whether or not an access log is configured. Its
// memory is fixed whatever the traffic: minute buckets in rings, a ring of
// refusals, a bounded table of refused destinations per minute, a bounded
// number of service rows, and strings clipped to a fixed length.
package status

import (
	"cmp"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/defendergw/gateway/internal/telemetry"
	"github.com/defendergw/gateway/internal/upcheck"
)

// Bounds of the board's memory.
const (
	Window         = 15 * time.Minute // the span of the per-service counts and the top list
	windowMinutes  = int(Window / time.Minute)
	RefusalRing    = 200 // most recent refusals kept
	topPerMinute   = 64  // refused destinations tracked per minute (Space-Saving)
	TopShown       = 20  // refused destinations listed
	maxServiceRows = 256 // service rows; events past it count under OtherService
	maxString      = 256 // bytes kept of a client, target, rule or reason
)

// OtherService is the row that counts events of services past
// maxServiceRows (operator rules may name services freely).
const OtherService = "(other)"

// Options configure a Board.
type Options struct {
	// Now, if non-nil, tells the time; if nil, time.Now is used.
	Now func() time.Time
}

// Board aggregates connection events for the status page. Its methods are
// safe for concurrent use; Log is cheap (one short critical section, no
// allocation on the success path once a service row exists).
type Board struct {
	now func() time.Time

	mu       sync.Mutex
	services map[string]*serviceStats
	ring     [RefusalRing]Refusal
	ringNext int // index the next refusal goes to
	ringLen  int
	top      [windowMinutes]topTable
	check    *upcheck.Report
}

// New returns an empty board.
func New(opts Options) *Board {
	b := &Board{now: opts.Now, services: map[string]*serviceStats{}}
	if b.now == nil {
		b.now = time.Now
	}
	return b
}

type minuteCounts struct {
	minute                       int64 // unix minute this bucket counts; older buckets are reset on use
	requests, refusals, failures uint32
}

type serviceStats struct {
	buckets     [windowMinutes]minuteCounts
	lastSuccess time.Time
	lastProblem Problem
}

// Problem is the last refusal or failure of a service.
type Problem struct {
	Time   time.Time `json:"time"`
	Kind   string    `json:"kind"` // "refused" or "failed"
	Reason string    `json:"reason"`
	Target string    `json:"target"`
	Status int       `json:"status"`
}

// Refusal is one refused or failed connection, as the ring keeps it: the
// problem, and who and which rule it concerned.
type Refusal struct {
	Problem
	Client  string `json:"client"`
	Rule    string `json:"rule,omitempty"`
	Service string `json:"service,omitempty"`
}

// Log records one connection event: it satisfies proxy.EventSink.
func (b *Board) Log(e telemetry.Event) {
	t := e.Timestamp
	if t.IsZero() {
		t = b.now()
	}
	var kind string
	switch e.ActionType {
	case telemetry.ConnectionBlocked:
		kind = telemetry.OutcomeRefused
	case telemetry.ConnectionFailed:
		kind = telemetry.OutcomeFailed
	}
	minute := t.Unix() / 60
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.service(e.Fields.Service)
	c := s.bucket(minute)
	c.requests++
	if kind == "" {
		if t.After(s.lastSuccess) {
			s.lastSuccess = t
		}
		return
	}
	target := destination(&e)
	if kind == telemetry.OutcomeRefused {
		c.refusals++
		b.topAt(minute).add(target)
	} else {
		c.failures++
	}
	status := e.Fields.Status
	if status == 0 {
		status = e.Status
	}
	s.lastProblem = Problem{Time: t, Kind: kind, Reason: clip(e.Fields.Reason), Target: target, Status: status}
	b.ring[b.ringNext] = Refusal{Problem: s.lastProblem, Client: clip(e.LocalIP),
		Rule: clip(e.Fields.Rule), Service: clip(e.Fields.Service)}
	b.ringNext = (b.ringNext + 1) % RefusalRing
	b.ringLen = min(b.ringLen+1, RefusalRing)
}

// SetCheck records the upstream check's latest run.
func (b *Board) SetCheck(r upcheck.Report) {
	b.mu.Lock()
	b.check = &r
	b.mu.Unlock()
}

// service returns the row of id, creating it while there is room.
func (b *Board) service(id string) *serviceStats {
	if s, ok := b.services[id]; ok {
		return s
	}
	if len(b.services) >= maxServiceRows-1 { // one left for OtherService
		id = OtherService
		if s, ok := b.services[id]; ok {
			return s
		}
	}
	s := &serviceStats{}
	b.services[clip(id)] = s
	return s
}

func (s *serviceStats) bucket(minute int64) *minuteCounts {
	c := &s.buckets[minute%int64(windowMinutes)]
	if c.minute != minute {
		*c = minuteCounts{minute: minute}
	}
	return c
}

func (b *Board) topAt(minute int64) *topTable {
	t := &b.top[minute%int64(windowMinutes)]
	if t.minute != minute {
		*t = topTable{minute: minute}
	}
	return t
}

// topTable counts refused destinations within one minute with the
// Space-Saving algorithm (Metwally et al., 2005): at most topPerMinute
// entries; a new destination when full takes the place of the least
// counted and inherits its count, so heavy hitters are never lost and
// every count is an upper bound off by at most the inherited part.
type topTable struct {
	minute  int64
	n       int
	entries [topPerMinute]struct {
		target string
		count  uint32
		over   uint32 // inherited count (the error bound)
	}
}

func (t *topTable) add(target string) {
	for i := range t.n {
		if t.entries[i].target == target {
			t.entries[i].count++
			return
		}
	}
	if t.n < topPerMinute {
		t.entries[t.n].target, t.entries[t.n].count, t.entries[t.n].over = target, 1, 0
		t.n++
		return
	}
	m := 0
	for i := 1; i < t.n; i++ {
		if t.entries[i].count < t.entries[m].count {
			m = i
		}
	}
	e := &t.entries[m]
	e.target, e.over = target, e.count
	e.count++
}

// destination is the host:port an event was for, clipped: the key of the
// top list and the target of the ring (a plain-HTTP URL loses its path and
// query, which may carry what should not sit on a status page).
func destination(e *telemetry.Event) string {
	host := e.RemoteURL
	if i := strings.Index(host, "://"); i >= 0 {
		host = host[i+3:]
		if j := strings.IndexAny(host, "/?#"); j >= 0 {
			host = host[:j]
		}
		if k := strings.LastIndexByte(host, '@'); k >= 0 {
			host = host[k+1:] // never userinfo
		}
	}
	if e.RemotePort != 0 && host != "" {
		if _, _, err := net.SplitHostPort(host); err != nil {
			host = net.JoinHostPort(host, strconv.Itoa(e.RemotePort))
		}
	}
	return clip(host)
}

// clip bounds s and copies what it keeps when it cuts, so that a kept
// prefix does not pin a long string's memory.
func clip(s string) string {
	if len(s) <= maxString {
		return s
	}
	return strings.Clone(strings.ToValidUTF8(s[:maxString], ""))
}

// ServiceRow is one service's line on the page.
type ServiceRow struct {
	Service     string     `json:"service"`
	Requests    int        `json:"requests"`
	Refusals    int        `json:"refusals"`
	Failures    int        `json:"failures"`
	LastSuccess *time.Time `json:"last_success,omitempty"`
	LastProblem *Problem   `json:"last_problem,omitempty"`
	OpenTunnels int        `json:"open_tunnels"`
	// UpstreamCheck is the last upstream check's verdict on the service:
	// "ok", "failed", or "" when it was not checked.
	UpstreamCheck string `json:"upstream_check,omitempty"`
}

// Health sums the row up: "problem" when its latest outcome is a refusal
// or failure, "ok" when it is a success, "idle" without either in the
// window; a failed upstream check is a problem whatever the traffic.
func (r ServiceRow) Health(now time.Time) string {
	if r.UpstreamCheck == "failed" {
		return "problem"
	}
	recent := func(t time.Time) bool { return now.Sub(t) < Window }
	switch {
	case r.LastProblem != nil && recent(r.LastProblem.Time) &&
		(r.LastSuccess == nil || !r.LastProblem.Time.Before(*r.LastSuccess)):
		return "problem"
	case r.LastSuccess != nil && recent(*r.LastSuccess), r.OpenTunnels > 0:
		return "ok"
	}
	return "idle"
}

// TopRefused is one of the most refused destinations in the window.
type TopRefused struct {
	Target string `json:"target"`
	Count  int    `json:"count"`
	// Over is how much of Count may belong to other destinations (the
	// Space-Saving error bound); 0 when exact.
	Over int `json:"over,omitempty"`
}

// Traffic is the board's part of the status page.
type Traffic struct {
	Window     string          `json:"window"`
	Services   []ServiceRow    `json:"services"`
	Refusals   []Refusal       `json:"recent_refusals"` // newest first
	TopRefused []TopRefused    `json:"top_refused"`
	Check      *upcheck.Report `json:"upstream_check,omitempty"`
}

// Traffic returns the rows of the services named (the policy's, in name
// order, each shown even without traffic) and of every other service seen, the
// refusal ring newest first and the top refused destinations of the window.
func (b *Board) Traffic(services []string) Traffic {
	now := b.now()
	first := now.Add(-Window).Unix()/60 + 1 // the oldest minute still in the window
	out := Traffic{Window: fmt.Sprintf("%d minutes", windowMinutes)}
	b.mu.Lock()
	defer b.mu.Unlock()
	row := func(id string, s *serviceStats) ServiceRow {
		r := ServiceRow{Service: id}
		if s == nil {
			return r
		}
		for _, c := range s.buckets {
			if c.minute >= first {
				r.Requests += int(c.requests)
				r.Refusals += int(c.refusals)
				r.Failures += int(c.failures)
			}
		}
		if !s.lastSuccess.IsZero() {
			t := s.lastSuccess
			r.LastSuccess = &t
		}
		if !s.lastProblem.Time.IsZero() {
			p := s.lastProblem
			r.LastProblem = &p
		}
		return r
	}
	// Alphabetical: a page that refreshes itself keeps its rows in place.
	services = slices.Sorted(slices.Values(services))
	named := map[string]bool{}
	for _, id := range services {
		named[id] = true
		out.Services = append(out.Services, row(id, b.services[id]))
	}
	var others []ServiceRow
	for id, s := range b.services {
		if !named[id] {
			others = append(others, row(id, s))
		}
	}
	slices.SortFunc(others, func(a, b ServiceRow) int { return cmp.Compare(a.Service, b.Service) })
	out.Services = append(out.Services, others...)

	for i := range b.ringLen {
		out.Refusals = append(out.Refusals, b.ring[(b.ringNext-1-i+2*RefusalRing)%RefusalRing])
	}

	counts := map[string]*TopRefused{}
	for i := range b.top {
		t := &b.top[i]
		if t.minute < first {
			continue
		}
		for _, e := range t.entries[:t.n] {
			c := counts[e.target]
			if c == nil {
				c = &TopRefused{Target: e.target}
				counts[e.target] = c
			}
			c.Count += int(e.count)
			c.Over += int(e.over)
		}
	}
	for _, c := range counts {
		out.TopRefused = append(out.TopRefused, *c)
	}
	slices.SortFunc(out.TopRefused, func(a, b TopRefused) int {
		return cmp.Or(cmp.Compare(b.Count, a.Count), cmp.Compare(a.Target, b.Target))
	})
	if len(out.TopRefused) > TopShown {
		out.TopRefused = out.TopRefused[:TopShown]
	}
	if b.check != nil {
		c := *b.check
		out.Check = &c
	}
	return out
}
