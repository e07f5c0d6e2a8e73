package allowlist

import (
	"bytes"
	_ "embed" // the catalog is compiled in
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
)

// catalogCSV is the Defender service catalog: one row per host pattern per
// service, transcribed from Microsoft's URL tables (sources named in the file
// and in shared/reference/defender-egress.md).
//
//go:embed catalog.csv
var catalogCSV []byte

// Catalog is a parsed service catalog.
type Catalog struct {
	Version string
	Rules   []Rule
}

// Services returns the catalog's service ids in first-seen order.
func (c *Catalog) Services() []string {
	var ids []string
	for i := range c.Rules {
		if !slices.Contains(ids, c.Rules[i].ServiceID) {
			ids = append(ids, c.Rules[i].ServiceID)
		}
	}
	return ids
}

var embedded = sync.OnceValues(func() (*Catalog, error) { return ParseCatalog(catalogCSV) })

// Embedded returns the catalog compiled into the binary. The result is shared:
// callers must not modify it.
func Embedded() (*Catalog, error) { return embedded() }

var catalogHeader = []string{"service_id", "service_name", "geography", "host", "paths", "ports",
	"required", "tls_exempt", "anonymous", "source", "comment"}

const versionPrefix = "# catalog-version:"

// ParseCatalog parses catalog CSV: a "# catalog-version: X" first line, the
// header, then one rule a row.
func ParseCatalog(data []byte) (*Catalog, error) {
	first, _, _ := bytes.Cut(data, []byte("\n"))
	v, ok := strings.CutPrefix(strings.TrimSpace(string(first)), versionPrefix)
	if !ok || strings.TrimSpace(v) == "" {
		return nil, errors.New("catalog: first line must be \"# catalog-version: <version>\"")
	}
	cat := &Catalog{Version: strings.TrimSpace(v)}
	r := csv.NewReader(bytes.NewReader(data))
	r.Comment = '#'
	r.FieldsPerRecord = len(catalogHeader)
	head, err := r.Read()
	if err != nil {
		return nil, fmt.Errorf("catalog header: %w", err)
	}
	if !slices.Equal(head, catalogHeader) {
		return nil, fmt.Errorf("catalog header: got %v, want %v", head, catalogHeader)
	}
	for {
		rec, err := r.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("catalog: %w", err)
		}
		line, _ := r.FieldPos(0)
		rule, err := catalogRule(rec)
		if err != nil {
			return nil, fmt.Errorf("catalog line %d: %w", line, err)
		}
		rule.ID = fmt.Sprintf("catalog:%d", line)
		cat.Rules = append(cat.Rules, rule)
	}
	if len(cat.Rules) == 0 {
		return nil, errors.New("catalog: no rules")
	}
	return cat, nil
}

func catalogRule(rec []string) (Rule, error) {
	for i := range rec {
		rec[i] = strings.TrimSpace(rec[i])
	}
	r := Rule{Action: Allow, ServiceID: rec[0], ServiceName: rec[1], Source: rec[9], Comment: rec[10]}
	var err error
	if r.ServiceID == "" {
		return r, errors.New("empty service_id")
	}
	if r.Geography, err = ParseGeography(rec[2]); err != nil {
		return r, err
	}
	if r.Host, err = NormalizePattern(rec[3]); err != nil {
		return r, err
	}
	if rec[4] != "" {
		if r.Paths, err = parsePaths(strings.Split(rec[4], "|")); err != nil {
			return r, err
		}
	}
	if r.Ports, err = parsePorts(strings.Split(rec[5], "|")); err != nil {
		return r, err
	}
	switch rec[6] {
	case "required":
		r.Required = true
	case "optional":
	default:
		return r, fmt.Errorf("required: want required or optional, got %q", rec[6])
	}
	if r.TLSExempt, err = yesNo("tls_exempt", rec[7]); err != nil {
		return r, err
	}
	if r.Anonymous, err = yesNo("anonymous", rec[8]); err != nil {
		return r, err
	}
	return r, nil
}

func yesNo(field, s string) (bool, error) {
	switch s {
	case "yes":
		return true, nil
	case "no":
		return false, nil
	}
	return false, fmt.Errorf("%s: want yes or no, got %q", field, s)
}

func parsePorts(ss []string) ([]uint16, error) {
	ports := make([]uint16, 0, len(ss))
	for _, s := range ss {
		p, err := ParsePort(strings.TrimSpace(s))
		if err != nil {
			return nil, err
		}
		if !slices.Contains(ports, p) {
			ports = append(ports, p)
		}
	}
	slices.Sort(ports)
	return ports, nil
}

func parsePaths(ss []string) ([]string, error) {
	paths := make([]string, 0, len(ss))
	for _, s := range ss {
		s = strings.TrimSpace(s)
		s = strings.TrimSuffix(s, "*") // "/networkscannerstable/*" is the prefix "/networkscannerstable/"
		if !strings.HasPrefix(s, "/") {
			return nil, fmt.Errorf("path %q: must start with /", s)
		}
		n, err := NormalizePath(s)
		if err != nil {
			return nil, err
		}
		paths = append(paths, n)
	}
	return paths, nil
}

// NormalizePattern normalises a rule's host: an exact name, "*.suffix", or an
// IP literal (canonical form). Wildcards must leave at least two labels
// ("*.com" would open a whole top-level domain).
func NormalizePattern(p string) (string, error) {
	p = strings.TrimSpace(p)
	suffix, wild := strings.CutPrefix(p, "*.")
	if strings.Contains(suffix, "*") {
		return "", fmt.Errorf("host pattern %q: only a leading \"*.\" is supported", p)
	}
	if !wild {
		h := p
		if a, err := parseIPPattern(p); err == nil {
			return a, nil
		}
		host, _, err := NormalizeHost(h)
		if err != nil {
			return "", fmt.Errorf("host pattern %q: %w", p, err)
		}
		return host, nil
	}
	host, ip, err := NormalizeHost(suffix)
	if err != nil || ip.IsValid() {
		return "", fmt.Errorf("host pattern %q: bad suffix: %w", p, ErrBadTarget)
	}
	if !strings.Contains(host, ".") {
		return "", fmt.Errorf("host pattern %q: wildcard too broad (needs at least two labels after \"*.\")", p)
	}
	return "*." + host, nil
}
