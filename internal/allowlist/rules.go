package allowlist

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"

	"go.yaml.in/yaml/v3"
)

// RuleSet is a parsed operator rules file.
type RuleSet struct {
	Rules            []Rule
	DisabledServices []string
}

// ruleYAML is one entry of the rules file.
type ruleYAML struct {
	Action    string   `yaml:"action"`
	Host      string   `yaml:"host"`
	Ports     []string `yaml:"ports"`
	Paths     []string `yaml:"paths"`
	Anonymous bool     `yaml:"anonymous"`
	TLSExempt bool     `yaml:"tls_exempt"`
	VerifySNI *bool    `yaml:"verify_sni"`
	Geography string   `yaml:"geography"`
	Service   string   `yaml:"service"`
	Comment   string   `yaml:"comment"`
}

type fileYAML struct {
	Rules            []ruleYAML `yaml:"rules"`
	DisabledServices []string   `yaml:"disable_services"`
}

// ParseRules parses an operator rules file (YAML). name is used in error
// messages and rule ids ("name:line"). Unknown keys, unknown actions and
// malformed hosts, ports or paths are errors: a typo must never widen or
// silently drop a rule.
//
//	rules:
//	  - action: allow            # allow | deny
//	    host: "*.contoso.com"    # exact name, *.suffix, or IP address
//	    ports: [443]             # allow rules default to 443; deny rules to every port
//	    paths: ["/pki/"]         # optional path prefixes (plain HTTP)
//	    anonymous: true          # no proxy authentication needed
//	    tls_exempt: true         # never TLS-inspected
//	    verify_sni: false        # raw tunnels: skip the ClientHello SNI check (default true)
//	    geography: WW            # default WW
//	    service: contoso         # default "operator"
//	    comment: "why this rule exists"
//	disable_services: [mma]     # catalog services to switch off
func ParseRules(data []byte, name string) (*RuleSet, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var f fileYAML
	if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	lines := ruleLines(data)
	rs := &RuleSet{DisabledServices: f.DisabledServices}
	for i := range f.Rules {
		line := 0
		if i < len(lines) {
			line = lines[i]
		}
		r, err := f.Rules[i].rule()
		if err != nil {
			return nil, fmt.Errorf("%s line %d: %w", name, line, err)
		}
		r.ID = fmt.Sprintf("%s:%d", name, line)
		r.Source = name
		rs.Rules = append(rs.Rules, r)
	}
	return rs, nil
}

// ruleLines returns the line of each entry of the top-level "rules" sequence,
// for error messages and rule ids.
func ruleLines(data []byte) []int {
	var root yaml.Node
	if yaml.Unmarshal(data, &root) != nil || len(root.Content) == 0 {
		return nil
	}
	m := root.Content[0]
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == "rules" {
			var lines []int
			for _, n := range m.Content[i+1].Content {
				lines = append(lines, n.Line)
			}
			return lines
		}
	}
	return nil
}

func (y *ruleYAML) rule() (Rule, error) {
	r := Rule{ServiceID: "operator", ServiceName: "operator rule", Anonymous: y.Anonymous,
		TLSExempt: y.TLSExempt, Comment: y.Comment}
	var err error
	if r.Action, err = ParseAction(y.Action); err != nil {
		return r, fmt.Errorf("action: %w", err)
	}
	r.NoSNICheck = y.VerifySNI != nil && !*y.VerifySNI
	if y.Host == "" {
		return r, errors.New("host: required")
	}
	if r.Host, err = NormalizePattern(y.Host); err != nil {
		return r, err
	}
	if len(y.Ports) > 0 {
		if r.Ports, err = parsePorts(y.Ports); err != nil {
			return r, err
		}
	} else if r.Action == Allow {
		r.Ports = []uint16{443}
	}
	if len(y.Paths) > 0 {
		if r.Paths, err = parsePaths(y.Paths); err != nil {
			return r, err
		}
	}
	if y.Geography != "" {
		if r.Geography, err = ParseGeography(y.Geography); err != nil {
			return r, err
		}
	}
	if y.Service != "" {
		r.ServiceID, r.ServiceName = y.Service, y.Service
	}
	return r, nil
}

// parseIPPattern accepts an IP literal in canonical form ("192.0.2.1",
// "2001:db8::1" or "[2001:db8::1]") and returns its canonical text.
func parseIPPattern(s string) (string, error) {
	a, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(s, "["), "]"))
	if err != nil {
		return "", err
	}
	if a.Zone() != "" {
		return "", errors.New("zoned address")
	}
	if a.Is4() && a.String() != s {
		return "", errors.New("non-canonical ipv4")
	}
	return a.String(), nil
}
