package config

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/caarlos0/env/v11"

	"github.com/defendergw/gateway/internal/allowlist"
	"github.com/defendergw/gateway/internal/auth"
	"github.com/defendergw/gateway/internal/inspect"
	"github.com/defendergw/gateway/internal/proxyheader"
)

const EnvPrefix = "GATEWAY_"

// Config is everything the gateway reads from the environment.
type Config struct {
	Listen                   []string        `env:"LISTEN" envSeparator:"," envDefault:"127.0.0.1:3128"`
	Cloud                    allowlist.Cloud `env:"CLOUD" envDefault:"commercial"`
	Geographies              []dataLocation  `env:"GEOGRAPHIES" envSeparator:","`
	CatalogFile              string          `env:"CATALOG_FILE"`
	RulesFile                string          `env:"RULES_FILE"`
	DisabledServices         []string        `env:"DISABLED_SERVICES" envSeparator:","`
	DNSServers               []string        `env:"DNS_SERVERS" envSeparator:","`
	DNSTimeout               time.Duration   `env:"DNS_TIMEOUT" envDefault:"2s"`
	DNSMinTTL                time.Duration   `env:"DNS_MIN_TTL" envDefault:"5s"`
	DNSMaxTTL                time.Duration   `env:"DNS_MAX_TTL" envDefault:"5m"`
	DNSNegativeTTL           time.Duration   `env:"DNS_NEGATIVE_TTL" envDefault:"5s"`
	DNSCacheSize             int             `env:"DNS_CACHE_SIZE" envDefault:"10000"`
	AllowPrivateDestinations []prefix        `env:"ALLOW_PRIVATE_DESTINATIONS" envSeparator:","`
	ReadHeaderTimeout        time.Duration   `env:"READ_HEADER_TIMEOUT" envDefault:"10s"`
	DialTimeout              time.Duration   `env:"DIAL_TIMEOUT" envDefault:"10s"`
	ResponseHeaderTimeout    time.Duration   `env:"RESPONSE_HEADER_TIMEOUT" envDefault:"30s"`
	IdleTimeout              time.Duration   `env:"IDLE_TIMEOUT" envDefault:"15m"`
	// WriteTimeout 0 keeps the old behaviour: GATEWAY_IDLE_TIMEOUT.
	WriteTimeout          time.Duration    `env:"WRITE_TIMEOUT" envDefault:"0s"`
	HalfCloseTimeout      time.Duration    `env:"HALF_CLOSE_TIMEOUT" envDefault:"30s"`
	ClientIdleTimeout     time.Duration    `env:"CLIENT_IDLE_TIMEOUT" envDefault:"2m"`
	MaxHeaderBytes        int              `env:"MAX_HEADER_BYTES" envDefault:"65536"`
	MaxConns              int              `env:"MAX_CONNS" envDefault:"10000"`
	MaxConnsPerClient     int              `env:"MAX_CONNS_PER_CLIENT" envDefault:"1000"`
	BlobScope             blobScope        `env:"BLOB_SCOPE" envDefault:"listed"`
	ClientHelloTimeout    time.Duration    `env:"CLIENT_HELLO_TIMEOUT" envDefault:"10s"`
	TunnelCopy            tunnelCopy       `env:"TUNNEL_COPY" envDefault:"splice"`
	TCPKeepAlive          time.Duration    `env:"TCP_KEEPALIVE" envDefault:"30s"`
	InspectCACert         string           `env:"INSPECT_CA_CERT"`
	InspectCAKey          string           `env:"INSPECT_CA_KEY"`
	InspectLeafValidity   time.Duration    `env:"INSPECT_LEAF_VALIDITY" envDefault:"24h"`
	InspectCacheSize      int              `env:"INSPECT_CACHE_SIZE" envDefault:"1024"`
	UpstreamCAFile        string           `env:"UPSTREAM_CA_FILE"`
	ParentProxy           []parentURL      `env:"PARENT_PROXY" envSeparator:","`
	ParentBypass          []hostPattern    `env:"PARENT_BYPASS" envSeparator:","`
	ParentRetry           time.Duration    `env:"PARENT_RETRY" envDefault:"30s"`
	ParentTarget          parentTarget     `env:"PARENT_TARGET" envDefault:"address"`
	ClientCIDRs           []prefix         `env:"CLIENT_CIDRS" envSeparator:"," envDefault:"127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7"`
	AuthHtpasswd          string           `env:"AUTH_HTPASSWD"`
	AuthRealm             string           `env:"AUTH_REALM" envDefault:"Defender egress gateway"`
	AuthReloadInterval    time.Duration    `env:"AUTH_RELOAD_INTERVAL" envDefault:"5s"`
	AuthFailuresPerMinute float64          `env:"AUTH_FAILURES_PER_MINUTE" envDefault:"10"`
	Unlisted              unlistedSetting  `env:"UNLISTED" envDefault:"deny"`
	UnlistedPorts         []port           `env:"UNLISTED_PORTS" envSeparator:"," envDefault:"80,443"`
	Mode                  modeSetting      `env:"MODE" envDefault:"enforce"`
	Anonymous             anonymousSetting `env:"ANONYMOUS" envDefault:"listed"`
	PublicAddr            string           `env:"PUBLIC_ADDR"`
	PACDefault            pacDefault       `env:"PAC_DEFAULT" envDefault:"DIRECT"`
	// AdminListen's default port sits next to the proxy's 3128 and away from
	// Prometheus's own 9090 and its exporters' 9100-9999 (fully allocated:
	// https://github.com/prometheus/prometheus/wiki/Default-port-allocations),
	// and from Squid's 3129 (intercept) and 3130 (ICP).
	AdminListen string `env:"ADMIN_LISTEN" envDefault:"127.0.0.1:3138"`
	// TransparentListen is off (empty) by default: intercepting needs
	// netfilter rules the operator writes.
	TransparentListen []string `env:"TRANSPARENT_LISTEN" envSeparator:","`
	// TransparentStrictDestination is off by default: endpoints and the
	// gateway often get different answers for Microsoft's load-balanced
	// names, and the gateway dials only addresses it resolved itself.
	TransparentStrictDestination bool `env:"TRANSPARENT_STRICT_DESTINATION" envDefault:"false"`
	// TransparentTProxy takes connections from TPROXY rules instead of
	// REDIRECT ones; off by default since it needs CAP_NET_ADMIN.
	TransparentTProxy bool `env:"TRANSPARENT_TPROXY" envDefault:"false"`
	// ProxyProtocol is off by default: a header is believed only where
	// the operator says which load balancers send it.
	ProxyProtocol     proxyheader.Mode `env:"PROXY_PROTOCOL" envDefault:"off"`
	ProxyProtocolFrom []prefix         `env:"PROXY_PROTOCOL_FROM" envSeparator:","`
	AccessLog         string           `env:"ACCESS_LOG" envDefault:"stdout"`
	AccessLogFormat   eventFormat      `env:"ACCESS_LOG_FORMAT" envDefault:"json"`
	DNSProbeInterval  time.Duration    `env:"DNS_PROBE_INTERVAL" envDefault:"10s"`
	ReloadInterval    time.Duration    `env:"RELOAD_INTERVAL" envDefault:"5s"`
	ShutdownGrace     time.Duration    `env:"SHUTDOWN_GRACE" envDefault:"30s"`
	ShutdownDelay     time.Duration    `env:"SHUTDOWN_DELAY" envDefault:"0s"`
	// UpstreamCheckInterval is off (0) by default: a gateway reaches out
	// on its own only when told to.
	UpstreamCheckInterval time.Duration `env:"UPSTREAM_CHECK_INTERVAL" envDefault:"0s"`
	LogFormat             logFormat     `env:"LOG_FORMAT" envDefault:"json"`
	LogLevel              logLevel      `env:"LOG_LEVEL" envDefault:"info"`
	Pprof                 bool          `env:"PPROF" envDefault:"false"`
}

