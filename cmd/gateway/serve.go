package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/defendergw/gateway/internal/allowlist"
	"github.com/defendergw/gateway/internal/auth"
	"github.com/defendergw/gateway/internal/proxy"
	"github.com/defendergw/gateway/internal/resolver"
	"github.com/defendergw/gateway/internal/tlsbypass"
)

func serve(stderr io.Writer) int {
	cfg, unknown, err := loadConfig(environMap())
	if err != nil {
		fmt.Fprintf(stderr, "gateway: configuration: %v\n", err)
		return 2
	}
	logger := cfg.newLogger(os.Stderr)
	for _, k := range unknown {
		logger.Warn("unknown setting ignored (typo?)", "variable", k)
	}
	if err := runServer(context.Background(), cfg, logger, nil); err != nil {
		logger.Error("gateway stopped", "error", err.Error())
		fmt.Fprintf(stderr, "gateway: %v\n", err)
		return 1
	}
	return 0
}

// runServer runs the gateway until ctx ends or SIGINT/SIGTERM arrives.
// ready, if non-nil, receives the proxy's listening address.
func runServer(ctx context.Context, cfg *Config, logger *slog.Logger, ready chan<- net.Addr) error {
	policy, err := cfg.buildPolicy()
	if err != nil {
		return err
	}
	if policy.AllGeographies() {
		logger.Warn("GATEWAY_GEOGRAPHIES is not set: the rows of every data location (US, EU, UK, AU, UAE) are allowed; set it to your tenant's data location, e.g. GATEWAY_GEOGRAPHIES=EU")
	}
	servers := cfg.DNSServers
	if len(servers) == 0 {
		if servers, err = resolver.ServersFromResolvConf("/etc/resolv.conf"); err != nil {
			return fmt.Errorf("GATEWAY_DNS_SERVERS is not set and /etc/resolv.conf is unusable: %w", err)
		}
	}
	res, err := resolver.New(resolver.Options{
		Servers: servers, Timeout: cfg.DNSTimeout, MinTTL: cfg.DNSMinTTL, MaxTTL: cfg.DNSMaxTTL,
		NegativeTTL: cfg.DNSNegativeTTL, CacheSize: cfg.DNSCacheSize,
	})
	if err != nil {
		return fmt.Errorf("GATEWAY_DNS_SERVERS: %w", err)
	}
	upstreamTLS, err := cfg.upstreamTLS()
	if err != nil {
		return err
	}
	minter, err := cfg.inspector()
	if err != nil {
		return err
	}
	var inspector proxy.Inspector
	if minter != nil {
		inspector = minter
	}
	authn, err := cfg.authenticator()
	if err != nil {
		return err
	}
	var authenticator proxy.Authenticator
	if authn != nil {
		authenticator = authn
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go authn.Watch(wctx, cfg.AuthReloadInterval,
			func() { logger.Info("htpasswd reloaded", "file", cfg.AuthHtpasswd, "users", authn.Users()) },
			func(err error) {
				logger.Error("htpasswd reload failed; keeping the previous users", "error", err.Error())
			})
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("GATEWAY_LISTEN: %w", err)
	}
	defer ln.Close()
	self, err := netip.ParseAddrPort(ln.Addr().String())
	if err != nil {
		return fmt.Errorf("listener address: %w", err)
	}
	var current atomic.Pointer[allowlist.Policy]
	current.Store(policy)
	srv, err := proxy.New(proxy.Options{
		Policy: current.Load,
		Dialer: &resolver.Dialer{
			Resolver: res,
			Policy:   &resolver.Policy{AllowPrivate: cfg.allowPrivate, Self: []netip.AddrPort{self}},
			Timeout:  cfg.DialTimeout,
		},
		Logger:                logger,
		DialTimeout:           cfg.DialTimeout + cfg.DNSTimeout,
		ResponseHeaderTimeout: cfg.ResponseHeaderTimeout,
		Tunnel:                tlsbypass.Options{IdleTimeout: cfg.IdleTimeout, HalfCloseTimeout: cfg.HalfCloseTimeout},
		ClientHelloTimeout:    cfg.ClientHelloTimeout,
		UpstreamTLS:           upstreamTLS,
		Inspector:             inspector,
		ClientNetworks:        cfg.clientNets,
		Auth:                  authenticator,
		Challenge:             auth.Challenge(cfg.AuthRealm),
	})
	if err != nil {
		return err
	}
	defer srv.Close()
	hs := &http.Server{
		Handler:           srv,
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		IdleTimeout:       cfg.ClientIdleTimeout,
		MaxHeaderBytes:    cfg.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelDebug),
	}
	var geos []string
	for _, g := range policy.Geographies() {
		geos = append(geos, g.String())
	}
	logger.Info("gateway listening", "listen", ln.Addr().String(), "version", buildVersion(),
		"catalog_version", policy.Version(), "geographies", strings.Join(geos, ","),
		"rules", len(policy.Rules()), "dns_servers", strings.Join(servers, ","),
		"blob_scope", policy.BlobScope().String(), "inspection", minter != nil, "mode", cfg.Mode,
		"unlisted", cfg.Unlisted, "authentication", authn != nil)
	if ready != nil {
		ready <- ln.Addr()
	}

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	logger.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return nil
}
