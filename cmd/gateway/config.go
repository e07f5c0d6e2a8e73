package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/caarlos0/env/v11"

	"github.com/defendergw/gateway/internal/allowlist"
	"github.com/defendergw/gateway/internal/auth"
	"github.com/defendergw/gateway/internal/inspect"
)

const envPrefix = "GATEWAY_"

// Config is everything the gateway reads from the environment.
type Config struct {
	Listen                   string          `env:"LISTEN" envDefault:"127.0.0.1:3128"`
	Cloud                    allowlist.Cloud `env:"CLOUD" envDefault:"commercial"`
	Geographies              []string        `env:"GEOGRAPHIES" envSeparator:","`
	CatalogFile              string          `env:"CATALOG_FILE"`
	RulesFile                string          `env:"RULES_FILE"`
	DisabledServices         []string        `env:"DISABLED_SERVICES" envSeparator:","`
	DNSServers               []string        `env:"DNS_SERVERS" envSeparator:","`
	DNSTimeout               time.Duration   `env:"DNS_TIMEOUT" envDefault:"2s"`
	DNSMinTTL                time.Duration   `env:"DNS_MIN_TTL" envDefault:"5s"`
	DNSMaxTTL                time.Duration   `env:"DNS_MAX_TTL" envDefault:"5m"`
	DNSNegativeTTL           time.Duration   `env:"DNS_NEGATIVE_TTL" envDefault:"5s"`
	DNSCacheSize             int             `env:"DNS_CACHE_SIZE" envDefault:"10000"`
	AllowPrivateDestinations []string        `env:"ALLOW_PRIVATE_DESTINATIONS" envSeparator:","`
	ReadHeaderTimeout        time.Duration   `env:"READ_HEADER_TIMEOUT" envDefault:"10s"`
	DialTimeout              time.Duration   `env:"DIAL_TIMEOUT" envDefault:"10s"`
	ResponseHeaderTimeout    time.Duration   `env:"RESPONSE_HEADER_TIMEOUT" envDefault:"30s"`
	IdleTimeout              time.Duration   `env:"IDLE_TIMEOUT" envDefault:"15m"`
	// WriteTimeout 0 keeps the old behaviour: GATEWAY_IDLE_TIMEOUT.
	WriteTimeout          time.Duration `env:"WRITE_TIMEOUT" envDefault:"0s"`
	HalfCloseTimeout      time.Duration `env:"HALF_CLOSE_TIMEOUT" envDefault:"30s"`
	ClientIdleTimeout     time.Duration `env:"CLIENT_IDLE_TIMEOUT" envDefault:"2m"`
	MaxHeaderBytes        int           `env:"MAX_HEADER_BYTES" envDefault:"65536"`
	MaxConns              int           `env:"MAX_CONNS" envDefault:"10000"`
	MaxConnsPerClient     int           `env:"MAX_CONNS_PER_CLIENT" envDefault:"1000"`
	BlobScope             string        `env:"BLOB_SCOPE" envDefault:"listed"`
	ClientHelloTimeout    time.Duration `env:"CLIENT_HELLO_TIMEOUT" envDefault:"10s"`
	TunnelCopy            string        `env:"TUNNEL_COPY" envDefault:"splice"`
	TCPKeepAlive          time.Duration `env:"TCP_KEEPALIVE" envDefault:"30s"`
	InspectCACert         string        `env:"INSPECT_CA_CERT"`
	InspectCAKey          string        `env:"INSPECT_CA_KEY"`
	InspectLeafValidity   time.Duration `env:"INSPECT_LEAF_VALIDITY" envDefault:"24h"`
	InspectCacheSize      int           `env:"INSPECT_CACHE_SIZE" envDefault:"1024"`
	UpstreamCAFile        string        `env:"UPSTREAM_CA_FILE"`
	ClientCIDRs           []string      `env:"CLIENT_CIDRS" envSeparator:"," envDefault:"127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7"`
	AuthHtpasswd          string        `env:"AUTH_HTPASSWD"`
	AuthRealm             string        `env:"AUTH_REALM" envDefault:"Defender egress gateway"`
	AuthReloadInterval    time.Duration `env:"AUTH_RELOAD_INTERVAL" envDefault:"5s"`
	AuthFailuresPerMinute float64       `env:"AUTH_FAILURES_PER_MINUTE" envDefault:"10"`
	Unlisted              string        `env:"UNLISTED" envDefault:"deny"`
	UnlistedPorts         []string      `env:"UNLISTED_PORTS" envSeparator:"," envDefault:"80,443"`
	Mode                  string        `env:"MODE" envDefault:"enforce"`
	Anonymous             string        `env:"ANONYMOUS" envDefault:"listed"`
	PublicAddr            string        `env:"PUBLIC_ADDR"`
	PACDefault            string        `env:"PAC_DEFAULT" envDefault:"DIRECT"`
	// AdminListen's default port sits next to the proxy's 3128 and away from
	// Prometheus's own 9090 and its exporters' 9100-9999 (fully allocated:
	// https://github.com/prometheus/prometheus/wiki/Default-port-allocations),
	// and from Squid's 3129 (intercept) and 3130 (ICP).
	AdminListen      string        `env:"ADMIN_LISTEN" envDefault:"127.0.0.1:3138"`
	AccessLog        string        `env:"ACCESS_LOG" envDefault:"stdout"`
	AccessLogFormat  string        `env:"ACCESS_LOG_FORMAT" envDefault:"json"`
	DNSProbeInterval time.Duration `env:"DNS_PROBE_INTERVAL" envDefault:"10s"`
	ReloadInterval   time.Duration `env:"RELOAD_INTERVAL" envDefault:"5s"`
	ShutdownGrace    time.Duration `env:"SHUTDOWN_GRACE" envDefault:"30s"`
	ShutdownDelay    time.Duration `env:"SHUTDOWN_DELAY" envDefault:"0s"`
	// UpstreamCheckInterval is off (0) by default: a gateway reaches out
	// on its own only when told to.
	UpstreamCheckInterval time.Duration `env:"UPSTREAM_CHECK_INTERVAL" envDefault:"0s"`
	LogFormat             string        `env:"LOG_FORMAT" envDefault:"json"`
	LogLevel              string        `env:"LOG_LEVEL" envDefault:"info"`
	Pprof                 bool          `env:"PPROF" envDefault:"false"`

	// Derived by validate.
	clientNets    []netip.Prefix
	unlistedPorts []uint16
	blobScope     allowlist.BlobScope
	geos          []allowlist.Geography
	allowPrivate  []netip.Prefix
	logLevel      slog.Level
}