// Load parses and validates the environment. Errors name the variable.
func Load(environ map[string]string) (*Config, []string, error) {
	var c Config
	opts := env.Options{Prefix: EnvPrefix, Environment: environ}
	if err := env.ParseWithOptions(&c, opts); err != nil {
		return nil, nil, envError(err)
	}
	if err := c.validate(); err != nil {
		return nil, nil, err
	}
	return &c, UnknownVars(environ), nil
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
			msgs = append(msgs, fmt.Sprintf("%s: %v", VarName(pe.Name), pe.Err))
			continue
		}
		msgs = append(msgs, e.Error())
	}
	return errors.New(strings.Join(msgs, "; "))
}

func VarName(field string) string {
	f, ok := reflect.TypeFor[Config]().FieldByName(field)
	if !ok {
		return field
	}
	return EnvPrefix + f.Tag.Get("env")
}

// KnownVars lists every GATEWAY_ variable the Config reads.
func KnownVars() []string {
	t := reflect.TypeFor[Config]()
	var names []string
	for i := range t.NumField() {
		if tag := t.Field(i).Tag.Get("env"); tag != "" {
			names = append(names, EnvPrefix+tag)
		}
	}
	return names
}

// UnknownVars returns GATEWAY_ variables that no setting reads: usually a
// typo (GATEWAY_GEOGRAPHY=EU would otherwise leave every geography open).
func UnknownVars(environ map[string]string) []string {
	known := KnownVars()
	var unknown []string
	for k := range environ {
		if strings.HasPrefix(k, EnvPrefix) && !slices.Contains(known, k) {
			unknown = append(unknown, k)
		}
	}
	slices.Sort(unknown)
	return unknown
}

