package proxy

import (
	"bufio"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestMetricsAndEvents drives one allowed tunnel, one refusal, one DNS
// failure and one audited tunnel through an audit-mode gateway and checks
// the exact metric increments and the four connection events.
func TestMetricsAndEvents(t *testing.T) {
	w := newWorld(t, worldOptions{geos: eu, audit: true, telemetry: true})

	tunnel := func(target string) {
		t.Helper()
		c, resp := w.connect(target+":443", clientHello(t, target))
		if resp.StatusCode != 200 {
			t.Fatalf("CONNECT %s: %d", target, resp.StatusCode)
		}
		c.Close()
	}
	tunnel("winatp-gw-weu.microsoft.com")                             // allowed
	if _, r := w.connect("127.0.0.1:443", nil); r.StatusCode != 403 { // refused
		t.Fatalf("ip literal: %d", r.StatusCode)
	}
	if _, r := w.connect("nxdomain.wdcp.microsoft.com:443", nil); r.StatusCode != 502 { // dns failure
		t.Fatalf("dns failure: %d", r.StatusCode)
	}
	tunnel("unlisted.example.com") // audited
	for deadline := time.Now().Add(5 * time.Second); w.srv.Active() != 0 || strings.Count(w.logs.String(), `"duration_s"`) < 2; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("tunnels did not close:\n%s", w.logs.String())
		}
	}

	expect := map[string]float64{
		`gateway_decisions_total{decision="allow",geography="EU",protocol="connect",reason="allowed",service="edr-cnc"}`:  1,
		`gateway_decisions_total{decision="deny",geography="none",protocol="connect",reason="ip-literal",service="none"}`: 1,
		// Allowed, then not resolvable: a failure, not a denial.
		`gateway_decisions_total{decision="allow",geography="WW",protocol="connect",reason="dns-failure",service="av-maps"}`: 1,
		`gateway_decisions_total{decision="audit",geography="none",protocol="connect",reason="not-listed",service="none"}`:   1,
		`gateway_audited_total{reason="not-listed",service="none"}`:                                                          1,
		`gateway_tunnels_active{tls="bypass"}`:                                                                               0,
	}
	got := scrape(t, w)
	for series, want := range expect {
		if v, ok := got[series]; !ok || v != want {
			t.Errorf("%s = %v (present %v), want %v", series, v, ok, want)
		}
	}
	var decisions float64
	for k, v := range got {
		if strings.HasPrefix(k, "gateway_decisions_total{") {
			decisions += v
		}
	}
	if decisions != 4 {
		t.Errorf("decisions in total = %v, want exactly 4", decisions)
	}
	// The client closes each tunnel abruptly, so a tunnel may end "closed"
	// or "error" depending on timing; both count.
	var ended float64
	for k, v := range got {
		if strings.HasPrefix(k, "gateway_tunnel_duration_seconds_count{") && strings.Contains(k, `tls="bypass"`) {
			ended += v
		}
	}
	if ended != 2 {
		t.Errorf("ended tunnels = %v, want 2", ended)
	}

	w.events.Close()
	f, err := os.Open(w.eventFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	type event struct {
		ActionType       string
		LocalIP          string
		LocalPort        int
		RemoteUrl        string
		RemoteIP         string
		RemotePort       int
		Protocol         string
		AdditionalFields map[string]any
	}
	byAction := map[string]event{}
	sc := bufio.NewScanner(f)
	n := 0
	for sc.Scan() {
		var e event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("event %q: %v", sc.Text(), err)
		}
		byAction[e.ActionType] = e
		n++
	}
	if n != 4 {
		t.Fatalf("%d events, want 4", n)
	}
	// Each field means one thing: decision (what the gateway decided),
	// outcome (how the connection ended), reason (why it was refused or
	// failed, or what audit mode let through; empty for a clean success).
	tunnelEnds := []string{"closed", "error"} // the client closes abruptly: either, by timing
	tests := []struct {
		action, url, remoteIP, reason, decision string
		outcomes                                []string
	}{
		{"ConnectionSuccess", "winatp-gw-weu.microsoft.com", "127.0.0.1", "", "allow", tunnelEnds},
		{"ConnectionBlocked", "127.0.0.1", "", "ip-literal", "deny", []string{"refused"}},
		{"ConnectionFailed", "nxdomain.wdcp.microsoft.com", "", "dns-failure", "allow", []string{"failed"}},
		{"ConnectionAudited", "unlisted.example.com", "127.0.0.1", "not-listed", "audit", tunnelEnds},
	}
	for _, tt := range tests {
		t.Run(tt.action, func(t *testing.T) {
			e, ok := byAction[tt.action]
			if !ok {
				t.Fatalf("no %s event", tt.action)
			}
			if e.RemoteUrl != tt.url || e.RemoteIP != tt.remoteIP || e.RemotePort != 443 || e.LocalIP != "127.0.0.1" || e.LocalPort == 0 || e.Protocol != "Tcp" {
				t.Errorf("event %+v", e)
			}
			if r, _ := e.AdditionalFields["reason"].(string); r != tt.reason {
				t.Errorf("reason %q, want %q", r, tt.reason)
			}
			if d, _ := e.AdditionalFields["decision"].(string); d != tt.decision {
				t.Errorf("decision %q, want %q", d, tt.decision)
			}
			if o, _ := e.AdditionalFields["outcome"].(string); !slices.Contains(tt.outcomes, o) {
				t.Errorf("outcome %q, want one of %q", o, tt.outcomes)
			}
		})
	}
	if e := byAction["ConnectionSuccess"]; e.AdditionalFields["sni"] != "winatp-gw-weu.microsoft.com" ||
		e.AdditionalFields["tls"] != "bypass" || e.AdditionalFields["service"] != "edr-cnc" {
		t.Errorf("success event fields %v", e.AdditionalFields)
	}
}