// loadConfig parses and validates the environment. Errors name the variable.
func loadConfig(environ map[string]string) (*Config, []string, error) {
	var c Config
	opts := env.Options{Prefix: envPrefix, Environment: environ}
	if err := env.ParseWithOptions(&c, opts); err != nil {
		return nil, nil, envError(err)
	}
	if err := c.validate(); err != nil {
		return nil, nil, err
	}
	return &c, unknownVars(environ), nil
}

// envError rewrites caarlos0/env's field names into variable names.
func envError(err error) error {
	var agg env.AggregateError
	if !errors.As(err, &agg) {
		return err
	}
	var msgs []string
	for _, e := range agg.Errors {
		var pe env.ParseError
		if errors.As(e, &pe) {
			msgs = append(msgs, fmt.Sprintf("%s: %v", varName(pe.Name), pe.Err))
			continue
		}
		msgs = append(msgs, e.Error())
	}
	return errors.New(strings.Join(msgs, "; "))
}

func varName(field string) string {
	f, ok := reflect.TypeFor[Config]().FieldByName(field)
	if !ok {
		return field
	}
	return envPrefix + f.Tag.Get("env")
}

// knownVars lists every GATEWAY_ variable the Config reads.
func knownVars() []string {
	t := reflect.TypeFor[Config]()
	var names []string
	for i := range t.NumField() {
		if tag := t.Field(i).Tag.Get("env"); tag != "" {
			names = append(names, envPrefix+tag)
		}
	}
	return names
}

// unknownVars returns GATEWAY_ variables that no setting reads: usually a
// typo (GATEWAY_GEOGRAPHY=EU would otherwise leave every geography open).
func unknownVars(environ map[string]string) []string {
	known := knownVars()
	var unknown []string
	for k := range environ {
		if strings.HasPrefix(k, envPrefix) && !slices.Contains(known, k) {
			unknown = append(unknown, k)
		}
	}
	slices.Sort(unknown)
	return unknown
}

