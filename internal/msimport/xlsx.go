package msimport

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/xuri/excelize/v2"

	"github.com/defendergw/gateway/internal/allowlist"
)

// headerSearchRows is how far down a sheet the column header may be (title
// and note rows above it).
const headerSearchRows = 30

// importSpreadsheet reads mde-urls-commercial.xlsx or mde-urls-gov.xlsx:
// every sheet whose header row (within the first rows) has Microsoft's
// columns; sheets without such a row (notes, change logs) are passed over.
func importSpreadsheet(path string) (*Result, error) {
	file := filepath.Base(path)
	doc, ok := docByName(file)
	if !ok || doc.Sheet == "" {
		return nil, unknownDocument(file)
	}
	f, err := excelize.OpenFile(path)
	if err != nil {
		return nil, fmt.Errorf("%s: not an XLSX spreadsheet: %v", file, err)
	}
	defer f.Close()
	src := allowlist.Source{Tag: doc.Tag, URL: doc.SheetURL, Title: doc.Title + " (spreadsheet)"}
	if props, err := f.GetDocProps(); err == nil {
		// Spreadsheet templates carry a placeholder date (excelize's is
		// 2006-09-16): a date before Defender's URL lists existed is none.
		if d := parseDate(props.Modified); d >= "2016-01-01" {
			src.Date = d
		}
	}
	res := &Result{Sources: []allowlist.Source{src}}
	found := false
	for _, sheet := range f.GetSheetList() {
		rows, err := f.GetRows(sheet, excelize.Options{RawCellValue: false})
		if err != nil {
			return nil, fmt.Errorf("%s: sheet %s: %v", file, sheet, err)
		}
		t, err := sheetTable(doc, file, sheet, rows)
		if err != nil {
			return nil, err
		}
		if t == nil {
			continue
		}
		found = true
		if err := t.rules(res); err != nil {
			return nil, err
		}
	}
	if !found {
		return nil, fmt.Errorf("%s: no sheet has an Endpoint/URL column in its first %d rows: not Microsoft's layout",
			file, headerSearchRows)
	}
	if len(res.Rules) == 0 {
		return nil, fmt.Errorf("%s: no endpoint in any sheet", file)
	}
	return res, nil
}

// sheetTable finds the sheet's URL table, or nil if it has none. A header
// that has the Endpoint/URL column but lacks Geography or Port is not the
// layout Microsoft publishes: an error, not a guess.
func sheetTable(doc Doc, file, sheet string, rows [][]string) (*table, error) {
	for i := 0; i < len(rows) && i < headerSearchRows; i++ {
		cols, ok := mapColumns(rows[i])
		if !ok {
			continue
		}
		var missing []string
		if cols.geography < 0 {
			missing = append(missing, "Geography")
		}
		if cols.port < 0 {
			missing = append(missing, "Port")
		}
		if len(missing) > 0 {
			return nil, fmt.Errorf("%s: sheet %s, row %d: missing columns %s (have: %s)", file, sheet, i+1,
				strings.Join(missing, ", "), strings.Join(nonEmpty(cols.names), ", "))
		}
		t := &table{doc: doc, file: file, where: "sheet " + sheet, title: sheet, cols: cols}
		for j := i + 1; j < len(rows); j++ {
			t.rows = append(t.rows, row{n: j + 1, cells: rows[j]})
		}
		return t, nil
	}
	return nil, nil
}

func nonEmpty(ss []string) []string {
	var out []string
	for _, s := range ss {
		if s != "" {
			out = append(out, s)
		}
	}
	return out
}
