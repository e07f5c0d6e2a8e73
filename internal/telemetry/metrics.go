package telemetry

import (
	"runtime"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/defendergw/gateway/internal/allowlist"
	"github.com/defendergw/gateway/internal/reason"
)

const namespace = "gateway"

// none stands in for an empty label value.
const none = "none"

// Direction labels of gateway_tunnel_bytes_total.
const (
	DirectionUp   = "client_to_upstream"
	DirectionDown = "upstream_to_client"
)

var (
	// latencyBuckets are shared by DNS queries and upstream dials.
	latencyBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5}
	// tunnelBuckets span a millisecond to a day.
	tunnelBuckets = []float64{0.001, 0.01, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 14400, 86400}

	// tlsModes are the tls label values whose series are created up front:
	// tlsbypass.Mode's names (callers may pass others).
	tlsModes       = []string{"bypass", "inspected"}
	refusalReasons = []string{reason.SNIMismatch.Label(), reason.NotTLS.Label()}
	codeClasses    = []string{"1xx", "2xx", "3xx", "4xx", "5xx"}
	dnsResults     = []string{"success", "nxdomain", "servfail", "timeout", "error", "cache_hit"}
	dialErrorKinds = []string{"refused", "timeout", "private", "dns", "other"}
	authResults    = []string{"success", "failure", "no_credentials", "rate_limited"}
)

// BuildInfo labels gateway_build_info.
type BuildInfo struct {
	Version, CatalogVersion, GoVersion string // GoVersion defaults to runtime.Version()
}

// Metrics holds the gateway's collectors. The zero value is not usable; a
// nil *Metrics is, and records nothing.
type Metrics struct {
	decisions *prometheus.CounterVec
	audited   *prometheus.CounterVec

	tunnelsActive  fixed[prometheus.Gauge]
	tunnelDuration *prometheus.HistogramVec
	tunnelBytes    *prometheus.CounterVec
	tunnelRefusals fixed[prometheus.Counter]

	forwarded fixed[prometheus.Counter]

	dnsQueries  fixed[prometheus.Counter]
	dnsCacheHit prometheus.Counter
	dnsDuration prometheus.Histogram

	dialDuration prometheus.Histogram
	dialErrors   fixed[prometheus.Counter]

	auth fixed[prometheus.Counter]

	catalogMu        sync.Mutex // serialises Catalog's reset-and-set
	catalogRules     *prometheus.GaugeVec
	catalogInfo      *prometheus.GaugeVec
	catalogPublished prometheus.Gauge

	reloads *prometheus.CounterVec

	eventsLogged, eventsDropped prometheus.Counter
	proxyHeaderRejected         *prometheus.CounterVec

	parentRequests *prometheus.CounterVec
	parentUp       *prometheus.GaugeVec

	checkMu       sync.Mutex // serialises UpstreamCheck's reset-and-set
	checkSuccess  *prometheus.GaugeVec
	checkDuration prometheus.Gauge
	checkLastRun  prometheus.Gauge
}

