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
	"github.com/defendergw/gateway/internal/inspect"
)

const envPrefix = "GATEWAY_"

// Config is everything the gateway reads from the environment.
type Config struct {
	Listen                   string        `env:"LISTEN" envDefault:"127.0.0.1:3128"`
	Geographies              []string      `env:"GEOGRAPHIES" envSeparator:","`
	RulesFile                string        `env:"RULES_FILE"`
	DisabledServices         []string      `env:"DISABLED_SERVICES" envSeparator:","`
	DNSServers               []string      `env:"DNS_SERVERS" envSeparator:","`
	DNSTimeout               time.Duration `env:"DNS_TIMEOUT" envDefault:"2s"`
	DNSMinTTL                time.Duration `env:"DNS_MIN_TTL" envDefault:"5s"`
	DNSMaxTTL                time.Duration `env:"DNS_MAX_TTL" envDefault:"5m"`
	DNSNegativeTTL           time.Duration `env:"DNS_NEGATIVE_TTL" envDefault:"5s"`
	DNSCacheSize             int           `env:"DNS_CACHE_SIZE" envDefault:"10000"`
	AllowPrivateDestinations []string      `env:"ALLOW_PRIVATE_DESTINATIONS" envSeparator:","`
	ReadHeaderTimeout        time.Duration `env:"READ_HEADER_TIMEOUT" envDefault:"10s"`
	DialTimeout              time.Duration `env:"DIAL_TIMEOUT" envDefault:"10s"`
	ResponseHeaderTimeout    time.Duration `env:"RESPONSE_HEADER_TIMEOUT" envDefault:"30s"`
	IdleTimeout              time.Duration `env:"IDLE_TIMEOUT" envDefault:"15m"`
	HalfCloseTimeout         time.Duration `env:"HALF_CLOSE_TIMEOUT" envDefault:"30s"`
	ClientIdleTimeout        time.Duration `env:"CLIENT_IDLE_TIMEOUT" envDefault:"2m"`
	MaxHeaderBytes           int           `env:"MAX_HEADER_BYTES" envDefault:"65536"`
	BlobScope                string        `env:"BLOB_SCOPE" envDefault:"wildcard"`
	ClientHelloTimeout       time.Duration `env:"CLIENT_HELLO_TIMEOUT" envDefault:"10s"`
	InspectCACert            string        `env:"INSPECT_CA_CERT"`
	InspectCAKey             string        `env:"INSPECT_CA_KEY"`
	InspectLeafValidity      time.Duration `env:"INSPECT_LEAF_VALIDITY" envDefault:"24h"`
	InspectCacheSize         int           `env:"INSPECT_CACHE_SIZE" envDefault:"1024"`
	UpstreamCAFile           string        `env:"UPSTREAM_CA_FILE"`
	LogFormat                string        `env:"LOG_FORMAT" envDefault:"json"`
	LogLevel                 string        `env:"LOG_LEVEL" envDefault:"info"`

	// Derived by validate.
	blobScope    allowlist.BlobScope
	geos         []allowlist.Geography
	allowPrivate []netip.Prefix
	logLevel     slog.Level
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
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return fmt.Errorf("GATEWAY_LISTEN: %q is not host:port: %v", c.Listen, err)
	}
	for _, g := range c.Geographies {
		if g = strings.TrimSpace(g); g == "" {
			continue
		}
		geo, err := allowlist.ParseGeography(g)
		if err != nil {
			return fmt.Errorf("GATEWAY_GEOGRAPHIES: %v", err)
		}
		if !slices.Contains(c.geos, geo) {
			c.geos = append(c.geos, geo)
		}
	}
	c.DisabledServices = trimList(c.DisabledServices)
	for _, s := range trimList(c.AllowPrivateDestinations) {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return fmt.Errorf("GATEWAY_ALLOW_PRIVATE_DESTINATIONS: %q is not a CIDR prefix or address", s)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		if p.Masked() != p {
			return fmt.Errorf("GATEWAY_ALLOW_PRIVATE_DESTINATIONS: %q has host bits set (did you mean %s?)", s, p.Masked())
		}
		c.allowPrivate = append(c.allowPrivate, p)
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
	if c.IdleTimeout < 0 {
		return fmt.Errorf("GATEWAY_IDLE_TIMEOUT: must not be negative (0 disables it), got %s", c.IdleTimeout)
	}
	if c.DNSMinTTL > c.DNSMaxTTL {
		return fmt.Errorf("GATEWAY_DNS_MIN_TTL (%s) must not exceed GATEWAY_DNS_MAX_TTL (%s)", c.DNSMinTTL, c.DNSMaxTTL)
	}
	if c.DNSCacheSize <= 0 {
		return fmt.Errorf("GATEWAY_DNS_CACHE_SIZE: must be positive, got %d", c.DNSCacheSize)
	}
	if c.MaxHeaderBytes < 4096 || c.MaxHeaderBytes > 1<<20 {
		return fmt.Errorf("GATEWAY_MAX_HEADER_BYTES: must be between 4096 and 1048576, got %d", c.MaxHeaderBytes)
	}
	var err error
	if c.blobScope, err = allowlist.ParseBlobScope(c.BlobScope); err != nil {
		return fmt.Errorf("GATEWAY_BLOB_SCOPE: %v", err)
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

func trimList(in []string) []string {
	var out []string
	for _, s := range in {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// buildPolicy reads the rules file (if any) and builds the effective policy.
func (c *Config) buildPolicy() (*allowlist.Policy, error) {
	cat, err := allowlist.Embedded()
	if err != nil {
		return nil, err
	}
	opts := allowlist.Options{Geographies: c.geos, DisabledServices: c.DisabledServices, BlobScope: c.blobScope}
	if c.RulesFile != "" {
		data, err := os.ReadFile(c.RulesFile)
		if err != nil {
			return nil, fmt.Errorf("GATEWAY_RULES_FILE: %w", err)
		}
		rs, err := allowlist.ParseRules(data, c.RulesFile)
		if err != nil {
			return nil, fmt.Errorf("GATEWAY_RULES_FILE: %w", err)
		}
		opts.Rules = rs.Rules
		for _, s := range rs.DisabledServices {
			if !slices.Contains(opts.DisabledServices, s) {
				opts.DisabledServices = append(opts.DisabledServices, s)
			}
		}
	}
	p, err := allowlist.NewPolicy(cat, opts)
	if err != nil {
		return nil, fmt.Errorf("GATEWAY_DISABLED_SERVICES: %w", err)
	}
	return p, nil
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
