package msimport

import (
	"bytes"
	"fmt"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/defendergw/gateway/internal/allowlist"
)

// Markdown imports one article in the MicrosoftDocs/defender-docs format
// (YAML front matter with title and ms.date, then markdown) or as
// learn.microsoft.com renders it; file names it in errors and sources.
func Markdown(file string, data []byte) (*Result, error) {
	if !utf8.Valid(data) || bytes.IndexByte(data, 0) >= 0 {
		return nil, fmt.Errorf("%s: not a markdown text file", file)
	}
	text := strings.ReplaceAll(string(data), "\r\n", "\n")
	meta := frontMatter(text)
	doc, ok := docByName(meta["canonicalurl"], meta["source"], meta["source_path"], meta["title"], file)
	if !ok {
		return nil, unknownDocument(file)
	}
	src := allowlist.Source{Tag: doc.Tag, URL: doc.URL(), Title: doc.Title, Date: docDate(meta)}
	res := &Result{Sources: []allowlist.Source{src}}
	tables := markdownTables(file, doc, text)
	if len(tables) == 0 {
		return nil, fmt.Errorf("%s: no table with an Endpoint/URL column: not Microsoft's layout", file)
	}
	for _, t := range tables {
		if err := t.rules(res); err != nil {
			return nil, err
		}
	}
	if len(res.Rules) == 0 {
		return nil, fmt.Errorf("%s: no endpoint in any table", file)
	}
	return res, nil
}

// frontMatter reads the "key: value" lines of the YAML front matter, and
// the "<!-- Source: URL -->" and "<!-- Sitemap-Last-Modified: D -->"
// comments a saved learn.microsoft.com page carries. Keys are lower case.
func frontMatter(text string) map[string]string {
	meta := map[string]string{}
	lines := strings.Split(text, "\n")
	inFront := len(lines) > 0 && strings.TrimSpace(lines[0]) == "---"
	for i, line := range lines {
		line = strings.TrimSpace(line)
		if inFront && i > 0 && line == "---" {
			inFront = false
			continue
		}
		if c, ok := strings.CutPrefix(line, "<!--"); ok {
			c = strings.TrimSpace(strings.TrimSuffix(c, "-->"))
			if k, v, ok := strings.Cut(c, ":"); ok {
				meta[strings.ToLower(strings.TrimSpace(k))] = strings.TrimSpace(v)
			}
			continue
		}
		if !inFront {
			if strings.HasPrefix(line, "# ") && meta["title"] == "" {
				meta["title"] = strings.TrimPrefix(line, "# ")
			}
			continue
		}
		if k, v, ok := strings.Cut(line, ":"); ok {
			k = strings.ToLower(strings.TrimSpace(k))
			if _, have := meta[k]; !have {
				meta[k] = strings.Trim(strings.TrimSpace(v), `"'`)
			}
		}
	}
	return meta
}

// docDate is the article's date, YYYY-MM-DD: ms.date (12/25/2025 or
// 2026-07-03T00:00:00Z), else the page's last-modified comment.
func docDate(meta map[string]string) string {
	for _, v := range []string{meta["ms.date"], meta["sitemap-last-modified"]} {
		if d := parseDate(v); d != "" {
			return d
		}
	}
	return ""
}

func parseDate(v string) string {
	v = strings.TrimSpace(v)
	for _, layout := range []string{"01/02/2006", "2006-01-02", time.RFC3339, "2006-01-02T15:04:05.0000000Z"} {
		if t, err := time.Parse(layout, v); err == nil {
			return t.Format("2006-01-02")
		}
	}
	if len(v) >= 10 {
		if t, err := time.Parse("2006-01-02", v[:10]); err == nil {
			return t.Format("2006-01-02")
		}
	}
	return ""
}

var heading = regexp.MustCompile(`^#{1,6}\s+(.*)$`)

// markdownTables finds the pipe tables that have an Endpoint/URL column,
// each with the heading above it.
func markdownTables(file string, doc Doc, text string) []*table {
	lines := strings.Split(text, "\n")
	var tables []*table
	title := ""
	for i := 0; i < len(lines); i++ {
		line := strings.TrimSpace(lines[i])
		if m := heading.FindStringSubmatch(line); m != nil {
			title = strings.TrimSpace(m[1])
			continue
		}
		if !strings.HasPrefix(line, "|") || i+1 >= len(lines) || !separatorRow(lines[i+1]) {
			continue
		}
		cols, ok := mapColumns(splitRow(line))
		i++ // the separator
		if title == "" {
			title = fmt.Sprintf("%d", len(tables)+1)
		}
		t := &table{doc: doc, file: file, title: title, cols: cols}
		for i+1 < len(lines) && strings.HasPrefix(strings.TrimSpace(lines[i+1]), "|") {
			i++
			t.rows = append(t.rows, row{n: len(t.rows) + 1, cells: splitRow(strings.TrimSpace(lines[i]))})
		}
		if ok {
			tables = append(tables, t)
		}
	}
	return tables
}

// separatorRow reports the |---|:---:| line under a table's header.
func separatorRow(line string) bool {
	line = strings.TrimSpace(line)
	if !strings.HasPrefix(line, "|") {
		return false
	}
	cells := splitRow(line)
	for _, c := range cells {
		if strings.Trim(c, " :-") != "" || !strings.Contains(c, "-") {
			return false
		}
	}
	return len(cells) > 0
}

// splitRow splits "| a | b \| c | `d|e` |" into cells: escaped pipes and
// pipes inside code spans do not split.
func splitRow(line string) []string {
	line = strings.TrimSpace(line)
	line = strings.TrimPrefix(line, "|")
	if strings.HasSuffix(line, "|") && !strings.HasSuffix(line, `\|`) {
		line = line[:len(line)-1]
	}
	var cells []string
	var b strings.Builder
	code := false
	for i := 0; i < len(line); i++ {
		ch := line[i]
		switch {
		case ch == '\\' && i+1 < len(line) && line[i+1] == '|':
			b.WriteByte('|')
			i++
		case ch == '`':
			code = !code
			b.WriteByte(ch)
		case ch == '|' && !code:
			cells = append(cells, strings.TrimSpace(b.String()))
			b.Reset()
		default:
			b.WriteByte(ch)
		}
	}
	return append(cells, strings.TrimSpace(b.String()))
}