// NewMetrics creates every gateway collector and registers it, together with
// the Go runtime and process collectors, on reg. It panics if a collector is
// already registered on reg (as prometheus.MustRegister does). A nil reg
// registers nothing.
func NewMetrics(reg prometheus.Registerer, info BuildInfo) *Metrics {
	m := &Metrics{}
	var cs []prometheus.Collector
	add := func(c prometheus.Collector) { cs = append(cs, c) }

	buildInfo := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: namespace, Name: "build_info",
		Help: "Gateway build: always 1, labelled with the gateway version, the embedded endpoint catalog version and the Go version.",
	}, []string{"version", "catalog_version", "go_version"})
	if info.GoVersion == "" {
		info.GoVersion = runtime.Version()
	}
	buildInfo.WithLabelValues(lv(info.Version), lv(info.CatalogVersion), lv(info.GoVersion)).Set(1)
	add(buildInfo)

	m.decisions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "decisions_total",
		Help: "Allowlist decisions by protocol (connect, http, inspected), decision (allow, deny, audit), reason, catalog service and geography.",
	}, []string{"protocol", "decision", "reason", "service", "geography"})
	add(m.decisions)
	m.audited = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "audited_total",
		Help: "Requests let through by audit mode that the policy would have denied, by reason and service.",
	}, []string{"reason", "service"})
	add(m.audited)

	active := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: namespace, Name: "tunnels_active",
		Help: "Open CONNECT tunnels by TLS handling (bypass, inspected).",
	}, []string{"tls"})
	m.tunnelsActive = newFixed[prometheus.Gauge](active, tlsModes)
	add(active)
	m.tunnelDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Name: "tunnel_duration_seconds",
		Help:    "Lifetime of closed CONNECT tunnels by TLS handling and by which end closed them.",
		Buckets: tunnelBuckets,
	}, []string{"tls", "end"})
	add(m.tunnelDuration)
	m.tunnelBytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "tunnel_bytes_total",
		Help: "Bytes relayed through closed CONNECT tunnels by direction (client_to_upstream, upstream_to_client) and service.",
	}, []string{"direction", "service"})
	add(m.tunnelBytes)
	refusals := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "tunnel_refusals_total",
		Help: "Allowed CONNECT tunnels closed after the ClientHello check, by reason (sni-mismatch, not-tls).",
	}, []string{"reason"})
	m.tunnelRefusals = newFixed[prometheus.Counter](refusals, refusalReasons)
	add(refusals)

	forwarded := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "forwarded_responses_total",
		Help: "Plain and inspected HTTP responses relayed to clients, by status code class.",
	}, []string{"code_class"})
	m.forwarded = newFixed[prometheus.Counter](forwarded, codeClasses)
	add(forwarded)

	dnsQueries := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "dns_queries_total",
		Help: "Name resolutions by result (success, nxdomain, servfail, timeout, error, cache_hit).",
	}, []string{"result"})
	m.dnsQueries = newFixed[prometheus.Counter](dnsQueries, dnsResults)
	m.dnsCacheHit = m.dnsQueries.with("cache_hit")
	add(dnsQueries)
	m.dnsDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: namespace, Name: "dns_query_duration_seconds",
		Help:    "Latency of DNS queries sent upstream (cache hits excluded).",
		Buckets: latencyBuckets,
	})
	add(m.dnsDuration)

	m.dialDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: namespace, Name: "upstream_dial_duration_seconds",
		Help:    "Latency of successful upstream TCP dials.",
		Buckets: latencyBuckets,
	})
	add(m.dialDuration)
	dialErrors := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "upstream_dial_errors_total",
		Help: "Failed upstream dials by kind (refused, timeout, private, dns, other).",
	}, []string{"kind"})
	m.dialErrors = newFixed[prometheus.Counter](dialErrors, dialErrorKinds)
	add(dialErrors)

	auth := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "auth_total",
		Help: "Proxy authentication attempts by result (success, failure, no_credentials, rate_limited).",
	}, []string{"result"})
	m.auth = newFixed[prometheus.Counter](auth, authResults)
	add(auth)

	m.catalogRules = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: namespace, Name: "catalog_rules",
		Help: "Rules of the effective allowlist for the configured geographies, by geography and service.",
	}, []string{"geography", "service"})
	add(m.catalogRules)
	m.catalogInfo = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: namespace, Name: "catalog_info",
		Help: "The catalog in force: always 1, labelled with its version and source (embedded, or file: GATEWAY_CATALOG_FILE).",
	}, []string{"version", "source"})
	add(m.catalogInfo)
	m.catalogPublished = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Name: "catalog_published_timestamp_seconds",
		Help: "Publication date of the catalog in force (when it was last checked against Microsoft's lists), as a Unix time.",
	})
	add(m.catalogPublished)

	m.reloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "config_reloads_total",
		Help: "Reloads of the files the gateway reads, by file (catalog, rules, htpasswd) and result (success, failure).",
	}, []string{"file", "result"})
	for _, f := range ReloadFiles {
		m.reloads.WithLabelValues(f, "success")
		m.reloads.WithLabelValues(f, "failure")
	}
	add(m.reloads)

	m.eventsLogged = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "event_log_events_total",
		Help: "Connection events written to the event log.",
	})
	m.eventsDropped = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "event_log_dropped_total",
		Help: "Connection events dropped because the event log queue was full or closed.",
	})
	add(m.eventsLogged)
	add(m.eventsDropped)

	m.proxyHeaderRejected = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "proxy_protocol_rejected_total",
		Help: "Connections closed for their PROXY protocol header (GATEWAY_PROXY_PROTOCOL): untrusted (a peer outside GATEWAY_PROXY_PROTOCOL_FROM where one is required), no_header, bad_header.",
	}, []string{"reason"})
	add(m.proxyHeaderRejected)

	// The upstream check (GATEWAY_UPSTREAM_CHECK_INTERVAL) sets these after
	// each run; with the check off they have no samples.
	m.checkSuccess = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: namespace, Name: "upstream_check_success",
		Help: "1 if every required endpoint of the service answered the gateway's last upstream check, else 0, by catalog service.",
	}, []string{"service"})
	m.checkDuration = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Name: "upstream_check_duration_seconds",
		Help: "How long the last upstream check of the required endpoints took.",
	})
	m.checkLastRun = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Name: "upstream_check_last_run_timestamp_seconds",
		Help: "When the last upstream check started, as a Unix time.",
	})
	add(m.checkSuccess)
	add(m.checkDuration)
	add(m.checkLastRun)

	// The parent label is a parent's host:port from GATEWAY_PARENT_PROXY:
	// bounded by the configuration, never by traffic.
	m.parentRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "parent_requests_total",
		Help: "Attempts to use a parent proxy (GATEWAY_PARENT_PROXY) by parent (host:port) and result (ok, refused, unreachable).",
	}, []string{"parent", "result"})
	m.parentUp = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: namespace, Name: "parent_up",
		Help: "1 while a parent proxy (GATEWAY_PARENT_PROXY) answers; 0 from a failed attempt to connect to it until it answers again (skipped for GATEWAY_PARENT_RETRY meanwhile).",
	}, []string{"parent"})
	add(m.parentRequests)
	add(m.parentUp)

	if reg != nil {
		add(collectors.NewGoCollector())
		add(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		reg.MustRegister(cs...)
	}
	return m
}