// validate checks what the parser cannot see in one value: ranges, and
// settings that depend on each other. It also drops the empty elements of
// lists (compact). The first problem found is returned, naming the
// setting.
func (c *Config) validate() error {
	c.compact()
	for _, check := range []func() error{c.checkListeners, c.checkPolicy, c.checkDNS, c.checkTimeouts,
		c.checkLimits, c.checkTLS, c.checkAuth, c.checkParent} {
		if err := check(); err != nil {
			return err
		}
	}
	return nil
}

// compact drops empty list elements (a trailing comma, a blank between
// commas) and repeated data locations.
func (c *Config) compact() {
	var geos []dataLocation
	for _, g := range c.Geographies {
		if g.set && !slices.Contains(geos, g) {
			geos = append(geos, g)
		}
	}
	c.Geographies = geos
	c.ClientCIDRs = slices.DeleteFunc(c.ClientCIDRs, func(p prefix) bool { return !p.IsValid() })
	c.AllowPrivateDestinations = slices.DeleteFunc(c.AllowPrivateDestinations, func(p prefix) bool { return !p.IsValid() })
	c.UnlistedPorts = slices.DeleteFunc(c.UnlistedPorts, func(p port) bool { return p == 0 })
	c.DisabledServices = trimList(c.DisabledServices)
	c.DNSServers = trimList(c.DNSServers)
	c.TransparentListen = trimList(c.TransparentListen)
	c.Listen = trimList(c.Listen)
	c.ProxyProtocolFrom = slices.DeleteFunc(c.ProxyProtocolFrom, func(p prefix) bool { return !p.IsValid() })
	c.ParentProxy = slices.DeleteFunc(c.ParentProxy, func(p parentURL) bool { return p.u == nil })
	c.ParentBypass = slices.DeleteFunc(c.ParentBypass, func(h hostPattern) bool { return h == "" })
}

