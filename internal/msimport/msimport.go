// Package msimport reads Microsoft's published Defender URL lists, the
// spreadsheets (mde-urls-commercial.xlsx, mde-urls-gov.xlsx) and the markdown
// tables of the articles (the MicrosoftDocs/defender-docs format), and turns
// them into catalog rows for internal/allowlist.
//
// Every row keeps its source (the document's tag, the file, sheet or line,
// and the row). A row that names no endpoint, or a geography or requirement
// the importer does not know, is reported as skipped with the reason; it is
// never dropped silently. A cell that names an endpoint the gateway cannot
// use (an invalid host, a wildcard inside a name, a bad port) is an error
// naming the file, sheet and row: an import that would silently narrow or
// widen the allowlist must not produce a catalog.
package msimport

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/defendergw/gateway/internal/allowlist"
)

// Doc is one of Microsoft's published lists the importer recognises.
type Doc struct {
	Tag   string // the source tag the catalog's rows cite
	Slug  string // the article's name on learn.microsoft.com and in MicrosoftDocs/defender-docs
	Title string // the article's title, as Microsoft writes it
	// Sheet is the spreadsheet that carries the same list, without
	// extension ("" if none), and SheetURL where Microsoft publishes it.
	Sheet, SheetURL string
	// Gov marks the US Government lists: their rows without a geography
	// apply to every government cloud (USGov), and "WW" means the same.
	Gov bool
}

// URL is the article's address.
func (d Doc) URL() string { return "https://learn.microsoft.com/en-us/defender-endpoint/" + d.Slug }

// Docs are the lists the importer recognises, by file name (Microsoft's
// names) or by the article's title or address inside a markdown file.
var Docs = []Doc{
	{Tag: "S1", Slug: "standard-device-connectivity-urls-commercial",
		Title: "Microsoft Defender for Endpoint standard connectivity URLs - commercial",
		Sheet: "mde-urls-commercial",
		// The spreadsheet linked from the article ("Download the
		// spreadsheet"), the same rows as its Microsoft Defender URLs table.
		SheetURL: "https://download.microsoft.com/download/6/b/f/6bfff670-47c3-4e45-b01b-64a2610eaefa/mde-urls-commercial.xlsx"},
	{Tag: "S2", Slug: "streamlined-device-connectivity-urls-commercial",
		Title: "Microsoft Defender for Endpoint streamlined connectivity URLs - commercial"},
	{Tag: "G1", Slug: "standard-device-connectivity-urls-gov", Gov: true,
		Title:    "Microsoft Defender for Endpoint standard connectivity URLs - US government",
		Sheet:    "mde-urls-gov",
		SheetURL: "https://download.microsoft.com/download/6/a/0/6a041da5-c43b-4f17-8167-79dfdc10507f/mde-urls-gov.xlsx"},
	{Tag: "G2", Slug: "streamlined-device-connectivity-urls-gov", Gov: true,
		Title: "Microsoft Defender for Endpoint streamlined connectivity URLs - US government environments"},
}

// Result is what an import read.
type Result struct {
	Sources []allowlist.Source
	Rules   []allowlist.Rule // in document order, files in the order given
	// Skipped are the rows that became no rule, each "TAG#file, row: reason".
	Skipped []string
}

// Tags are the source tags of the imported documents.
func (r *Result) Tags() []string {
	var tags []string
	for _, s := range r.Sources {
		tags = append(tags, s.Tag)
	}
	return tags
}

// ErrUnknownDocument is returned for a file that is none of Docs.
var ErrUnknownDocument = errors.New("not one of Microsoft's Defender URL lists")

// Files imports Microsoft's lists from the named files: .xlsx spreadsheets
// and .md articles. Each document may be given once, in one form.
func Files(paths []string) (*Result, error) {
	if len(paths) == 0 {
		return nil, errors.New("no files to import")
	}
	res := &Result{}
	for _, path := range paths {
		var (
			part *Result
			err  error
		)
		switch strings.ToLower(filepath.Ext(path)) {
		case ".xlsx", ".xlsm":
			part, err = importSpreadsheet(path)
		case ".md", ".markdown":
			data, rerr := os.ReadFile(path)
			if rerr != nil {
				return nil, rerr
			}
			part, err = Markdown(filepath.Base(path), data)
		default:
			return nil, fmt.Errorf("%s: want a spreadsheet (.xlsx) or an article (.md)", path)
		}
		if err != nil {
			return nil, err
		}
		for _, s := range part.Sources {
			if slices.Contains(res.Tags(), s.Tag) {
				return nil, fmt.Errorf("%s: %s is already imported from another file: give one form of each list", path, s.Tag)
			}
		}
		res.Sources = append(res.Sources, part.Sources...)
		res.Rules = append(res.Rules, part.Rules...)
		res.Skipped = append(res.Skipped, part.Skipped...)
	}
	return res, nil
}