// Decision counts an allowlist decision. protocol is connect, http or
// inspected; decision is allow, deny or audit. An audit decision also counts
// in gateway_audited_total.
func (m *Metrics) Decision(protocol, decision, reason, service, geography string) {
	if m == nil {
		return
	}
	reason, service = lv(reason), lv(service)
	m.decisions.WithLabelValues(lv(protocol), lv(decision), reason, service, lv(geography)).Inc()
	if decision == "audit" {
		m.audited.WithLabelValues(reason, service).Inc()
	}
}

// TunnelOpened counts a tunnel as active; tls is bypass or inspected.
func (m *Metrics) TunnelOpened(tls string) {
	if m == nil {
		return
	}
	m.tunnelsActive.with(tls).Inc()
}

// TunnelClosed undoes TunnelOpened(tls) and records the tunnel's lifetime, by
// which end closed it, and its bytes: up from client to upstream, down from
// upstream to client. Negative byte counts are ignored.
func (m *Metrics) TunnelClosed(tls, service, end string, up, down int64, d time.Duration) {
	if m == nil {
		return
	}
	m.tunnelsActive.with(tls).Dec()
	m.tunnelDuration.WithLabelValues(lv(tls), lv(end)).Observe(d.Seconds())
	service = lv(service)
	if up > 0 {
		m.tunnelBytes.WithLabelValues(DirectionUp, service).Add(float64(up))
	}
	if down > 0 {
		m.tunnelBytes.WithLabelValues(DirectionDown, service).Add(float64(down))
	}
}

// TunnelRefused counts a tunnel refused after the ClientHello check; reason
// is sni-mismatch or not-tls.
func (m *Metrics) TunnelRefused(reason string) {
	if m == nil {
		return
	}
	m.tunnelRefusals.with(reason).Inc()
}

// Forwarded counts a plain or inspected HTTP response relayed to a client by
// its code class, 1xx to 5xx; a status outside 100-599 counts as "other".
func (m *Metrics) Forwarded(status int) {
	if m == nil {
		return
	}
	if status >= 100 && status < 600 {
		m.forwarded.known[status/100-1].Inc()
		return
	}
	m.forwarded.with("other").Inc()
}

// DNSQuery counts a DNS query sent upstream and observes its latency; result
// is success, nxdomain, servfail, timeout or error.
func (m *Metrics) DNSQuery(result string, d time.Duration) {
	if m == nil {
		return
	}
	m.dnsQueries.with(result).Inc()
	m.dnsDuration.Observe(d.Seconds())
}

// DNSCacheHit counts a resolution answered from cache (result="cache_hit");
// no latency is observed.
func (m *Metrics) DNSCacheHit() {
	if m == nil {
		return
	}
	m.dnsCacheHit.Inc()
}

// Dial records an upstream dial: kind "" is a success whose latency d is
// observed; otherwise kind (refused, timeout, private, dns, other) counts an
// error and d is ignored.
func (m *Metrics) Dial(d time.Duration, kind string) {
	if m == nil {
		return
	}
	if kind == "" {
		m.dialDuration.Observe(d.Seconds())
		return
	}
	m.dialErrors.with(kind).Inc()
}

// ParentRequest counts an attempt on a parent proxy: parent is its
// host:port from the configuration, result ok, refused or unreachable.
func (m *Metrics) ParentRequest(parent, result string) {
	if m == nil {
		return
	}
	m.parentRequests.WithLabelValues(parent, result).Inc()
}

// ParentUp sets a parent proxy's health.
func (m *Metrics) ParentUp(parent string, up bool) {
	if m == nil {
		return
	}
	v := 0.0
	if up {
		v = 1
	}
	m.parentUp.WithLabelValues(parent).Set(v)
}