func (c *Config) checkListeners() error {
	if len(c.Listen) == 0 {
		return errors.New("GATEWAY_LISTEN: empty: the gateway needs a proxy listener")
	}
	for i, a := range c.Listen {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return fmt.Errorf("GATEWAY_LISTEN: %q is not host:port: %v", a, err)
		}
		if slices.Contains(c.Listen[:i], a) {
			return fmt.Errorf("GATEWAY_LISTEN: %q is listed twice", a)
		}
	}
	if c.AdminListen != "off" {
		if _, _, err := net.SplitHostPort(c.AdminListen); err != nil {
			return fmt.Errorf("GATEWAY_ADMIN_LISTEN: %q is not host:port (or off): %v", c.AdminListen, err)
		}
	}
	for i, a := range c.TransparentListen {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return fmt.Errorf("GATEWAY_TRANSPARENT_LISTEN: %q is not host:port: %v", a, err)
		}
		if slices.Contains(c.TransparentListen[:i], a) {
			return fmt.Errorf("GATEWAY_TRANSPARENT_LISTEN: %q is listed twice", a)
		}
	}
	switch {
	case c.ProxyProtocol != proxyheader.Off && len(c.ProxyProtocolFrom) == 0:
		return fmt.Errorf("GATEWAY_PROXY_PROTOCOL_FROM: empty, but GATEWAY_PROXY_PROTOCOL=%s: name the load balancers whose headers are believed (a header from anyone else would let any client choose its address)", c.ProxyProtocol)
	case c.ProxyProtocol == proxyheader.Off && len(c.ProxyProtocolFrom) > 0:
		return errors.New("GATEWAY_PROXY_PROTOCOL_FROM is set, but GATEWAY_PROXY_PROTOCOL is off")
	}
	if len(c.TransparentListen) == 0 {
		// Settings of a listener that is not there are a mistake, not a
		// no-op: say so instead of starting without interception.
		switch {
		case c.TransparentStrictDestination:
			return errors.New("GATEWAY_TRANSPARENT_STRICT_DESTINATION is set, but GATEWAY_TRANSPARENT_LISTEN names no listener")
		case c.TransparentTProxy:
			return errors.New("GATEWAY_TRANSPARENT_TPROXY is set, but GATEWAY_TRANSPARENT_LISTEN names no listener")
		}
	}
	if c.PublicAddr != "" {
		if _, _, err := net.SplitHostPort(c.PublicAddr); err != nil {
			return fmt.Errorf("GATEWAY_PUBLIC_ADDR: %q is not host:port", c.PublicAddr)
		}
	}
	if len(c.ClientCIDRs) == 0 {
		return errors.New("GATEWAY_CLIENT_CIDRS: empty: no client could use the gateway")
	}
	return nil
}

// checkPolicy checks the settings that shape the allowlist.
func (c *Config) checkPolicy() error {
	if c.Cloud.Government() && len(c.Geographies) > 0 {
		// Microsoft's government lists have no data locations: the cloud
		// decides (standard-device-connectivity-urls-gov).
		return fmt.Errorf("GATEWAY_GEOGRAPHIES=%s cannot be combined with GATEWAY_CLOUD=%s: a US Government cloud has no commercial data locations; unset GATEWAY_GEOGRAPHIES",
			geoNames(c.Locations()), c.Cloud)
	}
	if c.Unlisted == "authenticated" && c.AuthHtpasswd == "" {
		return errors.New("GATEWAY_UNLISTED=authenticated needs GATEWAY_AUTH_HTPASSWD: unlisted destinations are only for authenticated users")
	}
	return nil
}

