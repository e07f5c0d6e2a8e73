package allowlist

import (
	"fmt"
	"io"
	"slices"
	"strings"
)

// Change is one difference between two catalogs, for one destination: a
// geography, a host pattern and the path prefixes.
type Change struct {
	Kind      string // "added", "removed" or "changed"
	Service   string // service id (the new one for a changed row)
	Geography Geography
	Host      string
	Paths     []string
	// Old and New describe the row(s) before and after ("" for the side
	// that does not exist): ports, required/optional, TLS exemption,
	// anonymous, service.
	Old, New string
	Sources  string // the new rows' sources (the old ones for a removal)
}

// Diff is what changes from one catalog to another: rows, and the notes of
// rows an import could not map.
type Diff struct {
	Changes        []Change
	SkippedAdded   []string
	SkippedRemoved []string
}

// Empty reports whether nothing changes.
func (d *Diff) Empty() bool {
	return len(d.Changes) == 0 && len(d.SkippedAdded) == 0 && len(d.SkippedRemoved) == 0
}

// destKey identifies a destination across catalogs.
type destKey struct {
	geo   Geography
	host  string
	paths string
}

// destRows is what one catalog says of a destination (several rows, of one
// or more sources, merge).
type destRows struct {
	ports     []uint16
	required  bool
	tlsExempt bool
	anonymous bool
	services  []string
	sources   []string
}

func (d *destRows) String() string {
	req := "optional"
	if d.required {
		req = "required"
	}
	var ps []string
	for _, p := range d.ports {
		ps = append(ps, fmt.Sprint(p))
	}
	s := fmt.Sprintf("ports %s, %s, service %s", strings.Join(ps, "|"), req, strings.Join(d.services, ","))
	if !d.tlsExempt {
		s += ", TLS inspection allowed"
	}
	if !d.anonymous {
		s += ", authentication required"
	}
	return s
}

func destinations(c *Catalog) (map[destKey]*destRows, []destKey) {
	m := map[destKey]*destRows{}
	var order []destKey
	for _, r := range c.Rules {
		k := destKey{r.Geography, r.Host, strings.Join(r.Paths, "|")}
		d, ok := m[k]
		if !ok {
			d = &destRows{}
			m[k] = d
			order = append(order, k)
		}
		for _, p := range r.Ports {
			if !slices.Contains(d.ports, p) {
				d.ports = append(d.ports, p)
			}
		}
		slices.Sort(d.ports)
		d.required = d.required || r.Required
		d.tlsExempt = d.tlsExempt || r.TLSExempt
		d.anonymous = d.anonymous || r.Anonymous
		if !slices.Contains(d.services, r.ServiceID) {
			d.services = append(d.services, r.ServiceID)
		}
		d.sources = append(d.sources, r.Source)
	}
	return m, order
}

// DiffCatalogs compares two catalogs destination by destination.
func DiffCatalogs(old, new *Catalog) *Diff {
	om, oorder := destinations(old)
	nm, norder := destinations(new)
	d := &Diff{}
	for _, k := range norder {
		n := nm[k]
		o, had := om[k]
		switch {
		case !had:
			d.Changes = append(d.Changes, Change{Kind: "added", Service: n.services[0], Geography: k.geo, Host: k.host,
				Paths: splitPaths(k.paths), New: n.String(), Sources: strings.Join(n.sources, ";")})
		case o.String() != n.String():
			d.Changes = append(d.Changes, Change{Kind: "changed", Service: n.services[0], Geography: k.geo, Host: k.host,
				Paths: splitPaths(k.paths), Old: o.String(), New: n.String(), Sources: strings.Join(n.sources, ";")})
		}
	}
	for _, k := range oorder {
		if _, ok := nm[k]; !ok {
			o := om[k]
			d.Changes = append(d.Changes, Change{Kind: "removed", Service: o.services[0], Geography: k.geo, Host: k.host,
				Paths: splitPaths(k.paths), Old: o.String(), Sources: strings.Join(o.sources, ";")})
		}
	}
	slices.SortStableFunc(d.Changes, func(a, b Change) int { return strings.Compare(a.Service, b.Service) })
	d.SkippedAdded = skippedMissing(new.Skipped, old.Skipped)
	d.SkippedRemoved = skippedMissing(old.Skipped, new.Skipped)
	return d
}

// skippedMissing lists the notes of a that b lacks, compared by source tag
// and reason: the row locators move whenever Microsoft edits the page above
// a row, which changes nothing a reviewer must look at.
func skippedMissing(a, b []string) []string {
	keys := map[string]bool{}
	for _, s := range b {
		keys[skipKey(s)] = true
	}
	var out []string
	for _, s := range a {
		if !keys[skipKey(s)] {
			out = append(out, s)
		}
	}
	return out
}

// skipKey reduces "S1#file, line 13: reason" to "S1: reason".
func skipKey(note string) string {
	tag := ""
	if tags := SourceTags(note); len(tags) > 0 {
		tag = tags[0]
	}
	_, reason, ok := strings.Cut(note, ": ")
	if !ok {
		reason = note
	}
	return tag + ": " + reason
}

func splitPaths(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, "|")
}

// Write prints the diff for a reviewer, grouped by service.
func (d *Diff) Write(w io.Writer, from, to string) {
	count := map[string]int{}
	for _, c := range d.Changes {
		count[c.Kind]++
	}
	fmt.Fprintf(w, "catalog %s -> %s: %d added, %d removed, %d changed, %d rows newly skipped\n",
		from, to, count["added"], count["removed"], count["changed"], len(d.SkippedAdded))
	svc := ""
	for _, c := range d.Changes {
		if c.Service != svc {
			svc = c.Service
			fmt.Fprintf(w, "\n%s\n", svc)
		}
		dest := fmt.Sprintf("%s %s", c.Geography, c.Host)
		if len(c.Paths) > 0 {
			dest += " " + strings.Join(c.Paths, "|")
		}
		switch c.Kind {
		case "added":
			fmt.Fprintf(w, "  + %s: %s  [%s]\n", dest, c.New, c.Sources)
		case "removed":
			fmt.Fprintf(w, "  - %s: %s  [%s]\n", dest, c.Old, c.Sources)
		default:
			fmt.Fprintf(w, "  ~ %s: %s -> %s  [%s]\n", dest, c.Old, c.New, c.Sources)
		}
	}
	if len(d.SkippedAdded)+len(d.SkippedRemoved) > 0 {
		fmt.Fprintf(w, "\nrows of Microsoft's lists that map to no rule (review them):\n")
		for _, s := range d.SkippedAdded {
			fmt.Fprintf(w, "  + %s\n", s)
		}
		for _, s := range d.SkippedRemoved {
			fmt.Fprintf(w, "  - %s\n", s)
		}
	}
}
