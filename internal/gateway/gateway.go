// Package gateway is one running gateway's life: it builds every part from
// the configuration (resolver, policy, authentication, inspection, proxy,
// telemetry, status page), opens the proxy and admin listeners, serves until
// told to stop, reloads what changed on disk or on SIGHUP (one reloader for
// every file it reads), answers readiness, and shuts down in order. main
// parses the environment into a config.Config and calls New and Run.
package gateway

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/defendergw/gateway/internal/admin"
	"github.com/defendergw/gateway/internal/allowlist"
	"github.com/defendergw/gateway/internal/auth"
	"github.com/defendergw/gateway/internal/config"
	"github.com/defendergw/gateway/internal/filestamp"
	"github.com/defendergw/gateway/internal/inspect"
	"github.com/defendergw/gateway/internal/parent"
	"github.com/defendergw/gateway/internal/proxy"
	"github.com/defendergw/gateway/internal/proxyheader"
	"github.com/defendergw/gateway/internal/reason"
	"github.com/defendergw/gateway/internal/resolver"
	"github.com/defendergw/gateway/internal/status"
	"github.com/defendergw/gateway/internal/telemetry"
	"github.com/defendergw/gateway/internal/tlsbypass"
	"github.com/defendergw/gateway/internal/transparent"
	"github.com/defendergw/gateway/internal/upcheck"
)

// Options configure New.
type Options struct {
	// Config is the validated configuration (config.Load).
	Config *config.Config
	// Logger is the operational log.
	Logger *slog.Logger
	// Version is the binary's version, for logs, metrics and the status
	// page.
	Version string
	// WrapDialer, if non-nil, wraps the checked dialer (the lab maps the
	// catalog's ports to its endpoints); if nil, the dialer is used as is.
	WrapDialer func(proxy.Dialer) proxy.Dialer
}

// Gateway is one running gateway: listeners, policy, and the parts wired
// between them.
type Gateway struct {
	version string
	cfg     *config.Config
	log     *slog.Logger
	policy  atomic.Pointer[allowlist.Policy]
	res     *resolver.Resolver
	authn   *auth.Authenticator
	metrics *telemetry.Metrics
	reg     *prometheus.Registry
	events  *telemetry.EventLog
	board   *status.Board
	started time.Time
	dialer  proxy.Dialer   // the checked dialer the proxy uses (the upstream check's too)
	roots   *x509.CertPool // trusted roots for upstream TLS
	srv     *proxy.Server
	limit   *proxy.ConnLimiter
	lns     []net.Listener // GATEWAY_LISTEN, in its order
	adminLn net.Listener
	// transparentLns are the GATEWAY_TRANSPARENT_LISTEN listeners, served
	// by transparent.
	transparentLns []net.Listener
	transparent    *proxy.Transparent

	shuttingDown atomic.Bool
	dnsErr       atomic.Pointer[error] // last DNS probe result; errNoDNSAnswerYet until the first

	reloadMu    sync.Mutex // serialises the reloader and SIGHUP
	htpasswdErr string     // the htpasswd error last reported, under reloadMu
}

// errNoDNSAnswerYet keeps a new gateway out of rotation until a DNS server
// has answered once: before that it could only answer dns-failure.
var errNoDNSAnswerYet = errors.New("no DNS server has answered yet")

