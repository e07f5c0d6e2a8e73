package telemetry

import (
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"

	"github.com/defendergw/gateway/internal/allowlist"
)

func newTestMetrics(t testing.TB) (*Metrics, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	return NewMetrics(reg, BuildInfo{Version: "1.2.3", CatalogVersion: "2025-01"}), reg
}

// series finds the metric name{labels} in reg's gather. ok is false if it is
// absent.
func series(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) (m *dto.Metric, ok bool) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel()) != len(labels) {
				continue
			}
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; !ok || v != lp.GetValue() {
					continue next
				}
			}
			return m, true
		}
	}
	return nil, false
}

// value is a counter's or gauge's value, or a histogram's sample count.
func value(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	m, ok := series(t, reg, name, labels)
	if !ok {
		t.Fatalf("no series %s%v", name, labels)
	}
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Histogram != nil:
		return float64(m.Histogram.GetSampleCount())
	}
	t.Fatalf("%s%v: unexpected metric type", name, labels)
	return 0
}

type want struct {
	name   string
	labels map[string]string
	value  float64
}

type L = map[string]string

func TestMetricMethods(t *testing.T) {
	tests := []struct {
		name string
		call func(m *Metrics)
		want []want
	}{
		{"decision allow", func(m *Metrics) {
			m.Decision("connect", "allow", "", "endpoint-detection", "EU")
			m.Decision("connect", "allow", "", "endpoint-detection", "EU")
		}, []want{
			{"gateway_decisions_total", L{"protocol": "connect", "decision": "allow", "reason": "none", "service": "endpoint-detection", "geography": "EU"}, 2},
		}},
		{"decision deny", func(m *Metrics) { m.Decision("http", "deny", "not_allowlisted", "", "") }, []want{
			{"gateway_decisions_total", L{"protocol": "http", "decision": "deny", "reason": "not_allowlisted", "service": "none", "geography": "none"}, 1},
		}},
		{"decision audit also audited", func(m *Metrics) { m.Decision("inspected", "audit", "path_not_allowed", "sense", "WW") }, []want{
			{"gateway_decisions_total", L{"protocol": "inspected", "decision": "audit", "reason": "path_not_allowed", "service": "sense", "geography": "WW"}, 1},
			{"gateway_audited_total", L{"reason": "path_not_allowed", "service": "sense"}, 1},
		}},
		{"tunnel opened", func(m *Metrics) { m.TunnelOpened("bypass"); m.TunnelOpened("bypass"); m.TunnelOpened("inspected") }, []want{
			{"gateway_tunnels_active", L{"tls": "bypass"}, 2},
			{"gateway_tunnels_active", L{"tls": "inspected"}, 1},
		}},
		{"tunnel closed", func(m *Metrics) {
			m.TunnelOpened("bypass")
			m.TunnelClosed("bypass", "sense", "client", 100, 5000, 3*time.Second)
			m.TunnelClosed("inspected", "", "upstream", 0, -1, 0)
		}, []want{
			{"gateway_tunnels_active", L{"tls": "bypass"}, 0},
			{"gateway_tunnels_active", L{"tls": "inspected"}, -1},
			{"gateway_tunnel_duration_seconds", L{"tls": "bypass", "end": "client"}, 1},
			{"gateway_tunnel_duration_seconds", L{"tls": "inspected", "end": "upstream"}, 1},
			{"gateway_tunnel_bytes_total", L{"direction": "client_to_upstream", "service": "sense"}, 100},
			{"gateway_tunnel_bytes_total", L{"direction": "upstream_to_client", "service": "sense"}, 5000},
		}},
		{"tunnel refused", func(m *Metrics) {
			m.TunnelRefused("sni-mismatch")
			m.TunnelRefused("not-tls")
			m.TunnelRefused("not-tls")
		}, []want{
			{"gateway_tunnel_refusals_total", L{"reason": "sni-mismatch"}, 1},
			{"gateway_tunnel_refusals_total", L{"reason": "not-tls"}, 2},
		}},
		{"forwarded", func(m *Metrics) {
			for _, s := range []int{101, 200, 204, 302, 404, 502, 599, 0, 600} {
				m.Forwarded(s)
			}
		}, []want{
			{"gateway_forwarded_responses_total", L{"code_class": "1xx"}, 1},
			{"gateway_forwarded_responses_total", L{"code_class": "2xx"}, 2},
			{"gateway_forwarded_responses_total", L{"code_class": "3xx"}, 1},
			{"gateway_forwarded_responses_total", L{"code_class": "4xx"}, 1},
			{"gateway_forwarded_responses_total", L{"code_class": "5xx"}, 2},
			{"gateway_forwarded_responses_total", L{"code_class": "other"}, 2},
		}},
		{"dns query", func(m *Metrics) {
			m.DNSQuery("success", time.Millisecond)
			m.DNSQuery("nxdomain", time.Millisecond)
			m.DNSQuery("timeout", 5*time.Second)
		}, []want{
			{"gateway_dns_queries_total", L{"result": "success"}, 1},
			{"gateway_dns_queries_total", L{"result": "nxdomain"}, 1},
			{"gateway_dns_queries_total", L{"result": "timeout"}, 1},
			{"gateway_dns_queries_total", L{"result": "cache_hit"}, 0},
			{"gateway_dns_query_duration_seconds", nil, 3},
		}},
		{"dns cache hit", func(m *Metrics) { m.DNSCacheHit(); m.DNSCacheHit() }, []want{
			{"gateway_dns_queries_total", L{"result": "cache_hit"}, 2},
			{"gateway_dns_query_duration_seconds", nil, 0},
		}},
		{"dial success", func(m *Metrics) { m.Dial(20*time.Millisecond, "") }, []want{
			{"gateway_upstream_dial_duration_seconds", nil, 1},
			{"gateway_upstream_dial_errors_total", L{"kind": "refused"}, 0},
		}},
		{"dial errors", func(m *Metrics) {
			m.Dial(time.Second, "refused")
			m.Dial(time.Second, "private")
			m.Dial(time.Second, "private")
		}, []want{
			{"gateway_upstream_dial_duration_seconds", nil, 0},
			{"gateway_upstream_dial_errors_total", L{"kind": "refused"}, 1},
			{"gateway_upstream_dial_errors_total", L{"kind": "private"}, 2},
		}},
		{"auth", func(m *Metrics) { m.Auth("success"); m.Auth("rate_limited"); m.Auth("") }, []want{
			{"gateway_auth_total", L{"result": "success"}, 1},
			{"gateway_auth_total", L{"result": "rate_limited"}, 1},
			{"gateway_auth_total", L{"result": "failure"}, 0},
			{"gateway_auth_total", L{"result": "none"}, 1},
		}},
		{"config reload", func(m *Metrics) {
			m.ConfigReload(ReloadRules, true)
			m.ConfigReload(ReloadRules, false)
			m.ConfigReload(ReloadHtpasswd, false)
			m.ConfigReload(ReloadHtpasswd, true)
			m.ConfigReload(ReloadHtpasswd, true)
		}, []want{
			{"gateway_config_reloads_total", L{"file": "rules", "result": "success"}, 1},
			{"gateway_config_reloads_total", L{"file": "rules", "result": "failure"}, 1},
			{"gateway_config_reloads_total", L{"file": "htpasswd", "result": "success"}, 2},
			{"gateway_config_reloads_total", L{"file": "htpasswd", "result": "failure"}, 1},
			{"gateway_config_reloads_total", L{"file": "catalog", "result": "success"}, 0},
		}},
		{"event log", func(m *Metrics) { m.EventLogged(); m.EventLogged(); m.EventDropped() }, []want{
			{"gateway_event_log_events_total", nil, 2},
			{"gateway_event_log_dropped_total", nil, 1},
		}},
		{"build info", func(m *Metrics) {}, []want{
			{"gateway_build_info", L{"version": "1.2.3", "catalog_version": "2025-01", "go_version": runtime.Version()}, 1},
		}},
		{"invalid utf-8 label", func(m *Metrics) { m.Auth("bad\xff") }, []want{
			{"gateway_auth_total", L{"result": "bad\uFFFD"}, 1},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, reg := newTestMetrics(t)
			tt.call(m)
			for _, w := range tt.want {
				if got := value(t, reg, w.name, w.labels); got != w.value {
					t.Errorf("%s%v = %v, want %v", w.name, w.labels, got, w.value)
				}
			}
		})
	}
}