func (c *Config) checkDNS() error {
	for i, s := range c.DNSServers {
		if _, _, err := net.SplitHostPort(s); err != nil {
			s = net.JoinHostPort(strings.Trim(s, "[]"), "53")
		}
		host, _, _ := net.SplitHostPort(s)
		if _, err := netip.ParseAddr(host); err != nil {
			return fmt.Errorf("GATEWAY_DNS_SERVERS: %q is not an IP address with an optional port", s)
		}
		c.DNSServers[i] = s
	}
	if c.DNSMinTTL > c.DNSMaxTTL {
		return fmt.Errorf("GATEWAY_DNS_MIN_TTL (%s) must not exceed GATEWAY_DNS_MAX_TTL (%s)", c.DNSMinTTL, c.DNSMaxTTL)
	}
	if c.DNSCacheSize <= 0 {
		return fmt.Errorf("GATEWAY_DNS_CACHE_SIZE: must be positive, got %d", c.DNSCacheSize)
	}
	return nil
}

func (c *Config) checkTimeouts() error {
	for _, d := range []struct {
		field string
		v     time.Duration
	}{{"DNSTimeout", c.DNSTimeout}, {"ReadHeaderTimeout", c.ReadHeaderTimeout}, {"DialTimeout", c.DialTimeout},
		{"ResponseHeaderTimeout", c.ResponseHeaderTimeout}, {"HalfCloseTimeout", c.HalfCloseTimeout},
		{"ClientIdleTimeout", c.ClientIdleTimeout}, {"DNSMinTTL", c.DNSMinTTL}, {"DNSMaxTTL", c.DNSMaxTTL},
		{"DNSNegativeTTL", c.DNSNegativeTTL}, {"ClientHelloTimeout", c.ClientHelloTimeout},
		{"AuthReloadInterval", c.AuthReloadInterval}, {"DNSProbeInterval", c.DNSProbeInterval},
		{"ReloadInterval", c.ReloadInterval}, {"ShutdownGrace", c.ShutdownGrace}, {"ParentRetry", c.ParentRetry}} {
		if d.v <= 0 {
			return fmt.Errorf("%s: must be a positive duration, got %s", VarName(d.field), d.v)
		}
	}
	if c.WriteTimeout < 0 {
		return fmt.Errorf("GATEWAY_WRITE_TIMEOUT: must not be negative (0: as GATEWAY_IDLE_TIMEOUT), got %s", c.WriteTimeout)
	}
	if c.IdleTimeout < 0 {
		return fmt.Errorf("GATEWAY_IDLE_TIMEOUT: must not be negative (0 disables it), got %s", c.IdleTimeout)
	}
	// Linux takes TCP_KEEPIDLE and TCP_KEEPINTVL in whole seconds, at most
	// 32767 (MAX_TCP_KEEPIDLE, tcp(7)).
	if c.TCPKeepAlive != 0 && (c.TCPKeepAlive < time.Second || c.TCPKeepAlive > 32767*time.Second) {
		return fmt.Errorf("GATEWAY_TCP_KEEPALIVE: must be 0 (off) or between 1s and 9h6m7s, got %s", c.TCPKeepAlive)
	}
	if d := c.UpstreamCheckInterval; d != 0 && d < MinUpstreamCheckInterval {
		return fmt.Errorf("GATEWAY_UPSTREAM_CHECK_INTERVAL: want 0 (off) or at least %s, got %s", MinUpstreamCheckInterval, d)
	}
	if c.ShutdownDelay < 0 {
		return fmt.Errorf("GATEWAY_SHUTDOWN_DELAY: must not be negative, got %s", c.ShutdownDelay)
	}
	return nil
}

func (c *Config) checkLimits() error {
	if c.MaxConns < 0 {
		return fmt.Errorf("GATEWAY_MAX_CONNS: must not be negative (0 means no limit), got %d", c.MaxConns)
	}
	if c.MaxConnsPerClient < 0 {
		return fmt.Errorf("GATEWAY_MAX_CONNS_PER_CLIENT: must not be negative (0 means no limit), got %d", c.MaxConnsPerClient)
	}
	if c.MaxHeaderBytes < 4096 || c.MaxHeaderBytes > 1<<20 {
		return fmt.Errorf("GATEWAY_MAX_HEADER_BYTES: must be between 4096 and 1048576, got %d", c.MaxHeaderBytes)
	}
	return nil
}