func (c *Config) validate() error {
	var err error
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return fmt.Errorf("GATEWAY_LISTEN: %q is not host:port: %v", c.Listen, err)
	}
	for _, g := range c.Geographies {
		if g = strings.TrimSpace(g); g == "" {
			continue
		}
		geo, err := allowlist.ParseDataLocation(g)
		if err != nil {
			return fmt.Errorf("GATEWAY_GEOGRAPHIES: %v", err)
		}
		if !slices.Contains(c.geos, geo) {
			c.geos = append(c.geos, geo)
		}
	}
	if c.Cloud.Government() && len(c.geos) > 0 {
		// Microsoft's government lists have no data locations: the cloud
		// decides (standard-device-connectivity-urls-gov).
		return fmt.Errorf("GATEWAY_GEOGRAPHIES=%s cannot be combined with GATEWAY_CLOUD=%s: a US Government cloud has no commercial data locations; unset GATEWAY_GEOGRAPHIES",
			strings.Join(trimList(c.Geographies), ","), c.Cloud)
	}
	c.DisabledServices = trimList(c.DisabledServices)
	if c.allowPrivate, err = parsePrefixes(trimList(c.AllowPrivateDestinations)); err != nil {
		return fmt.Errorf("GATEWAY_ALLOW_PRIVATE_DESTINATIONS: %v", err)
	}
	var servers []string
	for _, s := range trimList(c.DNSServers) {
		if _, _, err := net.SplitHostPort(s); err != nil {
			s = net.JoinHostPort(strings.Trim(s, "[]"), "53")
		}
		host, _, _ := net.SplitHostPort(s)
		if _, err := netip.ParseAddr(host); err != nil {
			return fmt.Errorf("GATEWAY_DNS_SERVERS: %q is not an IP address with an optional port", s)
		}
		servers = append(servers, s)
	}
	c.DNSServers = servers
	for name, d := range map[string]time.Duration{
		"GATEWAY_DNS_TIMEOUT": c.DNSTimeout, "GATEWAY_READ_HEADER_TIMEOUT": c.ReadHeaderTimeout,
		"GATEWAY_DIAL_TIMEOUT": c.DialTimeout, "GATEWAY_RESPONSE_HEADER_TIMEOUT": c.ResponseHeaderTimeout,
		"GATEWAY_HALF_CLOSE_TIMEOUT": c.HalfCloseTimeout, "GATEWAY_CLIENT_IDLE_TIMEOUT": c.ClientIdleTimeout,
		"GATEWAY_DNS_MIN_TTL": c.DNSMinTTL, "GATEWAY_DNS_MAX_TTL": c.DNSMaxTTL, "GATEWAY_DNS_NEGATIVE_TTL": c.DNSNegativeTTL,
	} {
		if d <= 0 {
			return fmt.Errorf("%s: must be a positive duration, got %s", name, d)
		}
	}
	if c.WriteTimeout < 0 {
		return fmt.Errorf("GATEWAY_WRITE_TIMEOUT: must not be negative (0: as GATEWAY_IDLE_TIMEOUT), got %s", c.WriteTimeout)
	}
	if c.IdleTimeout < 0 {
		return fmt.Errorf("GATEWAY_IDLE_TIMEOUT: must not be negative (0 disables it), got %s", c.IdleTimeout)
	}
	if c.DNSMinTTL > c.DNSMaxTTL {
		return fmt.Errorf("GATEWAY_DNS_MIN_TTL (%s) must not exceed GATEWAY_DNS_MAX_TTL (%s)", c.DNSMinTTL, c.DNSMaxTTL)
	}
	if c.DNSCacheSize <= 0 {
		return fmt.Errorf("GATEWAY_DNS_CACHE_SIZE: must be positive, got %d", c.DNSCacheSize)
	}
	if c.MaxConns < 0 {
		return fmt.Errorf("GATEWAY_MAX_CONNS: must not be negative (0 means no limit), got %d", c.MaxConns)
	}
	if c.MaxConnsPerClient < 0 {
		return fmt.Errorf("GATEWAY_MAX_CONNS_PER_CLIENT: must not be negative (0 means no limit), got %d", c.MaxConnsPerClient)
	}
	if c.MaxHeaderBytes < 4096 || c.MaxHeaderBytes > 1<<20 {
		return fmt.Errorf("GATEWAY_MAX_HEADER_BYTES: must be between 4096 and 1048576, got %d", c.MaxHeaderBytes)
	}
	if c.blobScope, err = allowlist.ParseBlobScope(c.BlobScope); err != nil {
		return fmt.Errorf("GATEWAY_BLOB_SCOPE: %v", err)
	}
	switch c.TunnelCopy {
	case "buffer", "splice":
	default:
		return fmt.Errorf("GATEWAY_TUNNEL_COPY: must be buffer or splice, got %q", c.TunnelCopy)
	}
	// Linux takes TCP_KEEPIDLE and TCP_KEEPINTVL in whole seconds, at most
	// 32767 (MAX_TCP_KEEPIDLE, tcp(7)).
	if c.TCPKeepAlive != 0 && (c.TCPKeepAlive < time.Second || c.TCPKeepAlive > 32767*time.Second) {
		return fmt.Errorf("GATEWAY_TCP_KEEPALIVE: must be 0 (off) or between 1s and 9h6m7s, got %s", c.TCPKeepAlive)
	}
	if c.ClientHelloTimeout <= 0 {
		return fmt.Errorf("GATEWAY_CLIENT_HELLO_TIMEOUT: must be a positive duration, got %s", c.ClientHelloTimeout)
	}
	if (c.InspectCACert == "") != (c.InspectCAKey == "") {
		return errors.New("GATEWAY_INSPECT_CA_CERT and GATEWAY_INSPECT_CA_KEY must be set together")
	}
	if c.InspectLeafValidity < time.Hour || c.InspectLeafValidity > 90*24*time.Hour {
		return fmt.Errorf("GATEWAY_INSPECT_LEAF_VALIDITY: must be between 1h and 2160h, got %s", c.InspectLeafValidity)
	}
	if c.InspectCacheSize <= 0 {
		return fmt.Errorf("GATEWAY_INSPECT_CACHE_SIZE: must be positive, got %d", c.InspectCacheSize)
	}
	if c.clientNets, err = parsePrefixes(trimList(c.ClientCIDRs)); err != nil {
		return fmt.Errorf("GATEWAY_CLIENT_CIDRS: %v", err)
	}
	if len(c.clientNets) == 0 {
		return errors.New("GATEWAY_CLIENT_CIDRS: empty: no client could use the gateway")
	}
	switch c.Unlisted {
	case "deny":
	case "authenticated":
		if c.AuthHtpasswd == "" {
			return errors.New("GATEWAY_UNLISTED=authenticated needs GATEWAY_AUTH_HTPASSWD: unlisted destinations are only for authenticated users")
		}
	default:
		return fmt.Errorf("GATEWAY_UNLISTED: want deny or authenticated, got %q", c.Unlisted)
	}
	for _, p := range trimList(c.UnlistedPorts) {
		port, err := allowlist.ParsePort(p)
		if err != nil {
			return fmt.Errorf("GATEWAY_UNLISTED_PORTS: %q is not a port", p)
		}
		c.unlistedPorts = append(c.unlistedPorts, port)
	}
	switch c.Mode {
	case "enforce", "audit":
	default:
		return fmt.Errorf("GATEWAY_MODE: want enforce or audit, got %q", c.Mode)
	}
	if c.PublicAddr != "" {
		if _, _, err := net.SplitHostPort(c.PublicAddr); err != nil {
			return fmt.Errorf("GATEWAY_PUBLIC_ADDR: %q is not host:port", c.PublicAddr)
		}
	}
	switch strings.ToUpper(c.PACDefault) {
	case "DIRECT", "PROXY":
	default:
		return fmt.Errorf("GATEWAY_PAC_DEFAULT: want DIRECT or PROXY, got %q", c.PACDefault)
	}
	switch c.Anonymous {
	case "listed", "none":
	default:
		return fmt.Errorf("GATEWAY_ANONYMOUS: want listed or none, got %q", c.Anonymous)
	}
	if c.AuthReloadInterval <= 0 {
		return fmt.Errorf("GATEWAY_AUTH_RELOAD_INTERVAL: must be a positive duration, got %s", c.AuthReloadInterval)
	}
	if c.AuthFailuresPerMinute <= 0 {
		return fmt.Errorf("GATEWAY_AUTH_FAILURES_PER_MINUTE: must be positive, got %v", c.AuthFailuresPerMinute)
	}
	if strings.ContainsAny(c.AuthRealm, "\r\n") {
		return errors.New("GATEWAY_AUTH_REALM: must be one line")
	}
	if c.AdminListen != "off" {
		if _, _, err := net.SplitHostPort(c.AdminListen); err != nil {
			return fmt.Errorf("GATEWAY_ADMIN_LISTEN: %q is not host:port (or off): %v", c.AdminListen, err)
		}
	}
	switch c.AccessLogFormat {
	case "json", "squid":
	default:
		return fmt.Errorf("GATEWAY_ACCESS_LOG_FORMAT: want json or squid, got %q", c.AccessLogFormat)
	}
	for name, d := range map[string]time.Duration{"GATEWAY_DNS_PROBE_INTERVAL": c.DNSProbeInterval,
		"GATEWAY_RELOAD_INTERVAL": c.ReloadInterval, "GATEWAY_SHUTDOWN_GRACE": c.ShutdownGrace} {
		if d <= 0 {
			return fmt.Errorf("%s: must be a positive duration, got %s", name, d)
		}
	}
	if d := c.UpstreamCheckInterval; d != 0 && d < minUpstreamCheckInterval {
		return fmt.Errorf("GATEWAY_UPSTREAM_CHECK_INTERVAL: want 0 (off) or at least %s, got %s", minUpstreamCheckInterval, d)
	}
	if c.ShutdownDelay < 0 {
		return fmt.Errorf("GATEWAY_SHUTDOWN_DELAY: must not be negative, got %s", c.ShutdownDelay)
	}
	switch c.LogFormat {
	case "json", "text":
	default:
		return fmt.Errorf("GATEWAY_LOG_FORMAT: want json or text, got %q", c.LogFormat)
	}
	if err := c.logLevel.UnmarshalText([]byte(c.LogLevel)); err != nil {
		return fmt.Errorf("GATEWAY_LOG_LEVEL: want debug, info, warn or error, got %q", c.LogLevel)
	}
	return nil
}

