package msimport

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/defendergw/gateway/internal/allowlist"
)

// table is one URL table: a markdown table or a spreadsheet's sheet.
type table struct {
	doc   Doc
	file  string // base name, for locators
	where string // "sheet X" or "" (markdown)
	title string // the heading above a markdown table, or the sheet name
	cols  columns
	rows  []row
}

type row struct {
	n     int // spreadsheet row or markdown line, 1-based
	cells []string
}

// columns are the positions of the columns the importer reads (-1: absent).
type columns struct {
	service, geography, category, port, url, description, required, comments int
	os                                                                       []int // the OS columns (Windows…, Mac, Linux)
	names                                                                    []string
}

// columnName normalises a header cell: lower case, markdown escapes and
// emphasis removed, whitespace folded.
func columnName(s string) string {
	s = strings.NewReplacer(`\`, "", "*", "", "`", "").Replace(s)
	return strings.ToLower(strings.Join(strings.Fields(s), " "))
}

// mapColumns finds the columns Microsoft's tables use, under the names the
// spreadsheets and the articles give them; ok is false when there is no
// Endpoint/URL column (not a URL table: the client-process tables, say).
func mapColumns(header []string) (columns, bool) {
	c := columns{service: -1, geography: -1, category: -1, port: -1, url: -1, description: -1, required: -1, comments: -1}
	for i, h := range header {
		n := columnName(h)
		c.names = append(c.names, strings.TrimSpace(h))
		set := func(p *int) {
			if *p < 0 {
				*p = i
			}
		}
		switch n {
		case "service", "service and description":
			set(&c.service)
		case "geography", "geo", "region":
			set(&c.geography)
		case "category":
			set(&c.category)
		case "port", "ports", "protocol/port":
			set(&c.port)
		case "endpoint/url", "endpoint/urls", "endpoint or urls", "endpoint or url", "endpoints", "endpoint",
			"url", "urls", "endpoint/url(s)", "destination":
			set(&c.url)
		case "endpoint/url description", "endpoint or url description", "description", "endpoint/urls description":
			set(&c.description)
		case "required or optional", "required / optional", "required/optional", "required", "type", "required or optional?":
			set(&c.required)
		case "comments", "comment", "notes":
			set(&c.comments)
		default:
			if n == "os" || strings.Contains(n, "windows") || strings.Contains(n, "mac") || strings.Contains(n, "linux") ||
				strings.HasPrefix(n, "win ") || strings.HasPrefix(n, "server") {
				c.os = append(c.os, i)
			}
		}
	}
	return c, c.url >= 0
}

func (c columns) cell(r row, i int) string {
	if i < 0 || i >= len(r.cells) {
		return ""
	}
	return strings.TrimSpace(r.cells[i])
}

// rowError is an error in one row, naming where it is.
func (t *table) rowError(r row, format string, a ...any) error {
	return fmt.Errorf("%s: %s: %s", t.file, t.locate(r), fmt.Sprintf(format, a...))
}

// locate names a row as a reader finds it: in a spreadsheet by sheet and
// row number ("sheet Defender URLs, row 14"), in an article by the heading
// above the table and the row's place in it ("table \"Microsoft Defender
// URLs\", row 12"), which stays put when the page changes elsewhere.
func (t *table) locate(r row) string {
	if t.where != "" {
		return fmt.Sprintf("%s, row %d", t.where, r.n)
	}
	return fmt.Sprintf("table %q, row %d", t.title, r.n)
}

// source is the row's source field: "S1#file, sheet X, row 14".
func (t *table) source(r row) string {
	return t.doc.Tag + "#" + strings.ReplaceAll(t.file+", "+t.locate(r), ";", ",")
}

// rules maps the table's rows, appending rules and skip notes to res.
func (t *table) rules(res *Result) error {
	for _, r := range t.rows {
		if blankRow(r) || t.repeatsHeader(r) {
			continue
		}
		rules, skip, err := t.mapRow(r)
		if err != nil {
			return err
		}
		if skip != "" {
			res.Skipped = append(res.Skipped, fmt.Sprintf("%s: %s", t.source(r), skip))
			continue
		}
		res.Rules = append(res.Rules, rules...)
	}
	return nil
}

func blankRow(r row) bool {
	for _, c := range r.cells {
		if strings.Trim(c, " \t-|") != "" {
			return false
		}
	}
	return true
}

// repeatsHeader reports a row that repeats the column names (spreadsheets
// that restart a table under a new heading).
func (t *table) repeatsHeader(r row) bool {
	return columnName(t.cols.cell(r, t.cols.url)) == columnName(t.cols.names[t.cols.url])
}

// portal reports a table of the Defender portal's URLs: for administrators'
// browsers, not endpoints, so neither TLS-exempt nor anonymous.
func (t *table) portal() bool {
	s := strings.ToLower(t.title)
	return strings.Contains(s, "portal") || strings.Contains(s, "security center")
}

// mapRow turns one row into rules, or a reason to skip it.
func (t *table) mapRow(r row) (rules []allowlist.Rule, skip string, err error) {
	c := t.cols
	urlCell := c.cell(r, c.url)
	geo, ok := t.geography(c.cell(r, c.geography), c.cell(r, c.category))
	if !ok {
		return nil, fmt.Sprintf("unknown geography %q", clip(c.cell(r, c.geography))), nil
	}
	required, ok := requiredValue(c.cell(r, c.required))
	if !ok {
		return nil, fmt.Sprintf("required or optional: unknown value %q", clip(c.cell(r, c.required))), nil
	}
	colPorts, err := parsePortCell(c.cell(r, c.port))
	if err != nil {
		return nil, "", t.rowError(r, "port %q: %v", c.cell(r, c.port), err)
	}
	eps := endpoints(urlCell)
	if len(eps) == 0 {
		return nil, fmt.Sprintf("no host name in the Endpoint/URL cell %q", clip(plainText(urlCell))), nil
	}
	portal := t.portal()
	svc := classify(t, c.cell(r, c.service), c.cell(r, c.category), c.cell(r, c.description), eps[0].text)
	comment := plainText(c.cell(r, c.comments))
	if d := plainText(c.cell(r, c.description)); d != "" && !portal {
		comment = strings.TrimSpace(d + "; " + comment)
	}
	comment = strings.TrimSuffix(strings.TrimSpace(comment), ";")
	if len(comment) > 300 {
		comment = comment[:297] + "..."
	}
	seen := map[string]bool{}
	for _, ep := range eps {
		if seen[ep.text] { // the same name twice in one cell
			continue
		}
		seen[ep.text] = true
		hosts, paths, scheme, err := parseEndpoint(ep.text)
		if err != nil {
			return nil, "", t.rowError(r, "endpoint %q: %v", ep.text, err)
		}
		ports := slices.Clone(colPorts)
		ports = append(ports, ep.ports...)
		if len(ports) == 0 {
			switch {
			case scheme == "http":
				ports = []uint16{80}
			default: // https://, or a bare name in a table without a port column: TLS
				ports = []uint16{443}
			}
		}
		slices.Sort(ports)
		ports = slices.Compact(ports)
		for _, h := range hosts {
			rules = append(rules, allowlist.Rule{
				Action: allowlist.Allow, Host: h, Paths: paths, Ports: ports, Geography: geo,
				ServiceID: svc.id, ServiceName: svc.name, Required: required,
				TLSExempt: !portal, Anonymous: !portal, Source: t.source(r), Comment: comment,
			})
		}
	}
	return rules, "", nil
}

// geography maps a Geography cell. Microsoft writes the same location
// several ways across tables and years. An empty cell (or no column) takes
// the location a category names ("Microsoft Defender for Endpoint AU", as
// the streamlined article's MMA table has no Geography column), else WW, or
// USGov in the government lists.
func (t *table) geography(cell, category string) (allowlist.Geography, bool) {
	n := geoLabel(cell)
	if n == "" {
		if g, ok := categoryGeography(category); ok {
			return g, true
		}
	}
	return t.geographyLabel(n)
}

func geoLabel(s string) string {
	return strings.ToLower(strings.Join(strings.Fields(strings.NewReplacer(`\`, "", "*", "").Replace(s)), " "))
}

// categoryGeography reads the location at the end of a category such as
// "Microsoft Defender for Endpoint EU" or "... GCC High".
func categoryGeography(category string) (allowlist.Geography, bool) {
	c := geoLabel(category)
	if !strings.HasPrefix(c, "microsoft defender for endpoint ") {
		return 0, false
	}
	rest := strings.TrimPrefix(c, "microsoft defender for endpoint ")
	switch rest {
	case "us", "eu", "uk", "au", "aec", "aen", "gcc", "gcc high", "dod", "uae", "ch", "in":
		return (&table{}).geographyLabel(rest)
	}
	return 0, false
}

func (t *table) geographyLabel(n string) (allowlist.Geography, bool) {
	switch n {
	case "", "ww", "all", "worldwide", "global":
		if t.doc.Gov {
			return allowlist.USGov, true
		}
		return allowlist.WW, true
	case "us", "united states", "usa":
		return allowlist.US, true
	case "eu", "europe", "european union":
		return allowlist.EU, true
	case "uk", "united kingdom", "gb":
		return allowlist.UK, true
	case "au", "australia":
		return allowlist.AU, true
	case "uae", "united arab emirates", "aec", "aen", "azure uae central (aec)", "azure uae north (aen)",
		"azure uae central", "azure uae north":
		return allowlist.UAE, true
	case "ch", "switzerland":
		return allowlist.CH, true
	case "in", "india":
		return allowlist.IN, true
	case "us gov", "usgov", "us government", "us gov (all)":
		return allowlist.USGov, true
	case "gcc", "government community cloud", "gcc mod", "gcc moderate":
		return allowlist.GCC, true
	case "gcc high", "gcc-high", "gcchigh":
		return allowlist.GCCHigh, true
	case "dod", "gcc dod":
		return allowlist.DoD, true
	}
	return 0, false
}

// requiredValue reads a "Required or Optional" cell; empty means required
// (the portal tables: "All URLs in this table are required").
func requiredValue(cell string) (required, ok bool) {
	n := strings.ToLower(plainText(cell))
	switch {
	case n == "" || strings.HasPrefix(n, "required") || n == "yes":
		return true, true
	case strings.HasPrefix(n, "optional") || n == "no":
		return false, true
	}
	return false, false
}

var digits = regexp.MustCompile(`\d+`)

// parsePortCell reads "443", "80, 443", "80/443", "TCP 443".
func parsePortCell(cell string) ([]uint16, error) {
	cell = plainText(cell)
	if cell == "" {
		return nil, nil
	}
	nums := digits.FindAllString(cell, -1)
	if len(nums) == 0 {
		return nil, fmt.Errorf("no port number")
	}
	var ports []uint16
	for _, s := range nums {
		p, err := strconv.Atoi(s)
		if err != nil || p < 1 || p > 65535 {
			return nil, fmt.Errorf("%s is not a port", s)
		}
		ports = append(ports, uint16(p))
	}
	return ports, nil
}

// endpoint is one endpoint named in a cell, with the ports its segment
// adds ("`go.microsoft.com` (Port 80 is required)").
type endpoint struct {
	text  string
	ports []uint16
}

var (
	mdLink    = regexp.MustCompile(`\[([^\]]*)\]\(([^)]*)\)`)
	autoLink  = regexp.MustCompile(`<(https?://[^>\s]+)>`)
	htmlBreak = regexp.MustCompile(`(?i)<br\s*/?>`)
	htmlTag   = regexp.MustCompile(`</?[a-zA-Z][^>]*>`)
	codeSpan  = regexp.MustCompile("`([^`]+)`")
	portNote  = regexp.MustCompile(`(?i)\bport\s+(\d{1,5})\b`)
)

// endpoints lists the endpoints a URL cell names. Where the cell marks
// names as code (`name`), only those count: prose around them is not an
// endpoint. Otherwise each word that has the shape of a host name counts.
// Segments are split at line breaks (<br>, newlines in spreadsheet cells).
func endpoints(cell string) []endpoint {
	var out []endpoint
	for _, seg := range strings.Split(htmlBreak.ReplaceAllString(cell, "\n"), "\n") {
		var ports []uint16
		for _, m := range portNote.FindAllStringSubmatch(seg, -1) {
			if p, err := strconv.Atoi(m[1]); err == nil && p > 0 && p <= 65535 {
				ports = append(ports, uint16(p))
			}
		}
		var words []string
		if spans := codeSpan.FindAllStringSubmatch(seg, -1); len(spans) > 0 {
			for _, s := range spans {
				words = append(words, strings.Fields(s[1])...)
			}
		} else {
			for _, w := range strings.Fields(plainText(seg)) {
				w = strings.Trim(w, `"'()[]<>,;`)
				if looksLikeHost(w) {
					words = append(words, w)
				}
			}
		}
		for _, w := range words {
			out = append(out, endpoint{text: w, ports: ports})
		}
	}
	return out
}

// plainText removes markdown and HTML markup from a cell: links keep their
// text, escapes their character, breaks become spaces.
func plainText(s string) string {
	s = mdLink.ReplaceAllString(s, "$1")
	s = autoLink.ReplaceAllString(s, "$1")
	s = htmlBreak.ReplaceAllString(s, " ")
	s = htmlTag.ReplaceAllString(s, "")
	s = strings.ReplaceAll(s, "`", "")
	s = unescape(s)
	return strings.Join(strings.Fields(s), " ")
}

// unescape removes markdown backslash escapes (\*, \_, \(, \|).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) && strings.IndexByte("\\`*_{}[]()#+-.!|<>~", s[i+1]) >= 0 {
			i++
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// looksLikeHost reports a word with the shape of a host name or URL:
// optional scheme, two or more labels, a top-level label of letters. Prose
// ("and above.", "e.g.", "101.26012.0012") does not.
func looksLikeHost(w string) bool {
	w = strings.TrimPrefix(strings.TrimPrefix(strings.ToLower(w), "https://"), "http://")
	host, _, _ := strings.Cut(w, "/")
	host, _, _ = strings.Cut(host, ":")
	host = strings.TrimRight(strings.TrimLeft(host, "*."), "*.")
	labels := strings.Split(host, ".")
	if len(labels) < 2 {
		return false
	}
	tld := labels[len(labels)-1]
	if len(tld) < 2 {
		return false
	}
	for _, r := range tld {
		if r < 'a' || r > 'z' {
			return false
		}
	}
	return true
}

// parseEndpoint reads one endpoint as Microsoft writes it: "host",
// "*.suffix", "*suffix" (the apex and its subdomains), "host/path/*",
// "http://host/path", "https://host:port". It returns the host patterns
// (normalised as the catalog's), the path prefixes and the scheme.
func parseEndpoint(text string) (hosts, paths []string, scheme string, err error) {
	s := strings.Trim(unescape(strings.TrimSpace(text)), `"'(),;<>`)
	if rest, ok := strings.CutPrefix(strings.ToLower(s), "https://"); ok {
		scheme, s = "https", s[len(s)-len(rest):]
	} else if rest, ok := strings.CutPrefix(strings.ToLower(s), "http://"); ok {
		scheme, s = "http", s[len(s)-len(rest):]
	}
	host, path, hasPath := strings.Cut(s, "/")
	if h, port, ok := strings.Cut(host, ":"); ok {
		if _, perr := strconv.Atoi(port); perr != nil {
			return nil, nil, "", fmt.Errorf("port %q is not a number", port)
		}
		host = h // the Port column carries the port
	}
	// A footnote mark after a name ("go.microsoft.com*") is not a wildcard.
	host = strings.TrimRight(host, "*¹²³")
	if hasPath {
		p := "/" + strings.TrimSuffix(path, "*")
		if strings.Contains(p, "*") {
			return nil, nil, "", fmt.Errorf("a wildcard inside the path is not supported")
		}
		if p != "/" {
			paths = []string{p}
		}
	}
	var patterns []string
	switch {
	case strings.HasPrefix(host, "*."):
		patterns = []string{host}
	case strings.HasPrefix(host, "*"):
		// "*ecs.office.com": Microsoft means the name and its subdomains,
		// written without the dot; the gateway does not open every name
		// that merely ends with the same letters (xecs.office.com).
		apex := strings.TrimPrefix(host, "*")
		patterns = []string{apex, "*." + apex}
	default:
		patterns = []string{host}
	}
	for _, p := range patterns {
		n, err := allowlist.NormalizePattern(p)
		if err != nil {
			return nil, nil, "", err
		}
		hosts = append(hosts, n)
	}
	if len(paths) > 0 {
		for i, p := range paths {
			n, err := allowlist.NormalizePath(p)
			if err != nil {
				return nil, nil, "", fmt.Errorf("path %q: %w", p, err)
			}
			paths[i] = n
		}
	}
	return hosts, paths, scheme, nil
}

// clip shortens cell text for a skip note.
func clip(s string) string {
	if len(s) > 90 {
		return s[:87] + "..."
	}
	return s
}