func TestCatalogRules(t *testing.T) {
	cat, err := allowlist.Embedded()
	if err != nil {
		t.Fatal(err)
	}
	p, err := allowlist.NewPolicy(cat, allowlist.Options{Geographies: []allowlist.Geography{allowlist.EU}})
	if err != nil {
		t.Fatal(err)
	}
	want := map[[2]string]float64{}
	for _, r := range p.Rules() {
		if p.InGeography(r.Geography) {
			svc := r.ServiceID
			if svc == "" {
				svc = "none"
			}
			want[[2]string{r.Geography.String(), svc}]++
		}
	}
	if len(want) == 0 {
		t.Fatal("policy has no rules")
	}

	m, reg := newTestMetrics(t)
	m.catalogRules.WithLabelValues("UAE", "stale").Set(7) // must be reset
	m.catalogInfo.WithLabelValues("old", "embedded").Set(1)
	m.Catalog(p, "file")

	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[[2]string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "gateway_catalog_rules" {
			continue
		}
		for _, s := range mf.GetMetric() {
			var k [2]string
			for _, lp := range s.GetLabel() {
				switch lp.GetName() {
				case "geography":
					k[0] = lp.GetValue()
				case "service":
					k[1] = lp.GetValue()
				}
			}
			got[k] = s.GetGauge().GetValue()
		}
	}
	if len(got) != len(want) {
		t.Errorf("got %d series, want %d: %v", len(got), len(want), got)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("gateway_catalog_rules{geography=%q,service=%q} = %v, want %v", k[0], k[1], got[k], v)
		}
	}
	for k := range got {
		if k[0] != "WW" && k[0] != "EU" {
			t.Errorf("series for geography %q outside the policy", k[0])
		}
	}

	if _, ok := series(t, reg, "gateway_catalog_rules", L{"geography": "UAE", "service": "stale"}); ok {
		t.Error("Catalog did not reset earlier series")
	}
	if got := value(t, reg, "gateway_catalog_info", L{"version": cat.Version, "source": "file"}); got != 1 {
		t.Errorf("gateway_catalog_info{version=%q,source=file} = %v, want 1", cat.Version, got)
	}
	if _, ok := series(t, reg, "gateway_catalog_info", L{"version": "old", "source": "embedded"}); ok {
		t.Error("Catalog kept the previous catalog's info series")
	}
	if got, want := value(t, reg, "gateway_catalog_published_timestamp_seconds", L{}), float64(cat.Published.Unix()); got != want || want <= 0 {
		t.Errorf("gateway_catalog_published_timestamp_seconds = %v, want %v", got, want)
	}
	m.Catalog(nil, "")
	if n := testutil.CollectAndCount(m.catalogRules) + testutil.CollectAndCount(m.catalogInfo); n != 0 {
		t.Errorf("Catalog(nil) left %d series", n)
	}
}

