package allowlist

import (
	"bytes"
	"encoding/csv"
	"fmt"
	"strings"
)

// columnsHelp explains the columns in every catalog file the gateway writes.
const columnsHelp = `# Microsoft Defender egress allowlist catalog: one row per host pattern per service and source.
# Columns: service_id (stable id: GATEWAY_DISABLED_SERVICES, metrics), service_name,
#   geography (Microsoft's Geography column: WW, US, EU, UK, AU, UAE, CH, IN for the commercial cloud;
#   USGov, GCC, GCC-High, DoD for the US Government clouds),
#   host (exact host or *.suffix = any subdomain, not the apex), paths (empty = any path, else |-separated prefixes),
#   ports (|-separated), required (required|optional), tls_exempt (yes = never TLS-inspected),
#   anonymous (yes = no proxy authentication; LocalSystem/WinHTTP traffic), source (;-separated tags, each declared
#   in a "# source:" line as TAG DATE URL TITLE, with an optional #locator: file, sheet, table and row), comment.
`

// Format renders the catalog in the format ParseCatalog reads, ready to be
// used as GATEWAY_CATALOG_FILE. Rule ids are not written (they are the
// rows' line numbers).
func (c *Catalog) Format() ([]byte, error) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# %s %s\n", keyVersion, c.Version)
	fmt.Fprintf(&b, "# %s %s\n", keyPublished, c.Published.Format(dateLayout))
	b.WriteString(columnsHelp)
	for _, s := range c.Sources {
		date := s.Date
		if date == "" {
			date = "-"
		}
		line := strings.TrimSpace(strings.Join([]string{s.Tag, date, s.URL, oneLine(s.Title)}, " "))
		fmt.Fprintf(&b, "# %s %s\n", keySource, line)
	}
	for _, s := range c.Skipped {
		fmt.Fprintf(&b, "# %s %s\n", keySkipped, oneLine(s))
	}
	w := csv.NewWriter(&b)
	w.Write(catalogHeader)
	for i := range c.Rules {
		r := &c.Rules[i]
		if r.Action != Allow {
			return nil, fmt.Errorf("rule %d (%s): catalog rows allow; deny rules belong in GATEWAY_RULES_FILE", i+1, r.Host)
		}
		req := "optional"
		if r.Required {
			req = "required"
		}
		w.Write([]string{r.ServiceID, oneLine(r.ServiceName), r.Geography.String(), r.Host, strings.Join(r.Paths, "|"),
			r.PortsString(), req, yesNoText(r.TLSExempt), yesNoText(r.Anonymous), oneLine(r.Source), oneLine(r.Comment)})
	}
	w.Flush()
	if err := w.Error(); err != nil {
		return nil, err
	}
	// What is written must read back: a file the gateway cannot load must
	// never be produced.
	if _, err := ParseCatalog(b.Bytes(), "output"); err != nil {
		return nil, fmt.Errorf("formatted catalog does not parse: %w", err)
	}
	return b.Bytes(), nil
}

func yesNoText(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// oneLine folds whitespace runs (newlines included) into single spaces: a
// comment line must stay one line.
func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
