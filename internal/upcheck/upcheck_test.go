package upcheck

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/defendergw/gateway/internal/probe"
)

// upstream is a TLS server on loopback that every checked name dials; it
// answers "down.example.com" with 503.
func upstream(t *testing.T) (*httptest.Server, func(ctx context.Context, network, addr string) (net.Conn, error)) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.Host, "down.") {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("OK"))
	}))
	t.Cleanup(srv.Close)
	var d net.Dialer
	return srv, func(ctx context.Context, network, _ string) (net.Conn, error) {
		return d.DialContext(ctx, network, srv.Listener.Addr().String())
	}
}

func TestCheck(t *testing.T) {
	srv, dial := upstream(t)
	targets := []probe.Target{
		{URL: "https://example.com/a", Expect: 200, Service: "edr-cnc,streamlined", Required: true},
		{URL: "https://www.example.com/b", Expect: 200, Service: "edr-cnc", Required: true},
		{URL: "https://down.example.com/", Expect: 200, Service: "crl", Required: true},
		{URL: "https://down.example.com/optional", Expect: 200, Service: "av-core"},
	}
	roots := srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs
	// httptest's certificate names example.com and *.example.com.
	r := Check(context.Background(), Options{
		Targets:     func() []probe.Target { return RequiredTargets(targets) },
		DialContext: dial, RootCAs: roots, Timeout: 5 * time.Second,
	})
	got := map[string]ServiceResult{}
	for _, s := range r.Services {
		got[s.Service] = s
	}
	tests := []struct {
		service string
		ok      bool
		urls    int
	}{
		{"edr-cnc", true, 2},
		{"streamlined", true, 1}, // a URL shared by two services counts for both
		{"crl", false, 1},
	}
	for _, tt := range tests {
		t.Run(tt.service, func(t *testing.T) {
			s, found := got[tt.service]
			if !found {
				t.Fatalf("service %s not checked: %+v", tt.service, r.Services)
			}
			if s.OK != tt.ok || s.URLs != tt.urls {
				t.Errorf("got ok %v with %d URLs (failed %+v), want ok %v with %d", s.OK, s.URLs, s.Failed, tt.ok, tt.urls)
			}
			if !s.OK && (len(s.Failed) != 1 || s.Failed[0].Diagnosis != probe.DiagUnexpectedStatus || s.Failed[0].Status != 503) {
				t.Errorf("failed = %+v, want the 503 as unexpected-status", s.Failed)
			}
		})
	}
	if _, found := got["av-core"]; found {
		t.Error("an optional target was checked")
	}
	if r.Duration <= 0 || r.Started.IsZero() {
		t.Errorf("report without timing: %+v", r)
	}
}

func TestRun(t *testing.T) {
	_, dial := upstream(t)
	reports := make(chan Report, 10)
	var calls atomic.Int32
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		Run(ctx, Options{
			Interval: time.Hour, // only the first run, at once, happens within the test
			Targets: func() []probe.Target {
				calls.Add(1)
				return nil
			},
			DialContext: dial,
			Report:      func(r Report) { reports <- r },
		})
	}()
	select {
	case <-reports:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not check at start")
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return when its context ended")
	}
	if calls.Load() != 1 {
		t.Errorf("targets read %d times, want 1", calls.Load())
	}
	// Off: Run returns at once without checking.
	Run(context.Background(), Options{Targets: func() []probe.Target {
		t.Error("a check ran with the interval 0")
		return nil
	}})
}
