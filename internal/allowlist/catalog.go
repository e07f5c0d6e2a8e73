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
	"time"
)

// catalogCSV is the Defender service catalog: one row per host pattern per
// service and source, imported from Microsoft's URL tables; each source tag
// is declared in the file's header with the article's address and date.
//
//go:embed catalog.csv
var catalogCSV []byte

// Catalog is a parsed service catalog.
type Catalog struct {
	// Version names the catalog ("2026.12.02"); it shows in gateway
	// version, the start-up line, /allowlist and gateway_catalog_info.
	Version string
	// Published is the day the catalog was last checked against
	// Microsoft's lists (gateway_catalog_published_timestamp_seconds).
	Published time.Time
	// Sources are the documents the rows cite, by tag.
	Sources []Source
	// Skipped are the rows of Microsoft's lists an import could not map,
	// with the reason, kept so that a review sees them.
	Skipped []string
	Rules   []Rule
}

// Source is one document the catalog's rows cite: a Microsoft article or
// spreadsheet, or another catalog file.
type Source struct {
	Tag   string `json:"tag"`            // "S1"; rows cite "S1" or "S1#locator"
	Date  string `json:"date,omitempty"` // the document's date, YYYY-MM-DD; "" when unknown
	URL   string `json:"url"`            // where it is published
	Title string `json:"title,omitempty"`
}

// Source returns the source with tag, or false.
func (c *Catalog) Source(tag string) (Source, bool) {
	for _, s := range c.Sources {
		if s.Tag == tag {
			return s, true
		}
	}
	return Source{}, false
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

var embedded = sync.OnceValues(func() (*Catalog, error) { return ParseCatalog(catalogCSV, "catalog.csv") })

// Embedded returns the catalog compiled into the binary. The result is shared:
// callers must not modify it.
func Embedded() (*Catalog, error) { return embedded() }

var catalogHeader = []string{"service_id", "service_name", "geography", "host", "paths", "ports",
	"required", "tls_exempt", "anonymous", "source", "comment"}

// Header keys of the catalog's leading comment lines.
const (
	keyVersion   = "catalog-version:"
	keyPublished = "catalog-published:"
	keySource    = "source:"
	keySkipped   = "skipped:"
	dateLayout   = "2006-01-02"
)

// ParseCatalog parses catalog CSV: comment lines ("# ...") carrying the
// version, the publication date and the sources, the column header, then
// one rule a row. name is used in errors ("name line 12: ..."). Every
// error stops the parse: a catalog is taken whole or not at all.
func ParseCatalog(data []byte, name string) (*Catalog, error) {
	cat := &Catalog{}
	if err := cat.parseHeader(data, name); err != nil {
		return nil, err
	}
	r := csv.NewReader(bytes.NewReader(data))
	r.Comment = '#'
	r.FieldsPerRecord = len(catalogHeader)
	head, err := r.Read()
	if err != nil {
		return nil, fmt.Errorf("%s: column header: %w", name, err)
	}
	if !slices.Equal(head, catalogHeader) {
		return nil, fmt.Errorf("%s: column header: got %v, want %v", name, head, catalogHeader)
	}
	for {
		rec, err := r.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		line, _ := r.FieldPos(0)
		rule, err := catalogRule(rec)
		if err == nil {
			err = cat.checkSources(rule.Source)
		}
		if err != nil {
			return nil, fmt.Errorf("%s line %d: %w", name, line, err)
		}
		rule.ID = fmt.Sprintf("catalog:%d", line)
		cat.Rules = append(cat.Rules, rule)
	}
	if len(cat.Rules) == 0 {
		return nil, fmt.Errorf("%s: no rules", name)
	}
	return cat, nil
}

// parseHeader reads the "# key: value" comment lines before the column
// header.
func (c *Catalog) parseHeader(data []byte, name string) error {
	for n, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		text, ok := strings.CutPrefix(line, "#")
		if !ok {
			break // the column header: the comment block is over
		}
		text = strings.TrimSpace(text)
		lineErr := func(format string, a ...any) error {
			return fmt.Errorf("%s line %d: %s", name, n+1, fmt.Sprintf(format, a...))
		}
		switch {
		case strings.HasPrefix(text, keyVersion):
			if c.Version != "" {
				return lineErr("a second %q line", keyVersion)
			}
			c.Version = strings.TrimSpace(strings.TrimPrefix(text, keyVersion))
			if c.Version == "" || strings.ContainsAny(c.Version, " \t\"") {
				return lineErr("catalog-version: want one word, got %q", c.Version)
			}
		case strings.HasPrefix(text, keyPublished):
			v := strings.TrimSpace(strings.TrimPrefix(text, keyPublished))
			t, err := time.Parse(dateLayout, v)
			if err != nil {
				return lineErr("catalog-published: want a date YYYY-MM-DD, got %q", v)
			}
			c.Published = t
		case strings.HasPrefix(text, keySource):
			s, err := parseSource(strings.TrimSpace(strings.TrimPrefix(text, keySource)))
			if err != nil {
				return lineErr("%v", err)
			}
			if _, dup := c.Source(s.Tag); dup {
				return lineErr("source %q declared twice", s.Tag)
			}
			c.Sources = append(c.Sources, s)
		case strings.HasPrefix(text, keySkipped):
			c.Skipped = append(c.Skipped, strings.TrimSpace(strings.TrimPrefix(text, keySkipped)))
		}
	}
	switch {
	case c.Version == "":
		return fmt.Errorf("%s: no \"# catalog-version: <version>\" line", name)
	case c.Published.IsZero():
		return fmt.Errorf("%s: no \"# catalog-published: YYYY-MM-DD\" line", name)
	case len(c.Sources) == 0:
		return fmt.Errorf("%s: no \"# source: TAG DATE URL\" line: every row cites its source", name)
	}
	return nil
}