// touchAll moves every series at least once.
func touchAll(m *Metrics) {
	m.Decision("connect", "audit", "not_allowlisted", "sense", "EU")
	m.TunnelOpened("bypass")
	m.TunnelClosed("bypass", "sense", "client", 1, 1, time.Second)
	m.TunnelRefused("not-tls")
	m.Forwarded(200)
	m.DNSQuery("success", time.Millisecond)
	m.DNSCacheHit()
	m.Dial(time.Millisecond, "")
	m.Dial(time.Millisecond, "timeout")
	m.Auth("failure")
	m.Catalog(nil, "")
	m.catalogRules.WithLabelValues("EU", "sense").Set(1)
	m.ConfigReload(ReloadRules, true)
	m.EventLogged()
	m.EventDropped()
}

func TestMetricsLint(t *testing.T) {
	m, reg := newTestMetrics(t)
	touchAll(m)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	for _, n := range []string{
		"gateway_build_info", "gateway_decisions_total", "gateway_audited_total",
		"gateway_tunnels_active", "gateway_tunnel_duration_seconds", "gateway_tunnel_bytes_total",
		"gateway_tunnel_refusals_total", "gateway_forwarded_responses_total",
		"gateway_dns_queries_total", "gateway_dns_query_duration_seconds",
		"gateway_upstream_dial_duration_seconds", "gateway_upstream_dial_errors_total",
		"gateway_auth_total", "gateway_catalog_rules", "gateway_config_reloads_total",
		"gateway_event_log_events_total", "gateway_event_log_dropped_total",
		"go_goroutines",
	} {
		if !names[n] {
			t.Errorf("metric %s not gathered", n)
		}
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

func TestHistogramBuckets(t *testing.T) {
	m, reg := newTestMetrics(t)
	touchAll(m)
	tests := []struct {
		name   string
		labels map[string]string
		want   []float64
	}{
		{"gateway_tunnel_duration_seconds", L{"tls": "bypass", "end": "client"}, tunnelBuckets},
		{"gateway_dns_query_duration_seconds", nil, latencyBuckets},
		{"gateway_upstream_dial_duration_seconds", nil, latencyBuckets},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, ok := series(t, reg, tt.name, tt.labels)
			if !ok {
				t.Fatal("missing")
			}
			var got []float64
			for _, b := range s.GetHistogram().GetBucket() {
				got = append(got, b.GetUpperBound())
			}
			if len(got) != len(tt.want) {
				t.Fatalf("buckets %v, want %v", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Fatalf("buckets %v, want %v", got, tt.want)
				}
			}
		})
	}
}