// checkTLS checks inspection's settings.
func (c *Config) checkTLS() error {
	if (c.InspectCACert == "") != (c.InspectCAKey == "") {
		return errors.New("GATEWAY_INSPECT_CA_CERT and GATEWAY_INSPECT_CA_KEY must be set together")
	}
	if c.InspectLeafValidity < time.Hour || c.InspectLeafValidity > 90*24*time.Hour {
		return fmt.Errorf("GATEWAY_INSPECT_LEAF_VALIDITY: must be between 1h and 2160h, got %s", c.InspectLeafValidity)
	}
	if c.InspectCacheSize <= 0 {
		return fmt.Errorf("GATEWAY_INSPECT_CACHE_SIZE: must be positive, got %d", c.InspectCacheSize)
	}
	return nil
}

func (c *Config) checkAuth() error {
	if c.AuthFailuresPerMinute <= 0 {
		return fmt.Errorf("GATEWAY_AUTH_FAILURES_PER_MINUTE: must be positive, got %v", c.AuthFailuresPerMinute)
	}
	if strings.ContainsAny(c.AuthRealm, "\r\n") {
		return errors.New("GATEWAY_AUTH_REALM: must be one line")
	}
	return nil
}

// checkParent checks the parent proxy settings.
func (c *Config) checkParent() error {
	seen := map[string]bool{}
	for _, p := range c.ParentProxy {
		if seen[p.u.Host] {
			return fmt.Errorf("GATEWAY_PARENT_PROXY: %s is listed twice", p.u.Host)
		}
		seen[p.u.Host] = true
	}
	if len(c.ParentBypass) > 0 && len(c.ParentProxy) == 0 {
		return errors.New("GATEWAY_PARENT_BYPASS needs GATEWAY_PARENT_PROXY: without a parent every destination goes direct")
	}
	return nil
}

// Parents returns the parent proxies of GATEWAY_PARENT_PROXY, in order,
// with their credentials; nil without any.
func (c *Config) Parents() []*url.URL {
	var us []*url.URL
	for _, p := range c.ParentProxy {
		u := *p.u
		us = append(us, &u)
	}
	return us
}

// ParentBypassList returns GATEWAY_PARENT_BYPASS's normalised patterns.
func (c *Config) ParentBypassList() []string {
	var out []string
	for _, h := range c.ParentBypass {
		out = append(out, string(h))
	}
	return out
}

// geographies returns the configured data locations.
func (c *Config) Locations() []allowlist.Geography {
	gs := make([]allowlist.Geography, len(c.Geographies))
	for i, g := range c.Geographies {
		gs[i] = g.Geography
	}
	return gs
}

// prefixes returns ps as netip.Prefix values.
func prefixes(ps []prefix) []netip.Prefix {
	out := make([]netip.Prefix, len(ps))
	for i, p := range ps {
		out[i] = p.Prefix
	}
	return out
}

// ports returns ps as uint16 values.
func ports(ps []port) []uint16 {
	out := make([]uint16, len(ps))
	for i, p := range ps {
		out[i] = uint16(p)
	}
	return out
}

func geoNames(gs []allowlist.Geography) string {
	s := make([]string, len(gs))
	for i, g := range gs {
		s[i] = g.String()
	}
	return strings.Join(s, ",")
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
	CatalogEmbedded = "embedded"
	CatalogFromFile = "file"
)

// catalogOrigin says where the catalog in force comes from.
func (c *Config) CatalogOrigin() string {
	if c.CatalogFile != "" {
		return CatalogFromFile
	}
	return CatalogEmbedded
}