// parseSource parses "TAG DATE URL [title]"; DATE is YYYY-MM-DD or "-".
func parseSource(s string) (Source, error) {
	f := strings.Fields(s)
	if len(f) < 3 {
		return Source{}, fmt.Errorf("source: want \"TAG DATE URL [title]\", got %q", s)
	}
	src := Source{Tag: f[0], URL: f[2], Title: strings.Join(f[3:], " ")}
	if !validTag(src.Tag) {
		return src, fmt.Errorf("source tag %q: letters, digits, '-' and '_' only", src.Tag)
	}
	if f[1] != "-" {
		if _, err := time.Parse(dateLayout, f[1]); err != nil {
			return src, fmt.Errorf("source %s: date: want YYYY-MM-DD or -, got %q", src.Tag, f[1])
		}
		src.Date = f[1]
	}
	return src, nil
}

func validTag(t string) bool {
	if t == "" || len(t) > 32 {
		return false
	}
	for _, r := range t {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

// SourceTags splits a row's source field ("S1#row 3;S5") into its tags
// ("S1", "S5").
func SourceTags(field string) []string {
	var tags []string
	for _, part := range strings.Split(field, ";") {
		tag, _, _ := strings.Cut(strings.TrimSpace(part), "#")
		if tag = strings.TrimSpace(tag); tag != "" {
			tags = append(tags, tag)
		}
	}
	return tags
}

// checkSources reports a row whose source field cites no declared source.
func (c *Catalog) checkSources(field string) error {
	tags := SourceTags(field)
	if len(tags) == 0 {
		return errors.New("source: empty (each row cites a tag declared in a \"# source:\" line)")
	}
	for _, t := range tags {
		if _, ok := c.Source(t); !ok {
			return fmt.Errorf("source %q: not declared in a \"# source:\" line", t)
		}
	}
	return nil
}

func catalogRule(rec []string) (Rule, error) {
	for i := range rec {
		rec[i] = strings.TrimSpace(rec[i])
	}
	r := Rule{Action: Allow, ServiceID: rec[0], ServiceName: rec[1], Source: rec[9], Comment: rec[10]}
	if !validServiceID(r.ServiceID) {
		return r, fmt.Errorf("service_id %q: lower-case letters, digits and '-' only", r.ServiceID)
	}
	var err error
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

// validServiceID accepts the ids metrics carry as a label: short, lower-case
// letters, digits and '-'.
func validServiceID(id string) bool {
	if id == "" || len(id) > 48 {
		return false
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return false
		}
	}
	return true
}