// scrape gathers the world's registry into "name{labels}" → value.
func scrape(t *testing.T, w *world) map[string]float64 {
	t.Helper()
	families, err := w.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range families {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+`="`+l.GetValue()+`"`)
			}
			key := mf.GetName() + "{" + strings.Join(labels, ",") + "}"
			switch {
			case m.Counter != nil:
				out[key] = m.Counter.GetValue()
			case m.Gauge != nil:
				out[key] = m.Gauge.GetValue()
			case m.Histogram != nil:
				out[mf.GetName()+"_count{"+strings.Join(labels, ",")+"}"] = float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return out
}

// TestOneRecordPerRequest checks that each outcome is written once, to the
// access log, and that the operational log carries no per-request line
// unless it is at debug level.
func TestOneRecordPerRequest(t *testing.T) {
	for _, tt := range []struct {
		name      string
		level     slog.Level
		wantLines int // outcome lines in the operational log
	}{
		{"info", slog.LevelInfo, 0},
		{"debug", slog.LevelDebug, 4},
	} {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorld(t, worldOptions{geos: eu, telemetry: true, logLevel: &tt.level})
			c, resp := w.connect("winatp-gw-weu.microsoft.com:443", clientHello(t, "winatp-gw-weu.microsoft.com"))
			if resp.StatusCode != 200 {
				t.Fatalf("CONNECT: %d", resp.StatusCode)
			}
			c.Close()
			if _, r := w.connect("winatp-gw-cus.microsoft.com:443", nil); r.StatusCode != 403 {
				t.Fatalf("geography: %d", r.StatusCode)
			}
			client := w.client()
			for _, u := range []string{"http://crl.microsoft.com/pki/crl/products/one.crl", "http://unlisted-http.example.com/"} {
				r, err := client.Get(u)
				if err != nil {
					t.Fatal(err)
				}
				io.Copy(io.Discard, r.Body)
				r.Body.Close()
			}
			client.CloseIdleConnections()
			for deadline := time.Now().Add(5 * time.Second); w.srv.Active() != 0; time.Sleep(10 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("the tunnel did not end")
				}
			}
			// The forwarded response is recorded when goproxy closes its
			// body, after the client has read it: wait for it.
			var events []string
			for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
				b, _ := os.ReadFile(w.eventFile)
				if events = strings.Split(strings.TrimSpace(string(b)), "\n"); len(events) >= 4 || time.Now().After(deadline) {
					break
				}
			}
			w.events.Close()
			b, _ := os.ReadFile(w.eventFile)
			events = strings.Split(strings.TrimSpace(string(b)), "\n")
			var actions []string
			for _, line := range events {
				var e struct{ ActionType, RemoteUrl string }
				if err := json.Unmarshal([]byte(line), &e); err != nil {
					t.Fatalf("event %q: %v", line, err)
				}
				actions = append(actions, e.ActionType+" "+e.RemoteUrl)
			}
			slices.Sort(actions)
			want := []string{
				"ConnectionBlocked http://unlisted-http.example.com/",
				"ConnectionBlocked winatp-gw-cus.microsoft.com",
				"ConnectionSuccess http://crl.microsoft.com/pki/crl/products/one.crl",
				"ConnectionSuccess winatp-gw-weu.microsoft.com",
			}
			if !slices.Equal(actions, want) {
				t.Errorf("events:\n got %q\nwant %q", actions, want)
			}
			logs := w.logs.String()
			if got := strings.Count(logs, `"msg":"outcome"`); got != tt.wantLines {
				t.Errorf("%d outcome lines in the operational log, want %d:\n%s", got, tt.wantLines, logs)
			}
			if tt.level == slog.LevelInfo && logs != "" {
				t.Errorf("the operational log has per-request lines at info:\n%s", logs)
			}
		})
	}
}

// TestPathUncheckedRecorded: a raw tunnel that a path-limited row allows
// at host level says so in its record (the path is encrypted).
func TestPathUncheckedRecorded(t *testing.T) {
	w := newWorld(t, worldOptions{geos: eu})
	w.dns.Set("www.microsoft.com", "127.0.0.1")
	c, resp := w.connect("www.microsoft.com:443", nil)
	if resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %d", resp.StatusCode)
	}
	c.Close()
	w.waitLog(t, `"target":"www.microsoft.com","status":200`)
	w.waitLog(t, `"path_unchecked":true`)
}