func TestNilMetrics(t *testing.T) {
	var m *Metrics
	callAll := func() {
		m.Decision("connect", "allow", "", "", "")
		m.TunnelOpened("bypass")
		m.TunnelClosed("bypass", "", "", 1, 1, 0)
		m.TunnelRefused("not-tls")
		m.Forwarded(200)
		m.DNSQuery("success", 0)
		m.DNSCacheHit()
		m.Dial(0, "")
		m.Auth("success")
		m.Catalog(nil, "")
		m.ConfigReload(ReloadRules, true)
		m.EventLogged()
		m.EventDropped()
	}
	callAll() // must not panic
}

func TestNewMetricsNilRegisterer(t *testing.T) {
	m := NewMetrics(nil, BuildInfo{})
	touchAll(m)
}

func TestMetricsConcurrent(t *testing.T) {
	m, reg := newTestMetrics(t)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 1000 {
				m.Decision("connect", "allow", "", "sense", "EU")
				m.TunnelOpened("inspected")
				m.TunnelClosed("inspected", "sense", "client", 1, 2, time.Millisecond)
			}
		})
	}
	wg.Go(func() {
		for range 100 {
			m.Catalog(nil, "")
			if _, err := reg.Gather(); err != nil {
				t.Error(err)
			}
		}
	})
	wg.Wait()
	if got := value(t, reg, "gateway_decisions_total", L{"protocol": "connect", "decision": "allow", "reason": "none", "service": "sense", "geography": "EU"}); got != 8000 {
		t.Errorf("decisions = %v, want 8000", got)
	}
	if got := value(t, reg, "gateway_tunnels_active", L{"tls": "inspected"}); got != 0 {
		t.Errorf("active = %v, want 0", got)
	}
}

func TestNoRawAddressLabels(t *testing.T) {
	// Every label name is from the documented, bounded set.
	allowed := map[string]bool{
		"version": true, "catalog_version": true, "go_version": true, "protocol": true, "decision": true,
		"reason": true, "service": true, "geography": true, "tls": true, "end": true, "direction": true,
		"code_class": true, "result": true, "kind": true, "file": true, // file: catalog, rules, htpasswd
	}
	m, reg := newTestMetrics(t)
	touchAll(m)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if !strings.HasPrefix(mf.GetName(), "gateway_") {
			continue
		}
		for _, s := range mf.GetMetric() {
			for _, lp := range s.GetLabel() {
				if !allowed[lp.GetName()] {
					t.Errorf("%s: unexpected label %q", mf.GetName(), lp.GetName())
				}
			}
		}
	}
}

func BenchmarkDecisionMetric(b *testing.B) {
	m, _ := newTestMetrics(b)
	b.ReportAllocs()
	for b.Loop() {
		m.Decision("connect", "allow", "", "endpoint-detection", "EU")
	}
}

func BenchmarkDecisionMetricParallel(b *testing.B) {
	m, _ := newTestMetrics(b)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.Decision("connect", "allow", "", "endpoint-detection", "EU")
		}
	})
}