// loadCatalog returns the catalog in force: GATEWAY_CATALOG_FILE if set,
// else the embedded one, and where it came from. A bad file is an error
// naming the setting, the file and the line.
func (c *Config) LoadCatalog() (*allowlist.Catalog, string, error) {
	if c.CatalogOrigin() == CatalogEmbedded {
		cat, err := allowlist.Embedded()
		return cat, CatalogEmbedded, err
	}
	data, err := os.ReadFile(c.CatalogFile)
	if err != nil {
		return nil, "", fmt.Errorf("GATEWAY_CATALOG_FILE: %w", err)
	}
	cat, err := allowlist.ParseCatalog(data, c.CatalogFile)
	if err != nil {
		return nil, "", fmt.Errorf("GATEWAY_CATALOG_FILE: %w", err)
	}
	return cat, CatalogFromFile, nil
}

// buildPolicy reads the catalog in force and the rules file (if any) and
// builds the effective policy.
func (c *Config) BuildPolicy() (*allowlist.Policy, error) {
	p, _, err := c.BuildPolicyFrom()
	return p, err
}

// buildPolicyFrom is buildPolicy that also says where the catalog came from.
func (c *Config) BuildPolicyFrom() (*allowlist.Policy, string, error) {
	cat, origin, err := c.LoadCatalog()
	if err != nil {
		return nil, "", err
	}
	opts := allowlist.Options{Cloud: c.Cloud, Geographies: c.Locations(), DisabledServices: c.DisabledServices, BlobScope: c.BlobScope.BlobScope,
		Audit: c.Mode == "audit", UnlistedAuthenticated: c.Unlisted == "authenticated", UnlistedPorts: ports(c.UnlistedPorts)}
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
func (c *Config) UpstreamTLS() (*tls.Config, error) {
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
func (c *Config) Authenticator() (*auth.Authenticator, error) {
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
func (c *Config) Inspector() (*inspect.Minter, error) {
	if c.InspectCACert == "" {
		return nil, nil
	}
	cert, key, err := inspect.LoadCA(c.InspectCACert, c.InspectCAKey)
	if err != nil {
		return nil, fmt.Errorf("GATEWAY_INSPECT_CA_CERT/GATEWAY_INSPECT_CA_KEY: %w", err)
	}
	return inspect.NewMinter(cert, key, inspect.MinterOptions{Validity: c.InspectLeafValidity, CacheSize: c.InspectCacheSize})
}

func (c *Config) NewLogger(w *os.File) *slog.Logger {
	hopts := &slog.HandlerOptions{Level: c.LogLevel.Level}
	if c.LogFormat == "text" {
		return slog.New(slog.NewTextHandler(w, hopts))
	}
	return slog.New(slog.NewJSONHandler(w, hopts))
}

func EnvironMap() map[string]string {
	m := map[string]string{}
	for _, kv := range os.Environ() {
		if k, v, ok := strings.Cut(kv, "="); ok {
			m[k] = v
		}
	}
	return m
}

// MinUpstreamCheckInterval keeps the upstream check from hammering
// Microsoft's endpoints (each run requests every required URL).
const MinUpstreamCheckInterval = 10 * time.Second

// ClientNetworks returns GATEWAY_CLIENT_CIDRS.
func (c *Config) ClientNetworks() []netip.Prefix { return prefixes(c.ClientCIDRs) }

// ProxyProtocolSources returns GATEWAY_PROXY_PROTOCOL_FROM.
func (c *Config) ProxyProtocolSources() []netip.Prefix { return prefixes(c.ProxyProtocolFrom) }

// PrivateDestinations returns GATEWAY_ALLOW_PRIVATE_DESTINATIONS.
func (c *Config) PrivateDestinations() []netip.Prefix { return prefixes(c.AllowPrivateDestinations) }

// Default returns the default of Config's field (its envDefault tag), for
// code that needs it without loading a configuration (the healthcheck): a
// default is stated once, on the field.
func Default(field string) string {
	f, ok := reflect.TypeFor[Config]().FieldByName(field)
	if !ok {
		panic("config: no field " + field)
	}
	return f.Tag.Get("envDefault")
}