// New builds every part and opens the listeners; it fails on any bad
// setting, naming it.
func New(o Options) (_ *Gateway, err error) {
	cfg, logger, wrapDialer := o.Config, o.Logger, o.WrapDialer
	g := &Gateway{version: o.Version, cfg: cfg, log: logger, reg: prometheus.NewRegistry(), started: time.Now()}
	noAnswer := errNoDNSAnswerYet
	g.dnsErr.Store(&noAnswer)
	defer func() {
		if err != nil {
			g.Close() // whatever was opened before the failure
		}
	}()
	policy, origin, err := cfg.BuildPolicyFrom()
	if err != nil {
		return nil, err
	}
	if policy.AllGeographies() {
		logger.Warn("GATEWAY_GEOGRAPHIES is not set: the rows of every data location are allowed; set it to your tenant's data location, e.g. GATEWAY_GEOGRAPHIES=EU",
			"data_locations", dataLocationNames())
	}
	if policy.BlobScope() == allowlist.BlobWildcard {
		logger.Warn("GATEWAY_BLOB_SCOPE=wildcard: every Azure storage account (*.blob.core.windows.net) is allowed and tunnelled uninspected, a path out for any data to any attacker's storage account; Microsoft says not to exempt the wildcard, and only the Microsoft Monitoring Agent (retired in August 2024) needs it. Use listed, and name an MMA workspace's accounts in GATEWAY_RULES_FILE")
	}
	g.policy.Store(policy)
	embeddedVersion := ""
	if cat, err := allowlist.Embedded(); err == nil {
		embeddedVersion = cat.Version
	}
	g.metrics = telemetry.NewMetrics(g.reg, telemetry.BuildInfo{
		Version: g.version, CatalogVersion: embeddedVersion, GoVersion: runtime.Version()})
	g.metrics.Catalog(policy, origin)

	servers := cfg.DNSServers
	if len(servers) == 0 {
		if servers, err = resolver.ServersFromResolvConf("/etc/resolv.conf"); err != nil {
			return nil, fmt.Errorf("GATEWAY_DNS_SERVERS is not set and /etc/resolv.conf is unusable: %w", err)
		}
	}
	g.res, err = resolver.New(resolver.Options{
		Servers: servers, Timeout: cfg.DNSTimeout, MinTTL: cfg.DNSMinTTL, MaxTTL: cfg.DNSMaxTTL,
		NegativeTTL: cfg.DNSNegativeTTL, CacheSize: cfg.DNSCacheSize,
		Observe: func(result string, d time.Duration) {
			if result == "cache_hit" {
				g.metrics.DNSCacheHit()
				return
			}
			g.metrics.DNSQuery(result, d)
		},
	})
	if err != nil {
		return nil, fmt.Errorf("GATEWAY_DNS_SERVERS: %w", err)
	}
	upstreamTLS, err := cfg.UpstreamTLS()
	if err != nil {
		return nil, err
	}
	minter, err := cfg.Inspector()
	if err != nil {
		return nil, err
	}
	if g.authn, err = cfg.Authenticator(); err != nil {
		return nil, err
	}
	if cfg.AccessLog != "off" {
		if g.events, err = telemetry.NewEventLog(telemetry.EventLogOptions{
			Path: cfg.AccessLog, Format: string(cfg.AccessLogFormat),
			OnLogged: g.metrics.EventLogged, OnDropped: g.metrics.EventDropped,
		}); err != nil {
			return nil, fmt.Errorf("GATEWAY_ACCESS_LOG: %w", err)
		}
	}
	kaPeriod, kaConfig := tcpKeepAlive(cfg.TCPKeepAlive)
	lc := listenConfig(cfg.TCPKeepAlive)
	var self []netip.AddrPort
	for _, a := range cfg.Listen {
		ln, err := lc.Listen(context.Background(), "tcp", a)
		if err != nil {
			return nil, fmt.Errorf("GATEWAY_LISTEN: %w", err)
		}
		g.lns = append(g.lns, ln)
		self = append(self, addrPort(ln.Addr()))
	}
	tlc, origDst := lc, transparent.OriginalDst
	if cfg.TransparentTProxy {
		tlc, origDst = transparent.TProxy(lc), transparent.LocalDst
	}
	for _, a := range cfg.TransparentListen {
		tln, err := tlc.Listen(context.Background(), "tcp", a)
		if err != nil {
			return nil, fmt.Errorf("GATEWAY_TRANSPARENT_LISTEN: %w", err)
		}
		g.transparentLns = append(g.transparentLns, tln)
		self = append(self, addrPort(tln.Addr()))
	}
	if cfg.AdminListen != "off" {
		if g.adminLn, err = net.Listen("tcp", cfg.AdminListen); err != nil {
			return nil, fmt.Errorf("GATEWAY_ADMIN_LISTEN: %w", err)
		}
		self = append(self, addrPort(g.adminLn.Addr()))
	}
	opts := proxy.Options{
		Policy: g.policy.Load,
		Dialer: &resolver.Dialer{
			Resolver:        g.res,
			Policy:          &resolver.Policy{AllowPrivate: cfg.PrivateDestinations(), Self: self},
			Timeout:         cfg.DialTimeout + cfg.DNSTimeout, // for dials without a request's deadline
			Observe:         func(d time.Duration, err error) { g.metrics.Dial(d, dialKind(err)) },
			KeepAlive:       kaPeriod,
			KeepAliveConfig: kaConfig,
		},
		Logger:                logger,
		DialTimeout:           cfg.DialTimeout + cfg.DNSTimeout,
		ResponseHeaderTimeout: cfg.ResponseHeaderTimeout,
		Tunnel:                tlsbypass.Options{IdleTimeout: cfg.IdleTimeout, HalfCloseTimeout: cfg.HalfCloseTimeout, Splice: splicePipes(string(cfg.TunnelCopy))},
		ClientHelloTimeout:    cfg.ClientHelloTimeout,
		WriteTimeout:          cfg.WriteTimeout,
		UpstreamTLS:           upstreamTLS,
		ClientNetworks:        cfg.ClientNetworks(),
		Challenge:             auth.Challenge(cfg.AuthRealm),
		AuthenticateAnonymous: cfg.Anonymous == "none",
		Metrics:               g.metrics,
	}
	// One outcome, one record: the access log and the status board read
	// the same events.
	var sinks eventSinks
	if g.events != nil {
		sinks = append(sinks, g.events)
	}
	if g.adminLn != nil {
		g.board = status.New(status.Options{})
		sinks = append(sinks, g.board)
	}
	switch len(sinks) {
	case 0:
	case 1:
		opts.Events = sinks[0]
	default:
		opts.Events = sinks
	}
	if minter != nil {
		opts.Inspector = minter
	}
	if parents := cfg.Parents(); len(parents) > 0 {
		chain, err := parent.New(parent.Options{
			Parents:         parents,
			Bypass:          cfg.ParentBypassList(),
			Retry:           cfg.ParentRetry,
			SendName:        cfg.ParentTarget == "name",
			DialTimeout:     cfg.DialTimeout,
			KeepAlive:       kaPeriod,
			KeepAliveConfig: kaConfig,
			Transport:       proxy.PlainTransport(opts),
			Observe:         g.metrics.ParentRequest,
			Up:              g.metrics.ParentUp,
		})
		if err != nil {
			return nil, fmt.Errorf("GATEWAY_PARENT_PROXY: %w", err)
		}
		opts.Parent = chain
		var names []string
		for _, p := range chain.Parents() {
			names = append(names, p.Name())
		}
		logger.Info("allowed traffic goes through parent proxies", "parents", strings.Join(names, ","),
			"bypass", strings.Join(cfg.ParentBypassList(), ","), "target", string(cfg.ParentTarget))
	}
	if wrapDialer != nil {
		opts.Dialer = wrapDialer(opts.Dialer)
	}
	g.dialer, g.roots = opts.Dialer, upstreamTLS.RootCAs
	ps := &pacServer{public: cfg.PublicAddr, dflt: string(cfg.PACDefault), listen: addrs(g.lns)}
	opts.PAC = ps.pac
	g.limit = &proxy.ConnLimiter{Max: cfg.MaxConns, PerClient: cfg.MaxConnsPerClient,
		OnRefuse: func(rc reason.Code) { g.metrics.Decision("tcp", "deny", rc.Label(), "", "") },
		OnAcceptError: func(err error, failures int) {
			logger.Error("accepting connections fails: out of file descriptors; serving the connections held and retrying (raise the descriptor limit, e.g. LimitNOFILE, or lower GATEWAY_MAX_CONNS)",
				"error", err.Error(), "failed_accepts", failures)
		}}
	opts.ConnDone = g.limit.Release
	if g.authn != nil {
		opts.Auth = g.authn
	}
	if g.srv, err = proxy.New(opts); err != nil {
		return nil, err
	}
	if len(g.transparentLns) > 0 {
		if g.transparent, err = g.srv.NewTransparent(proxy.TransparentOptions{
			OriginalDst:       origDst,
			StrictDestination: cfg.TransparentStrictDestination,
			HTTP:              g.httpServer(),
		}); err != nil {
			return nil, err
		}
	}
	return g, nil
}