// parsePrefixes parses CIDR prefixes or single addresses.
func parsePrefixes(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range list {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return nil, fmt.Errorf("%q is not a CIDR prefix or address", s)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		if p.Masked() != p {
			return nil, fmt.Errorf("%q has host bits set (did you mean %s?)", s, p.Masked())
		}
		out = append(out, p)
	}
	return out, nil
}

func trimList(in []string) []string {
	var out []string
	for _, s := range in {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// Where the catalog in force comes from (gateway_catalog_info{source}).
const (
	catalogEmbedded = "embedded"
	catalogFromFile = "file"
)

// catalogOrigin says where the catalog in force comes from.
func (c *Config) catalogOrigin() string {
	if c.CatalogFile != "" {
		return catalogFromFile
	}
	return catalogEmbedded
}

// loadCatalog returns the catalog in force: GATEWAY_CATALOG_FILE if set,
// else the embedded one, and where it came from. A bad file is an error
// naming the setting, the file and the line.
func (c *Config) loadCatalog() (*allowlist.Catalog, string, error) {
	if c.catalogOrigin() == catalogEmbedded {
		cat, err := allowlist.Embedded()
		return cat, catalogEmbedded, err
	}
	data, err := os.ReadFile(c.CatalogFile)
	if err != nil {
		return nil, "", fmt.Errorf("GATEWAY_CATALOG_FILE: %w", err)
	}
	cat, err := allowlist.ParseCatalog(data, c.CatalogFile)
	if err != nil {
		return nil, "", fmt.Errorf("GATEWAY_CATALOG_FILE: %w", err)
	}
	return cat, catalogFromFile, nil
}

// buildPolicy reads the catalog in force and the rules file (if any) and
// builds the effective policy.
func (c *Config) buildPolicy() (*allowlist.Policy, error) {
	p, _, err := c.buildPolicyFrom()
	return p, err
}

// buildPolicyFrom is buildPolicy that also says where the catalog came from.
func (c *Config) buildPolicyFrom() (*allowlist.Policy, string, error) {
	cat, origin, err := c.loadCatalog()
	if err != nil {
		return nil, "", err
	}
	opts := allowlist.Options{Cloud: c.Cloud, Geographies: c.geos, DisabledServices: c.DisabledServices, BlobScope: c.blobScope,
		Audit: c.Mode == "audit", UnlistedAuthenticated: c.Unlisted == "authenticated", UnlistedPorts: c.unlistedPorts}
	if c.RulesFile != "" {
		data, err := os.ReadFile(c.RulesFile)
		if err != nil {
			return nil, "", fmt.Errorf("GATEWAY_RULES_FILE: %w", err)
		}
		rs, err := allowlist.ParseRules(data, c.RulesFile)
		if err != nil {
			return nil, "", fmt.Errorf("GATEWAY_RULES_FILE: %w", err)
		}
		// Kept apart from GATEWAY_DISABLED_SERVICES, so that a refusal
		// names the setting that switched the service off.
		opts.Rules, opts.RulesDisabledServices = rs.Rules, rs.DisabledServices
	}
	p, err := allowlist.NewPolicy(cat, opts)
	switch {
	case err != nil && strings.HasPrefix(err.Error(), "disable_services in the rules file"):
		return nil, "", fmt.Errorf("GATEWAY_RULES_FILE %s: %w", c.RulesFile, err)
	case err != nil:
		return nil, "", fmt.Errorf("GATEWAY_DISABLED_SERVICES: %w", err)
	}
	return p, origin, nil
}

// upstreamTLS is the TLS client configuration towards upstreams the gateway
// itself speaks TLS to (inspected tunnels): the system roots plus
// GATEWAY_UPSTREAM_CA_FILE, and never InsecureSkipVerify.
func (c *Config) upstreamTLS() (*tls.Config, error) {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if c.UpstreamCAFile != "" {
		pem, err := os.ReadFile(c.UpstreamCAFile)
		if err != nil {
			return nil, fmt.Errorf("GATEWAY_UPSTREAM_CA_FILE: %w", err)
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("GATEWAY_UPSTREAM_CA_FILE: %s holds no PEM certificate", c.UpstreamCAFile)
		}
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

// authenticator loads the htpasswd file, if one is configured.
func (c *Config) authenticator() (*auth.Authenticator, error) {
	if c.AuthHtpasswd == "" {
		return nil, nil
	}
	a, err := auth.New(auth.Options{File: c.AuthHtpasswd, FailuresPerMinute: c.AuthFailuresPerMinute})
	if err != nil {
		return nil, fmt.Errorf("GATEWAY_AUTH_HTPASSWD: %w", err)
	}
	return a, nil
}

// inspector loads the inspection CA, if one is configured.
func (c *Config) inspector() (*inspect.Minter, error) {
	if c.InspectCACert == "" {
		return nil, nil
	}
	cert, key, err := inspect.LoadCA(c.InspectCACert, c.InspectCAKey)
	if err != nil {
		return nil, fmt.Errorf("GATEWAY_INSPECT_CA_CERT/GATEWAY_INSPECT_CA_KEY: %w", err)
	}
	return inspect.NewMinter(cert, key, inspect.MinterOptions{Validity: c.InspectLeafValidity, CacheSize: c.InspectCacheSize})
}

func (c *Config) newLogger(w *os.File) *slog.Logger {
	hopts := &slog.HandlerOptions{Level: c.logLevel}
	if c.LogFormat == "text" {
		return slog.New(slog.NewTextHandler(w, hopts))
	}
	return slog.New(slog.NewJSONHandler(w, hopts))
}

func environMap() map[string]string {
	m := map[string]string{}
	for _, kv := range os.Environ() {
		if k, v, ok := strings.Cut(kv, "="); ok {
			m[k] = v
		}
	}
	return m
}

// minUpstreamCheckInterval keeps the upstream check from hammering
// Microsoft's endpoints (each run requests every required URL).
const minUpstreamCheckInterval = 10 * time.Second
