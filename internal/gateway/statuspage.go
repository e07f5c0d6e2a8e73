package gateway

import (
	"net/http"
	"slices"
	"time"

	"github.com/defendergw/gateway/internal/probe"
	"github.com/defendergw/gateway/internal/proxy"
	"github.com/defendergw/gateway/internal/status"
	"github.com/defendergw/gateway/internal/telemetry"
	"github.com/defendergw/gateway/internal/upcheck"
)

// eventSinks hands each connection event to every sink (the access log and
// the status board).
type eventSinks []proxy.EventSink

func (s eventSinks) Log(e telemetry.Event) {
	if e.Timestamp.IsZero() {
		e.Timestamp = time.Now() // one time for every sink
	}
	for _, sink := range s {
		sink.Log(e)
	}
}

// statusHandler serves the admin listener's status page, or nil without a
// board.
func (g *Gateway) statusHandler() http.Handler {
	if g.board == nil {
		return nil
	}
	return status.Handler(g.statusSnapshot)
}

// statusSnapshot gathers the page's data: the configuration in force, the
// board's traffic, the open tunnels.
func (g *Gateway) statusSnapshot() status.Snapshot {
	p := g.policy.Load()
	gw := status.Gateway{
		Version: g.version, Started: g.started,
		Cloud: p.Cloud().String(), AllGeographies: p.AllGeographies(),
		Mode: string(g.cfg.Mode), BlobScope: p.BlobScope().String(), Unlisted: string(g.cfg.Unlisted),
		Authentication: g.authn != nil, Inspection: g.cfg.InspectCACert != "",
		CatalogVersion: p.Version(), CatalogSource: g.cfg.CatalogOrigin(), CatalogPublished: p.Published(),
		Listeners:     g.statusListeners(),
		UpstreamCheck: "off",
	}
	for _, id := range p.DisabledServices() {
		gw.DisabledServices = append(gw.DisabledServices, id+" (by "+p.DisabledBy(id).String()+")")
	}
	for _, geo := range p.Geographies() {
		gw.Geographies = append(gw.Geographies, geo.String())
	}
	if g.adminLn != nil {
		gw.Listeners = append(gw.Listeners, status.Listener{Name: "admin", Addr: g.adminLn.Addr().String()})
	}
	if d := g.cfg.UpstreamCheckInterval; d > 0 {
		gw.UpstreamCheck = "every " + d.String()
	}
	return status.Compose(time.Now(), gw, g.board.Traffic(p.Services()), g.srv.Tunnels(status.TunnelsListed))
}

// upstreamCheck configures the upstream check: the required endpoints of
// the policy in force, through the proxy's own checked dialer (its
// resolver, its refusal of internal addresses and of the gateway's own
// listeners), never through the proxy listener.
func (g *Gateway) upstreamCheck() upcheck.Options {
	return upcheck.Options{
		Interval: g.cfg.UpstreamCheckInterval,
		Targets: func() []probe.Target {
			return upcheck.RequiredTargets(probe.Targets(g.policy.Load()))
		},
		DialContext: g.dialer.DialContext,
		RootCAs:     g.roots,
		Timeout:     g.cfg.DialTimeout + g.cfg.DNSTimeout + g.cfg.ResponseHeaderTimeout,
		Concurrency: 4,
		Report: func(r upcheck.Report) {
			ok := map[string]bool{}
			var failed []string
			for _, s := range r.Services {
				ok[s.Service] = s.OK
				if !s.OK {
					failed = append(failed, s.Service)
				}
			}
			g.metrics.UpstreamCheck(r.Started, r.Duration, ok)
			if g.board != nil {
				g.board.SetCheck(r)
			}
			if len(failed) > 0 {
				slices.Sort(failed)
				g.log.Warn("upstream check: required Defender endpoints do not answer from this gateway",
					"services", failed, "duration", r.Duration.String())
			} else {
				g.log.Debug("upstream check passed", "services", len(r.Services), "duration", r.Duration.String())
			}
		},
	}
}

// statusListeners names every proxy and transparent listener for the
// status page (the admin listener is added by the caller).
func (g *Gateway) statusListeners() []status.Listener {
	var ls []status.Listener
	for _, ln := range g.lns {
		ls = append(ls, status.Listener{Name: "proxy", Addr: ln.Addr().String()})
	}
	for _, ln := range g.transparentLns {
		ls = append(ls, status.Listener{Name: "transparent", Addr: ln.Addr().String()})
	}
	return ls
}