// docByName finds the document a file name or title names.
func docByName(names ...string) (Doc, bool) {
	for _, n := range names {
		n = strings.ToLower(n)
		if n == "" {
			continue
		}
		for _, d := range Docs {
			if strings.Contains(n, d.Slug) || (d.Sheet != "" && strings.Contains(n, d.Sheet)) ||
				strings.Contains(n, strings.ToLower(d.Title)) {
				return d, true
			}
		}
	}
	return Doc{}, false
}

// notImported are Microsoft articles the importer recognises and refuses,
// with the reason.
var notImported = map[string]string{
	"configure-network-connections-microsoft-defender-antivirus": "its URL table has no Geography column, so " +
		"importing it would open every data location's storage accounts everywhere; the catalog keeps its extra rows " +
		"(source S5) by hand",
}

func unknownDocument(file string) error {
	for slug, why := range notImported {
		if strings.Contains(strings.ToLower(file), slug) {
			return fmt.Errorf("%s: not imported: %s", file, why)
		}
	}
	var names []string
	for _, d := range Docs {
		names = append(names, d.Slug+".md")
		if d.Sheet != "" {
			names = append(names, d.Sheet+".xlsx")
		}
	}
	return fmt.Errorf("%s: %w (keep Microsoft's file names: %s)", file, ErrUnknownDocument, strings.Join(names, ", "))
}

// Merge builds the catalog that results from importing res over base: the
// rows of base that cite only the imported documents are replaced by the
// imported rows; rows that another source also vouches for stay. The
// imported rows come first, in document order, then the kept rows.
func Merge(base *allowlist.Catalog, res *Result, version string, published time.Time) *allowlist.Catalog {
	imported := res.Tags()
	out := &allowlist.Catalog{Version: version, Published: published}
	out.Rules = append(out.Rules, res.Rules...)
	for _, r := range base.Rules {
		kept := false
		for _, t := range allowlist.SourceTags(r.Source) {
			if !slices.Contains(imported, t) {
				kept = true
			}
		}
		if kept {
			out.Rules = append(out.Rules, r)
		}
	}
	var dropped []string
	out.Rules, dropped = dropUnscoped(out.Rules, len(res.Rules))
	for i := range out.Rules {
		out.Rules[i].ID = ""
	}
	cited := map[string]bool{}
	for _, r := range out.Rules {
		for _, t := range allowlist.SourceTags(r.Source) {
			cited[t] = true
		}
	}
	out.Sources = append(out.Sources, res.Sources...)
	for _, s := range base.Sources {
		if !slices.Contains(imported, s.Tag) && cited[s.Tag] {
			out.Sources = append(out.Sources, s)
		}
	}
	out.Skipped = append(out.Skipped, res.Skipped...)
	out.Skipped = append(out.Skipped, dropped...)
	for _, s := range base.Skipped {
		if tags := allowlist.SourceTags(s); len(tags) == 0 || !slices.Contains(imported, tags[0]) {
			out.Skipped = append(out.Skipped, s)
		}
	}
	return out
}

// dropUnscoped removes imported rows (the first n of rules) that would open
// an exact host everywhere (WW, or USGov in the government clouds) while
// another row limits the same host to one location or cloud: a table
// without a Geography column must not undo the geography of the tables
// that have one. Each removal becomes a skip note. Device rows and portal
// rows (for administrators' browsers) are compared only with their own
// kind: the GCC portal's login.microsoftonline.com does not scope the Live
// Response row every government cloud needs.
func dropUnscoped(rules []allowlist.Rule, n int) ([]allowlist.Rule, []string) {
	type key struct {
		host   string
		device bool
	}
	scoped := map[key]allowlist.Geography{}
	for _, r := range rules {
		if r.Geography != allowlist.WW && r.Geography != allowlist.USGov && !r.Wildcard() {
			scoped[key{r.Host, r.TLSExempt}] = r.Geography
		}
	}
	var kept []allowlist.Rule
	var notes []string
	for i, r := range rules {
		g, isScoped := scoped[key{r.Host, r.TLSExempt}]
		everywhere := (r.Geography == allowlist.WW && !g.Government()) || (r.Geography == allowlist.USGov && g.Government())
		if i < n && isScoped && everywhere {
			notes = append(notes, fmt.Sprintf("%s: %s has no geography here but is listed for %s elsewhere: not opened everywhere",
				r.Source, r.Host, g))
			continue
		}
		kept = append(kept, r)
	}
	return kept, notes
}