// Auth counts a proxy authentication attempt; result is success, failure,
// no_credentials or rate_limited.
func (m *Metrics) Auth(result string) {
	if m == nil {
		return
	}
	m.auth.with(result).Inc()
}

// Catalog describes the catalog in force: gateway_catalog_info{version,
// source}, gateway_catalog_published_timestamp_seconds, and
// gateway_catalog_rules with the number of p's rules per geography and
// service, counting only rules in p's geographies. source is "embedded" or
// "file".
func (m *Metrics) Catalog(p *allowlist.Policy, source string) {
	if m == nil {
		return
	}
	type key struct {
		geo     allowlist.Geography
		service string
	}
	counts := map[key]int{}
	if p != nil {
		for _, r := range p.Rules() {
			if p.InGeography(r.Geography) {
				counts[key{r.Geography, r.ServiceID}]++
			}
		}
	}
	m.catalogMu.Lock()
	defer m.catalogMu.Unlock()
	m.catalogInfo.Reset()
	if p != nil {
		m.catalogInfo.WithLabelValues(lv(p.Version()), lv(source)).Set(1)
		m.catalogPublished.Set(float64(p.Published().Unix()))
	}
	m.catalogRules.Reset()
	for k, n := range counts {
		m.catalogRules.WithLabelValues(lv(k.geo.String()), lv(k.service)).Set(float64(n))
	}
}

// The file label values of gateway_config_reloads_total.
const (
	ReloadCatalog  = "catalog"  // GATEWAY_CATALOG_FILE
	ReloadRules    = "rules"    // GATEWAY_RULES_FILE
	ReloadHtpasswd = "htpasswd" // GATEWAY_AUTH_HTPASSWD
)

// ReloadFiles are the files a reload can concern, whose series are created
// up front.
var ReloadFiles = []string{ReloadCatalog, ReloadRules, ReloadHtpasswd}

// ConfigReload counts a reload of file (ReloadCatalog, ReloadRules or
// ReloadHtpasswd), successful or not.
func (m *Metrics) ConfigReload(file string, ok bool) {
	if m == nil {
		return
	}
	result := "failure"
	if ok {
		result = "success"
	}
	m.reloads.WithLabelValues(lv(file), result).Inc()
}

// EventLogged counts an event written to the event log (EventLogOptions.OnLogged).
func (m *Metrics) EventLogged() {
	if m == nil {
		return
	}
	m.eventsLogged.Inc()
}

// ProxyHeaderRejected counts a connection closed for its PROXY header;
// reason is untrusted, no_header or bad_header.
func (m *Metrics) ProxyHeaderRejected(reason string) {
	if m == nil {
		return
	}
	m.proxyHeaderRejected.WithLabelValues(reason).Inc()
}

// EventDropped counts an event the event log dropped (EventLogOptions.OnDropped).
func (m *Metrics) EventDropped() {
	if m == nil {
		return
	}
	m.eventsDropped.Inc()
}

// lv makes s a readable, valid label value: "" becomes "none" and invalid
// UTF-8 (which client_golang would panic on) is repaired.
func lv(s string) string {
	if s == "" {
		return none
	}
	if !utf8.ValidString(s) {
		return strings.ToValidUTF8(s, "\uFFFD")
	}
	return s
}

// fixed is a one-label vector (counters or gauges) whose expected values are
// resolved once; other values fall back to WithLabelValues.
type fixed[T any] struct {
	vec    interface{ WithLabelValues(...string) T }
	values []string
	known  []T
}

func newFixed[T any](vec interface{ WithLabelValues(...string) T }, values []string) fixed[T] {
	f := fixed[T]{vec: vec, values: values, known: make([]T, len(values))}
	for i, v := range values {
		f.known[i] = vec.WithLabelValues(v)
	}
	return f
}

func (f *fixed[T]) with(v string) T {
	for i, k := range f.values {
		if k == v {
			return f.known[i]
		}
	}
	return f.vec.WithLabelValues(lv(v))
}

// UpstreamCheck records an upstream check run: ok maps each catalog service
// checked to whether all its required endpoints answered. Services no longer
// checked (a reload changed the geographies) lose their series.
func (m *Metrics) UpstreamCheck(started time.Time, d time.Duration, ok map[string]bool) {
	if m == nil {
		return
	}
	m.checkMu.Lock()
	defer m.checkMu.Unlock()
	m.checkSuccess.Reset()
	for svc, good := range ok {
		v := 0.0
		if good {
			v = 1
		}
		m.checkSuccess.WithLabelValues(lv(svc)).Set(v)
	}
	m.checkDuration.Set(d.Seconds())
	m.checkLastRun.Set(float64(started.Unix()))
}
