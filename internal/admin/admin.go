// Package admin serves the gateway's admin listener, kept apart from the
// proxy port: Prometheus metrics, liveness and readiness probes, the
// effective allowlist, and decisions on demand.
package admin

import (
	"encoding/json"
	"net/http"
	"net/http/pprof"

	"github.com/defendergw/gateway/internal/allowlist"
)

// Options configure the admin handler.
type Options struct {
	// Policy returns the allowlist in force.
	Policy func() *allowlist.Policy
	// Metrics, if non-nil, serves /metrics; if nil, /metrics is 404.
	Metrics http.Handler
	// Ready, if non-nil, reports readiness (nil means ready); if nil, the
	// gateway is always ready.
	Ready func() error
	// Status, if non-nil, serves the status page at / and its data at
	// /status.json (status.Handler); if nil, both are 404.
	Status http.Handler
	// Profiling serves Go's runtime profiles under /debug/pprof/ (CPU,
	// heap, goroutines, mutex and block contention, execution trace).
	// Off by default: profiles reveal internals and a CPU profile or trace
	// costs CPU while it runs.
	Profiling bool
}

// Handler returns the admin HTTP handler:
//
//	/          the status page (with Options.Status); /status.json its data
//	/metrics   Prometheus exposition
//	/healthz   200 while the process runs
//	/readyz    200 when ready to take traffic, 503 with the reason otherwise
//	/allowlist the effective rules as JSON (?all=1 adds other geographies' rows)
//	/decide    ?target=URL-or-host:port: the decision, as `gateway explain --format json`
//	/debug/pprof/  runtime profiles, only with Options.Profiling
func Handler(opts Options) http.Handler {
	mux := http.NewServeMux()
	if opts.Profiling {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	if opts.Metrics != nil {
		mux.Handle("GET /metrics", opts.Metrics)
	}
	if opts.Status != nil {
		mux.Handle("GET /{$}", opts.Status)
		mux.Handle("GET /status.json", opts.Status)
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if opts.Ready != nil {
			if err := opts.Ready(); err != nil {
				w.WriteHeader(http.StatusServiceUnavailable)
				w.Write([]byte("not ready: " + err.Error() + "\n"))
				return
			}
		}
		w.Write([]byte("ready\n"))
	})
	mux.HandleFunc("GET /allowlist", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, opts.Policy().List(r.URL.Query().Get("all") != ""))
	})
	mux.HandleFunc("GET /decide", func(w http.ResponseWriter, r *http.Request) {
		target := r.URL.Query().Get("target")
		if target == "" {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "missing ?target=URL-or-host:port"})
			return
		}
		writeJSON(w, http.StatusOK, opts.Policy().Explain(target))
	})
	return mux
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
