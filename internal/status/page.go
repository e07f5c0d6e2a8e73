package status

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"html/template"
	"net/http"
	"time"

	"github.com/defendergw/gateway/internal/proxy"
)

// Gateway is the configuration at a glance.
type Gateway struct {
	Version          string     `json:"version"`
	Started          time.Time  `json:"started"`
	Cloud            string     `json:"cloud"`
	Geographies      []string   `json:"geographies"`
	AllGeographies   bool       `json:"all_geographies"` // GATEWAY_GEOGRAPHIES unset: every data location
	Mode             string     `json:"mode"`
	BlobScope        string     `json:"blob_scope"`
	Unlisted         string     `json:"unlisted"`
	Authentication   bool       `json:"authentication"`
	Inspection       bool       `json:"inspection"`
	DisabledServices []string   `json:"disabled_services,omitempty"`
	CatalogVersion   string     `json:"catalog_version"`
	CatalogSource    string     `json:"catalog_source"`
	CatalogPublished time.Time  `json:"catalog_published"`
	CatalogAgeDays   int        `json:"catalog_age_days"`
	Listeners        []Listener `json:"listeners"`
	UpstreamCheck    string     `json:"upstream_check_interval"` // "off" or a duration
}

// Listener is one of the gateway's listening sockets.
type Listener struct {
	Name string `json:"name"` // proxy, admin
	Addr string `json:"addr"`
}

// Snapshot is everything the page and /status.json show.
type Snapshot struct {
	Generated time.Time           `json:"generated"`
	Gateway   Gateway             `json:"gateway"`
	Tunnels   proxy.TunnelSummary `json:"tunnels"`
	Traffic
}

// TunnelsListed bounds the open tunnels a snapshot lists one by one.
const TunnelsListed = 50

// Compose joins the parts of a snapshot: each service row gains its open
// tunnels, and a tunnel open now counts as the service's latest success
// (tunnels report their outcome when they end, and Defender's may stay
// open for hours).
func Compose(now time.Time, g Gateway, t Traffic, tun proxy.TunnelSummary) Snapshot {
	g.CatalogAgeDays = int(now.Sub(g.CatalogPublished).Hours() / 24)
	for i := range t.Services {
		r := &t.Services[i]
		r.OpenTunnels = tun.ByService[r.Service]
		if since, ok := tun.Newest[r.Service]; ok && (r.LastSuccess == nil || since.After(*r.LastSuccess)) {
			r.LastSuccess = &since
		}
		if t.Check != nil {
			for _, c := range t.Check.Services {
				if c.Service == r.Service {
					r.UpstreamCheck = map[bool]string{true: "ok", false: "failed"}[c.OK]
				}
			}
		}
	}
	return Snapshot{Generated: now, Gateway: g, Tunnels: tun, Traffic: t}
}

// RefreshSeconds is how often the page reloads itself.
const RefreshSeconds = 10

//go:embed page.html.tmpl
var pageText string

var page = template.Must(template.New("status").Funcs(template.FuncMap{
	"ago":     ago,
	"stamp":   func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
	"dur":     func(d time.Duration) string { return d.Round(time.Millisecond).String() },
	"refresh": func() int { return RefreshSeconds },
	"svc": func(s string) string {
		if s == "" {
			return "(not in the catalog)"
		}
		return s
	},
}).Parse(pageText))

// ago renders how long before the snapshot t was.
func ago(now, t time.Time) string {
	d := now.Sub(t)
	switch {
	case t.IsZero():
		return "never"
	case d < time.Second:
		return "just now"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm ago", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd ago", int(d.Hours()/24))
}

// Handler serves the status page at / and its data at /status.json; snap
// is called once per request.
func Handler(snap func() Snapshot) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		s := snap()
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		// Everything is inline: the page works offline and loads nothing.
		w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
		if err := page.Execute(w, &s); err != nil {
			fmt.Fprintf(w, "<p>rendering failed: %s</p>", template.HTMLEscapeString(err.Error()))
		}
	})
	mux.HandleFunc("GET /status.json", func(w http.ResponseWriter, r *http.Request) {
		s := snap()
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(&s)
	})
	return mux
}