func addrPort(a net.Addr) netip.AddrPort {
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// dialKind names a dial error for gateway_upstream_dial_errors_total.
func dialKind(err error) string {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, resolver.ErrUpstreamTimeout):
		return "timeout"
	case errors.Is(err, resolver.ErrUpstreamUnreachable):
		return "refused"
	case errors.Is(err, resolver.ErrPrivateDestination):
		return "private"
	case errors.Is(err, resolver.ErrDNSFailure):
		return "dns"
	}
	return "other"
}

// ready reports whether the gateway should receive traffic.
func (g *Gateway) ready() error {
	if g.shuttingDown.Load() {
		return errors.New("shutting down")
	}
	if p := g.dnsErr.Load(); p != nil && *p != nil {
		return fmt.Errorf("dns: %w", *p)
	}
	if g.policy.Load() == nil {
		return errors.New("no policy loaded")
	}
	return nil
}

// probeDNS keeps the readiness view of DNS current.
func (g *Gateway) probeDNS(ctx context.Context) {
	t := time.NewTicker(g.cfg.DNSProbeInterval)
	defer t.Stop()
	for {
		pctx, cancel := context.WithTimeout(ctx, g.cfg.DNSTimeout)
		err := g.res.Ping(pctx)
		cancel()
		switch prev := g.dnsErr.Swap(&err); {
		case err != nil && (*prev == nil || *prev == errNoDNSAnswerYet):
			g.log.Error("dns servers do not answer: not ready", "error", err.Error())
		case err == nil && *prev == errNoDNSAnswerYet:
			g.log.Info("dns servers answer: ready")
		case err == nil && *prev != nil:
			g.log.Info("dns servers answer again: ready")
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// watchedFile is a file the gateway reads and reloads: its path, its
// reload label (gateway_config_reloads_total{file}) and how often it is
// checked.
type watchedFile struct {
	path, label string
	every       time.Duration
}

// files lists the files the gateway reads, the one list the reloader and
// SIGHUP work from.
func (g *Gateway) files() []watchedFile {
	var fs []watchedFile
	for _, f := range []watchedFile{
		{g.cfg.CatalogFile, telemetry.ReloadCatalog, g.cfg.ReloadInterval},
		{g.cfg.RulesFile, telemetry.ReloadRules, g.cfg.ReloadInterval},
	} {
		if f.path != "" {
			fs = append(fs, f)
		}
	}
	if g.authn != nil {
		fs = append(fs, watchedFile{g.cfg.AuthHtpasswd, telemetry.ReloadHtpasswd, g.cfg.AuthReloadInterval})
	}
	return fs
}

// policyFiles are the reload labels of the files the policy is built
// from.
func (g *Gateway) policyFiles() []string {
	var labels []string
	for _, f := range g.files() {
		if f.label != telemetry.ReloadHtpasswd {
			labels = append(labels, f.label)
		}
	}
	return labels
}

// reload re-reads the catalog file and the rules file and swaps the new
// policy in at once; a bad file keeps the previous policy (and catalog).
// files are the reload labels the trigger concerns: the file that changed,
// or every policy file for SIGHUP. A failure is counted against the file
// its error names.
func (g *Gateway) reload(why string, files ...string) {
	p, origin, err := g.cfg.BuildPolicyFrom()
	if err != nil {
		failed := files
		switch msg := err.Error(); {
		case strings.HasPrefix(msg, config.VarName("RulesFile")):
			failed = []string{telemetry.ReloadRules}
		case strings.HasPrefix(msg, config.VarName("CatalogFile")):
			failed = []string{telemetry.ReloadCatalog}
		}
		for _, f := range failed {
			g.metrics.ConfigReload(f, false)
		}
		g.log.Error("reload failed; keeping the previous catalog and rules", "trigger", why, "error", err.Error())
		return
	}
	g.policy.Store(p)
	g.metrics.Catalog(p, origin)
	for _, f := range files {
		g.metrics.ConfigReload(f, true)
	}
	g.log.Info("policy reloaded", "trigger", why, "rules", len(p.Rules()), "catalog_version", p.Version(),
		"catalog_source", origin)
}

// reloadHtpasswd re-reads the htpasswd file if it changed. A file that
// stays bad is reported (logged and counted) once, not at every check.
func (g *Gateway) reloadHtpasswd(why string) {
	changed, err := g.authn.Reload()
	switch {
	case err != nil:
		if msg := err.Error(); msg != g.htpasswdErr {
			g.htpasswdErr = msg
			g.metrics.ConfigReload(telemetry.ReloadHtpasswd, false)
			g.log.Error("htpasswd reload failed; keeping the previous users", "trigger", why, "error", msg)
		}
	case changed:
		g.htpasswdErr = ""
		g.metrics.ConfigReload(telemetry.ReloadHtpasswd, true)
		g.log.Info("htpasswd reloaded", "trigger", why, "file", g.cfg.AuthHtpasswd, "users", g.authn.Users())
	}
}

// watchFiles is the gateway's one reloader: it checks every file the
// gateway reads, each at its own interval (GATEWAY_RELOAD_INTERVAL for the
// catalog and rules files, GATEWAY_AUTH_RELOAD_INTERVAL for htpasswd), and
// reloads what changed: modification time, size or identity (an atomic
// rename over it, as a ConfigMap update or "catalog import --out" does).
// SIGHUP takes the same paths (reload, reloadHtpasswd). Reloads run on
// this goroutine or the signal loop's, serialised by reloadMu.
func (g *Gateway) watchFiles(ctx context.Context) {
	type watched struct {
		watchedFile
		next time.Time
		last *filestamp.Stamp
	}
	var files []*watched
	for _, f := range g.files() {
		w := &watched{watchedFile: f}
		if f.label != telemetry.ReloadHtpasswd {
			w.last, _ = filestamp.Of(f.path) // the authenticator keeps htpasswd's own stamp
		}
		files = append(files, w)
	}
	if len(files) == 0 {
		return
	}
	tick := files[0].every
	for _, w := range files {
		tick = min(tick, w.every)
		w.next = time.Now().Add(w.every)
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			for _, w := range files {
				if now.Before(w.next) {
					continue
				}
				w.next = now.Add(w.every)
				g.reloadMu.Lock()
				g.check(w.path, w.label, &w.last)
				g.reloadMu.Unlock()
			}
		}
	}
}

// check reloads one watched file if it changed.
func (g *Gateway) check(path, label string, last **filestamp.Stamp) {
	if label == telemetry.ReloadHtpasswd {
		g.reloadHtpasswd(label + " file changed") // Reload compares the file's stamp itself
		return
	}
	why := label + " file changed"
	fi, err := os.Stat(path)
	switch {
	case err != nil && *last != nil:
		*last = nil // gone: the reload fails, is logged and counted
		g.reload(why, label)
	case err == nil && !(*last).Matches(fi):
		*last = filestamp.FromInfo(fi)
		g.reload(why, label)
	}
}

// reloadAll is SIGHUP: every file, on the reloader's paths.
func (g *Gateway) reloadAll() {
	g.reloadMu.Lock()
	defer g.reloadMu.Unlock()
	g.reload("SIGHUP", g.policyFiles()...)
	if g.authn != nil {
		g.reloadHtpasswd("SIGHUP")
	}
}

// Run serves until ctx ends or SIGINT/SIGTERM arrives, then shuts down:
// readiness fails first, the proxy listener stops accepting, in-flight
// requests finish and tunnels get GATEWAY_SHUTDOWN_GRACE.
func (g *Gateway) Run(ctx context.Context) error {
	defer g.Close()
	// Signals are wired before the gateway announces itself, so that a
	// SIGHUP sent as soon as it listens reloads rather than kills it.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	hs := g.httpServer()
	var as *http.Server
	if g.adminLn != nil {
		as = &http.Server{
			Handler: admin.Handler(admin.Options{
				Policy:  g.policy.Load,
				Metrics: promhttp.HandlerFor(g.reg, promhttp.HandlerOpts{Registry: g.reg}),
				Ready:   g.ready,
				Status:  g.statusHandler(),
				// Profiles only on request: GATEWAY_PPROF=true.
				Profiling: g.cfg.Pprof,
			}),
			ReadHeaderTimeout: 5 * time.Second,
		}
		go as.Serve(g.adminLn)
	}
	go g.probeDNS(ctx)
	go upcheck.Run(ctx, g.upstreamCheck())
	go g.watchFiles(ctx)

	p := g.policy.Load()
	var geos []string
	for _, geo := range p.Geographies() {
		geos = append(geos, geo.String())
	}
	adminAddr := "off"
	if g.adminLn != nil {
		adminAddr = g.adminLn.Addr().String()
	}
	g.log.Info("gateway listening", "listen", joinAddrs(g.lns), "admin", adminAddr,
		"transparent", joinAddrs(g.transparentLns), "proxy_protocol", g.cfg.ProxyProtocol.String(), "version", g.version,
		"catalog_version", p.Version(), "catalog_source", g.cfg.CatalogOrigin(),
		"catalog_published", p.Published().Format(time.DateOnly), "cloud", p.Cloud().String(),
		"geographies", strings.Join(geos, ","), "rules", len(p.Rules()),
		"blob_scope", p.BlobScope().String(), "inspection", g.cfg.InspectCACert != "", "mode", g.cfg.Mode,
		"unlisted", g.cfg.Unlisted, "authentication", g.authn != nil)

	errc := make(chan error, len(g.lns)+len(g.transparentLns))
	for _, ln := range g.lns {
		go func() { errc <- hs.Serve(g.limit.Listener(g.proxyHeader(ln))) }()
	}
	for _, tln := range g.transparentLns {
		go func() { errc <- g.transparent.Serve(g.limit.SilentListener(g.proxyHeader(tln))) }()
	}
	for {
		select {
		case err := <-errc:
			return err
		case <-ctx.Done():
			return g.shutdown(hs, as)
		case s := <-sigs:
			if s != syscall.SIGHUP {
				g.log.Info("shutting down", "signal", s.String())
				return g.shutdown(hs, as)
			}
			g.reloadAll()
			if g.events == nil {
				continue
			}
			if err := g.events.Reopen(); err != nil {
				g.log.Error("reopening the access log failed", "error", err.Error())
			}
		}
	}
}

// httpServer is the proxy port's HTTP server (the transparent listener's
// plain-HTTP server takes its settings).
func (g *Gateway) httpServer() *http.Server {
	return &http.Server{
		Handler:           g.srv,
		ReadHeaderTimeout: g.cfg.ReadHeaderTimeout,
		IdleTimeout:       g.cfg.ClientIdleTimeout,
		MaxHeaderBytes:    g.cfg.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(g.log.Handler(), slog.LevelDebug),
		// Hijacked connections (tunnels) are released by the proxy when
		// they end; every other connection when the server closes it.
		ConnState: func(c net.Conn, s http.ConnState) {
			if s == http.StateClosed {
				g.limit.Release(c)
			}
		},
	}
}

func (g *Gateway) shutdown(hs, as *http.Server) error {
	g.shuttingDown.Store(true)
	time.Sleep(g.cfg.ShutdownDelay) // let load balancers see /readyz fail
	ctx, cancel := context.WithTimeout(context.Background(), g.cfg.ShutdownGrace)
	defer cancel()
	for _, tln := range g.transparentLns {
		tln.Close()
	}
	hs.Shutdown(ctx) // stops accepting; waits for in-flight requests
	if g.transparent != nil {
		g.transparent.Shutdown(ctx)
	}
	if err := g.srv.Shutdown(ctx); err != nil {
		g.log.Warn("closed tunnels still open at the end of the grace period", "grace", g.cfg.ShutdownGrace.String())
	}
	if as != nil {
		actx, acancel := context.WithTimeout(context.Background(), time.Second)
		as.Shutdown(actx)
		acancel()
	}
	g.log.Info("gateway stopped")
	return nil
}

func (g *Gateway) Close() {
	if g.srv != nil {
		g.srv.Close()
	}
	for _, ln := range g.lns {
		ln.Close()
	}
	if g.adminLn != nil {
		g.adminLn.Close()
	}
	for _, tln := range g.transparentLns {
		tln.Close()
	}
	if g.events != nil {
		g.events.Close()
	}
}

// compile-time check that the minter satisfies the proxy's interface.
var _ proxy.Inspector = (*inspect.Minter)(nil)

// tcpKeepAlive turns GATEWAY_TCP_KEEPALIVE into the net package's settings
// for client and upstream sockets: a probe after d of silence and every d
// after that, the kernel's probe count (9 on Linux), or no probes for 0.
// Defender tunnels sit idle for long stretches: probes find endpoints that
// vanished (a laptop leaving the network) long before GATEWAY_IDLE_TIMEOUT,
// and keep NAT and firewall state alive on the way out (Azure Load
// Balancer drops flows idle for 4 minutes by default).
func tcpKeepAlive(d time.Duration) (time.Duration, net.KeepAliveConfig) {
	if d <= 0 {
		return -1, net.KeepAliveConfig{}
	}
	return d, net.KeepAliveConfig{Enable: true, Idle: d, Interval: d, Count: -1}
}

// splicePipes bounds the pipes that GATEWAY_TUNNEL_COPY=splice may hold at
// once: 16 per CPU keeps every CPU splicing while tunnels wait on slow
// readers, and stays within an unprivileged user's default pipe budget
// (fs.pipe-user-pages-soft, 64 MiB: 64 pipes of 1 MiB) on small machines.
func splicePipes(mode string) *tlsbypass.Pipes {
	if mode != "splice" {
		return nil
	}
	return tlsbypass.NewPipes(16 * runtime.GOMAXPROCS(0))
}

// dataLocationNames lists the commercial data locations, for messages.
func dataLocationNames() string {
	var names []string
	for _, g := range allowlist.DataLocations() {
		names = append(names, g.String())
	}
	return strings.Join(names, ",")
}

// Addr is the first proxy listener's address.
func (g *Gateway) Addr() net.Addr { return g.lns[0].Addr() }

// Addrs are the proxy listeners' addresses, in GATEWAY_LISTEN's order.
func (g *Gateway) Addrs() []net.Addr { return addrs(g.lns) }

func addrs(lns []net.Listener) []net.Addr {
	var as []net.Addr
	for _, ln := range lns {
		as = append(as, ln.Addr())
	}
	return as
}

func joinAddrs(lns []net.Listener) string {
	var as []string
	for _, ln := range lns {
		as = append(as, ln.Addr().String())
	}
	return strings.Join(as, ",")
}

// proxyHeader applies GATEWAY_PROXY_PROTOCOL to a listener (itself when
// off): under the connection limits, so that they count the client the
// header names, not the load balancer.
func (g *Gateway) proxyHeader(ln net.Listener) net.Listener {
	return proxyheader.Listen(ln, proxyheader.Options{
		Mode: g.cfg.ProxyProtocol, From: g.cfg.ProxyProtocolSources(), Timeout: g.cfg.ReadHeaderTimeout,
		OnReject: func(err error, peer netip.AddrPort) {
			kind := "bad_header"
			switch {
			case errors.Is(err, proxyheader.ErrUntrusted):
				kind = "untrusted"
			case errors.Is(err, proxyheader.ErrNoHeader):
				kind = "no_header"
			}
			g.metrics.ProxyHeaderRejected(kind)
			g.log.Debug("connection closed for its PROXY protocol header", "peer", peer.String(), "error", err.Error())
		},
	})
}

// TransparentAddrs are the transparent listeners' addresses.
func (g *Gateway) TransparentAddrs() []net.Addr { return addrs(g.transparentLns) }

// AdminAddr is the admin listener's address, or nil when it is off.
func (g *Gateway) AdminAddr() net.Addr {
	if g.adminLn == nil {
		return nil
	}
	return g.adminLn.Addr()
}

// Policy is the allowlist in force.
func (g *Gateway) Policy() *allowlist.Policy { return g.policy.Load() }
