package msimport

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/xuri/excelize/v2"

	"github.com/defendergw/gateway/internal/allowlist"
)

// standardMD is a fixture in the layout of the MicrosoftDocs/defender-docs
// article "standard-device-connectivity-urls-commercial.md", with the
// messy cells the real one has: code spans and bare names, escaped
// parentheses, <br> separators, footnote marks, links, a prose row with no
// host, a geography nobody knows, a portal table and a process table.
const standardMD = `---
title: Microsoft Defender for Endpoint standard connectivity URLs - commercial 
ms.date: 07/03/2026
---

# Microsoft Defender for Endpoint standard connectivity URLs - commercial

## Microsoft Defender URLs

|Service|Geography|Category|Port|Endpoint/URL|Endpoint/URL Description|Required or Optional|Windows 10, 11; Server 2022, 2019, 2016 \(Unified Agent\)|Windows 7, 8.1|Mac|Linux|Comments|
|---|---|---|---|---|---|:---:|:---:|:---:|:---:|:---:|---|
|Microsoft Defender for Endpoint|WW|CRL|80|` + "`crl.microsoft.com`" + `|Certificate Revocation Lists - required to validate certificates|Required|Yes|||Yes||
|Microsoft Defender for Endpoint|WW|CRL|80|` + "`www.microsoft.com/pkiops/*`" + `|Used when creating the SSL connection to MAPS for updating the CRL|Required|Yes||Yes|Yes||
|Microsoft Defender Antivirus|WW|Common|443|` + "`*ecs.office.com/config/v1/MicrosoftWindowsDefenderClient`" + `|Used by Microsoft Defender Antivirus to download internal feature configurations (ECS) for Microsoft Defender Core service|Required|Yes|No|No|No||
|Microsoft Defender for Endpoint | Azure UAE Central \(AEC\) | Microsoft Defender for Endpoint AEC | 443 | ` + "`winatp-gw-aec0a.microsoft.com`" + ` | Microsoft Defender for Endpoint Command and Control | Required | Yes | Yes | Yes | Yes | |
|Microsoft Defender for Endpoint|WW|Mac|443|Root URL for public Microsoft CDN endpoints (referred to as ChannelURL) - for the updated URL, see [Using Custom channel and ManifestServer](/en-us/microsoft-365-apps/mac/mau-configure-organization-specific-updates)|Microsoft Office Content Delivery Network (CDN) - Product Updates|Required||||Yes|New CDN endpoint starting with macOS build 101.26012.0012|
|Microsoft Defender Antivirus|WW|MU / WU|443|` + "`https://www.microsoft.com/security/encyclopedia/adlpackages.aspx`" + `|MU / WU - Security intelligence and product updates|Required|Yes\*|Yes\*|Yes|Yes|\*Optional if updates are being managed internally|
|Microsoft Defender for Endpoint|US|Microsoft Defender for Endpoint US|443|winatp-gw-cus.microsoft.com<br>winatp-gw-eus.microsoft.com|Microsoft Defender for Endpoint Command and Control|Required|Yes|Yes|Yes|Yes||
|Microsoft Defender for Endpoint|Mars|Microsoft Defender for Endpoint Mars|443|` + "`winatp-gw-mars.microsoft.com`" + `|Microsoft Defender for Endpoint Command and Control|Required|Yes|||||
|Microsoft Defender for Endpoint|WW|Microsoft Defender for Endpoint|443|` + "`\\*.blob.core.windows.net/networkscannerstable/*`" + `|Vulnerability assessment for network devices (network scanner)|Optional|Yes|Yes|||Supported on Windows 8 and above.|

## Defender portal URLs

|Service|Geography|URL|
|---|---|---|
|Microsoft Defender for Endpoint|WW|` + "`https://*.securitycenter.windows.com`" + `|

## Client processes

|Process|Path|Comment|
|---|---|---|
|MsSense.exe|C:\Program Files\Windows Defender Advanced Threat Protection|service executable|
`

func findRule(rules []allowlist.Rule, host string, geo allowlist.Geography) *allowlist.Rule {
	for i := range rules {
		if rules[i].Host == host && rules[i].Geography == geo {
			return &rules[i]
		}
	}
	return nil
}

func TestMarkdown(t *testing.T) {
	res, err := Markdown("standard-device-connectivity-urls-commercial.md", []byte(standardMD))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Sources) != 1 || res.Sources[0].Tag != "S1" || res.Sources[0].Date != "2026-07-03" ||
		!strings.HasSuffix(res.Sources[0].URL, "/defender-endpoint/standard-device-connectivity-urls-commercial") {
		t.Errorf("sources = %+v, want S1 dated 2026-07-03 at the learn.microsoft.com address", res.Sources)
	}
	tests := []struct {
		name      string
		host      string
		geo       allowlist.Geography
		ports     []uint16
		paths     []string
		service   string
		required  bool
		exempt    bool
		locatorIn string
	}{
		{"crl host on port 80", "crl.microsoft.com", allowlist.WW, []uint16{80}, nil, "crl", true, true, `table "Microsoft Defender URLs", row 1`},
		{"path glob becomes a prefix", "www.microsoft.com", allowlist.WW, []uint16{80}, []string{"/pkiops/"}, "crl", true, true, ""},
		{"*ecs.office.com opens the apex", "ecs.office.com", allowlist.WW, []uint16{443},
			[]string{"/config/v1/MicrosoftWindowsDefenderClient"}, "av-core", true, true, ""},
		{"*ecs.office.com opens subdomains", "*.ecs.office.com", allowlist.WW, []uint16{443},
			[]string{"/config/v1/MicrosoftWindowsDefenderClient"}, "av-core", true, true, ""},
		{"UAE label with escaped parentheses", "winatp-gw-aec0a.microsoft.com", allowlist.UAE, []uint16{443}, nil, "edr-cnc", true, true, ""},
		{"https URL with a path", "www.microsoft.com", allowlist.WW, []uint16{443},
			[]string{"/security/encyclopedia/adlpackages.aspx"}, "av-update", true, true, ""},
		{"first of two bare names", "winatp-gw-cus.microsoft.com", allowlist.US, []uint16{443}, nil, "edr-cnc", true, true, `table "Microsoft Defender URLs", row 7`},
		{"second of two bare names", "winatp-gw-eus.microsoft.com", allowlist.US, []uint16{443}, nil, "edr-cnc", true, true, `table "Microsoft Defender URLs", row 7`},
		{"escaped wildcard with path", "*.blob.core.windows.net", allowlist.WW, []uint16{443},
			[]string{"/networkscannerstable/"}, "network-scanner", false, true, ""},
		{"portal row: not exempt, not anonymous", "*.securitycenter.windows.com", allowlist.WW, []uint16{443}, nil, "admin-portal", true, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var r *allowlist.Rule
			for i := range res.Rules {
				x := &res.Rules[i]
				if x.Host == tt.host && x.Geography == tt.geo && slices.Equal(x.Ports, tt.ports) && slices.Equal(x.Paths, tt.paths) {
					r = x
				}
			}
			if r == nil {
				t.Fatalf("no rule %s %s ports %v paths %v in %d rules", tt.geo, tt.host, tt.ports, tt.paths, len(res.Rules))
			}
			if r.ServiceID != tt.service || r.Required != tt.required || r.TLSExempt != tt.exempt || r.Anonymous != tt.exempt {
				t.Errorf("got service %s required %v exempt %v anonymous %v, want %s %v %v %v",
					r.ServiceID, r.Required, r.TLSExempt, r.Anonymous, tt.service, tt.required, tt.exempt, tt.exempt)
			}
			if !strings.HasPrefix(r.Source, "S1#standard-device-connectivity-urls-commercial.md, table ") ||
				!strings.Contains(r.Source, tt.locatorIn) {
				t.Errorf("source = %q, want S1#<file>, table T, row N (containing %q)", r.Source, tt.locatorIn)
			}
		})
	}
	if findRule(res.Rules, "msssense.exe", allowlist.WW) != nil || len(res.Rules) != 10 {
		t.Errorf("got %d rules, want 10 (the process table is not a URL table)", len(res.Rules))
	}
	wantSkipped := []string{"no host name in the Endpoint/URL cell", `unknown geography "Mars"`}
	if len(res.Skipped) != len(wantSkipped) {
		t.Fatalf("skipped = %q, want %d notes", res.Skipped, len(wantSkipped))
	}
	for i, want := range wantSkipped {
		if !strings.HasPrefix(res.Skipped[i], "S1#standard-device-connectivity-urls-commercial.md, table ") ||
			!strings.Contains(res.Skipped[i], want) {
			t.Errorf("skipped[%d] = %q, want the row's locator and %q", i, res.Skipped[i], want)
		}
	}
}

// TestMarkdownGov checks the government rules: no geography is US Gov,
// "WW" in a government list too, and the government labels map to clouds.
func TestMarkdownGov(t *testing.T) {
	md := `---
title: Microsoft Defender for Endpoint streamlined connectivity URLs - US government environments (Preview)
ms.date: 2026-07-03T00:00:00.0000000Z
---
## US Gov URLs
| Service | Geography | Category | Port | Endpoint/URL | Description | Required |
| --- | --- | --- | --- | --- | --- | --- |
| Consolidated Defender for Endpoint services | USGov | Streamlined connectivity URL | 443 | \*.endpoint.security.microsoft.us | Streamlined connectivity URL consolidation | Required |
| Microsoft Defender SmartScreen | GCC High | Reporting and Notifications | 443 | unitedstates1.ss.wd.microsoft.us | SmartScreen protection | Required |
| Defender for Endpoint | GCC Mod | Internal configuration management | 443 | https://gccmod.ecs.office.com/config/v1 | Linux internal configurations | Required |
| Defender for Endpoint | DoD | Internal configuration management | 443 | https://config.ecs.dod.teams.microsoft.us/config/v1 | Linux internal configurations | Required |
| Consolidated Defender for Endpoint services | WW | Streamlined connectivity new URL pattern | 443 | ` + "`*.endpoint.security.microsoft.com`" + ` | consolidation | Required |
`
	res, err := Markdown("saved-page.md", []byte(md))
	if err != nil {
		t.Fatal(err)
	}
	if res.Sources[0].Tag != "G2" || res.Sources[0].Date != "2026-07-03" {
		t.Errorf("source = %+v, want G2 (recognised by its title) dated 2026-07-03", res.Sources[0])
	}
	for _, tt := range []struct {
		host    string
		geo     allowlist.Geography
		service string
	}{
		{"*.endpoint.security.microsoft.us", allowlist.USGov, "streamlined"},
		{"unitedstates1.ss.wd.microsoft.us", allowlist.GCCHigh, "smartscreen"},
		{"gccmod.ecs.office.com", allowlist.GCC, "config-management"},
		{"config.ecs.dod.teams.microsoft.us", allowlist.DoD, "config-management"},
		{"*.endpoint.security.microsoft.com", allowlist.USGov, "streamlined"},
	} {
		if r := findRule(res.Rules, tt.host, tt.geo); r == nil || r.ServiceID != tt.service {
			t.Errorf("%s %s: got %+v, want service %s", tt.geo, tt.host, r, tt.service)
		}
	}
}

// writeSheet writes an XLSX file with excelize: each sheet's rows as given.
func writeSheet(t *testing.T, path string, modified string, sheets map[string][][]any, order []string) {
	t.Helper()
	f := excelize.NewFile()
	defer f.Close()
	for i, name := range order {
		if i == 0 {
			if err := f.SetSheetName("Sheet1", name); err != nil {
				t.Fatal(err)
			}
		} else if _, err := f.NewSheet(name); err != nil {
			t.Fatal(err)
		}
		for r, cells := range sheets[name] {
			cell, _ := excelize.CoordinatesToCellName(1, r+1)
			if err := f.SetSheetRow(name, cell, &cells); err != nil {
				t.Fatal(err)
			}
		}
	}
	if modified != "" {
		if err := f.SetDocProps(&excelize.DocProperties{Modified: modified, Created: modified}); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.SaveAs(path); err != nil {
		t.Fatal(err)
	}
}

var sheetHeader = []any{"Service", "Geography", "Category", "Port", "Endpoint/URL", "Endpoint/URL Description",
	"Required or Optional", "Windows 10, 11; Server 2022, 2019, 2016 (Unified Agent)", "Windows 7, 8.1", "Mac", "Linux", "Comments"}

func TestSpreadsheet(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "mde-urls-commercial.xlsx")
	writeSheet(t, path, "2026-07-03T09:00:00Z", map[string][][]any{
		"Change log": {{"Date", "Change"}, {"06/02/2026", "Added reflector.defender.microsoft.com"}},
		"Microsoft Defender URLs": {
			{"Microsoft Defender for Endpoint URL list for commercial customers"},
			{},
			sheetHeader,
			{"Microsoft Defender for Endpoint", " WW ", "CRL", "80", "crl.microsoft.com", "Certificate Revocation Lists", "Required", "Yes"},
			{"Microsoft Defender for Endpoint", "EU", "Microsoft Defender for Endpoint EU", "443 ",
				"winatp-gw-neu.microsoft.com\nwinatp-gw-weu.microsoft.com", "Microsoft Defender for Endpoint Command and Control", "Required"},
			{},
			{"Microsoft Defender Antivirus", "WW", "MU / WU", 443, "go.microsoft.com*", "MU / WU - Security intelligence and product updates", "Required", "Yes*"},
			{"Microsoft Defender Antivirus", "WW", "MU (ADL)", "80, 443", "*.download.windowsupdate.com", "ADL - Alternate location", "Optional"},
			{"Microsoft Defender for Endpoint", "WW", "Common", "443", "settings-win.data.microsoft.com", "Connected User Experiences and Telemetry Channel", "Maybe"},
		},
	}, []string{"Change log", "Microsoft Defender URLs"})
	res, err := Files([]string{path})
	if err != nil {
		t.Fatal(err)
	}
	if s := res.Sources[0]; s.Tag != "S1" || s.Date != "2026-07-03" || !strings.HasSuffix(s.URL, "/mde-urls-commercial.xlsx") {
		t.Errorf("source = %+v, want S1, 2026-07-03, the download address", s)
	}
	for _, tt := range []struct {
		name    string
		host    string
		geo     allowlist.Geography
		ports   []uint16
		service string
		row     string
	}{
		{"padded geography", "crl.microsoft.com", allowlist.WW, []uint16{80}, "crl", "row 4"},
		{"first name of a multi-line cell", "winatp-gw-neu.microsoft.com", allowlist.EU, []uint16{443}, "edr-cnc", "row 5"},
		{"second name of a multi-line cell", "winatp-gw-weu.microsoft.com", allowlist.EU, []uint16{443}, "edr-cnc", "row 5"},
		{"footnote mark after a name", "go.microsoft.com", allowlist.WW, []uint16{443}, "av-update", "row 7"},
		{"two ports in one cell", "*.download.windowsupdate.com", allowlist.WW, []uint16{80, 443}, "av-adl", "row 8"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := findRule(res.Rules, tt.host, tt.geo)
			if r == nil {
				t.Fatalf("no rule for %s %s", tt.geo, tt.host)
			}
			if !slices.Equal(r.Ports, tt.ports) || r.ServiceID != tt.service {
				t.Errorf("ports %v service %s, want %v %s", r.Ports, r.ServiceID, tt.ports, tt.service)
			}
			want := "S1#mde-urls-commercial.xlsx, sheet Microsoft Defender URLs, " + tt.row
			if r.Source != want {
				t.Errorf("source = %q, want %q", r.Source, want)
			}
		})
	}
	if len(res.Skipped) != 1 || !strings.Contains(res.Skipped[0], "row 9") || !strings.Contains(res.Skipped[0], `"Maybe"`) {
		t.Errorf("skipped = %q, want row 9's unknown requirement", res.Skipped)
	}
}

func TestSpreadsheetGov(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mde-urls-gov.xlsx")
	writeSheet(t, path, "", map[string][][]any{"URLs": {
		sheetHeader,
		{"Microsoft Defender for Endpoint", "US Gov", "CRL", "80", "crl.microsoft.com/pki/crl/*", "Certificate Revocation Lists", "Required"},
		{"Microsoft Defender for Endpoint", "GCC", "Microsoft Defender for Endpoint GCC", "443", "winatp-gw-usmt.microsoft.com", "Command and Control", "Required"},
		{"Microsoft Defender for Endpoint", "Government Community Cloud", "Microsoft Defender for Endpoint GCC", "443", "unitedstates4.x.cp.wd.microsoft.us",
			"Used by Microsoft Defender Antivirus to provide cloud-delivered protection and security intelligence updates", "Required"},
		{"Microsoft Defender for Endpoint", "GCC High", "Microsoft Defender for Endpoint GCC High", "443", "winatp-gw-usgt.microsoft.com", "Command and Control", "Required"},
		{"Microsoft Defender for Endpoint", "DoD", "Microsoft Defender for Endpoint DoD", "443", "winatp-gw-usgv.microsoft.com", "Command and Control", "Required"},
	}}, []string{"URLs"})
	res, err := Files([]string{path})
	if err != nil {
		t.Fatal(err)
	}
	if res.Sources[0].Tag != "G1" || res.Sources[0].Date != "" {
		t.Errorf("source = %+v, want G1 with no date (the file carries none)", res.Sources[0])
	}
	for _, tt := range []struct {
		host  string
		geo   allowlist.Geography
		paths []string
	}{
		{"crl.microsoft.com", allowlist.USGov, []string{"/pki/crl/"}},
		{"winatp-gw-usmt.microsoft.com", allowlist.GCC, nil},
		{"unitedstates4.x.cp.wd.microsoft.us", allowlist.GCC, nil},
		{"winatp-gw-usgt.microsoft.com", allowlist.GCCHigh, nil},
		{"winatp-gw-usgv.microsoft.com", allowlist.DoD, nil},
	} {
		if r := findRule(res.Rules, tt.host, tt.geo); r == nil || !slices.Equal(r.Paths, tt.paths) {
			t.Errorf("%s %s: got %+v, want paths %v", tt.geo, tt.host, r, tt.paths)
		}
	}
}

func TestBadInput(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	noPort := filepath.Join(dir, "no-port", "mde-urls-commercial.xlsx")
	os.MkdirAll(filepath.Dir(noPort), 0o755)
	writeSheet(t, noPort, "", map[string][][]any{"URLs": {{"note"}, {"Service", "Geography", "Endpoint/URL"}}}, []string{"URLs"})
	badHost := filepath.Join(dir, "bad-host", "mde-urls-commercial.xlsx")
	os.MkdirAll(filepath.Dir(badHost), 0o755)
	writeSheet(t, badHost, "", map[string][][]any{"URLs": {sheetHeader,
		{"Microsoft Defender for Endpoint", "WW", "CRL", "80", "crl.microsoft.com", "x", "Required"},
		{"Microsoft Defender for Endpoint", "WW", "Common", "443", "winatp_gw..microsoft.com", "x", "Required"}}}, []string{"URLs"})
	badPort := filepath.Join(dir, "bad-port", "mde-urls-commercial.xlsx")
	os.MkdirAll(filepath.Dir(badPort), 0o755)
	writeSheet(t, badPort, "", map[string][][]any{"URLs": {sheetHeader,
		{"Microsoft Defender for Endpoint", "WW", "Common", "99999", "events.data.microsoft.com", "x", "Required"}}}, []string{"URLs"})
	midWildcard := write("standard-device-connectivity-urls-commercial.md",
		"# Microsoft Defender for Endpoint standard connectivity URLs - commercial\n\n|Geography|Port|Endpoint/URL|\n|---|---|---|\n|WW|443|`events.*.microsoft.com`|\n")
	noTable := filepath.Join(dir, "notable", "standard-device-connectivity-urls-gov.md")
	os.MkdirAll(filepath.Dir(noTable), 0o755)
	os.WriteFile(noTable, []byte("# Microsoft Defender for Endpoint standard connectivity URLs - US government\n\nNo tables here.\n"), 0o644)
	tests := []struct {
		name  string
		files []string
		want  []string
	}{
		{"not a spreadsheet", []string{write("mde-urls-gov.xlsx", "this is not a zip file")}, []string{"mde-urls-gov.xlsx", "not an XLSX spreadsheet"}},
		{"missing columns", []string{noPort}, []string{"mde-urls-commercial.xlsx", "sheet URLs, row 2", "missing columns Port"}},
		{"invalid host", []string{badHost}, []string{"mde-urls-commercial.xlsx", "sheet URLs, row 3", "winatp_gw..microsoft.com"}},
		{"invalid port", []string{badPort}, []string{"sheet URLs, row 2", "port", "99999"}},
		{"wildcard inside a name", []string{midWildcard}, []string{`table "Microsoft Defender for Endpoint standard connectivity URLs - commercial", row 1`, "events.*.microsoft.com"}},
		{"markdown without a URL table", []string{noTable}, []string{"standard-device-connectivity-urls-gov.md", "no table with an Endpoint/URL column"}},
		{"unknown document", []string{write("urls.xlsx", "x")}, []string{"urls.xlsx", "not one of Microsoft's Defender URL lists", "mde-urls-commercial.xlsx"}},
		{"unknown extension", []string{write("mde-urls-commercial.csv", "x")}, []string{"want a spreadsheet (.xlsx) or an article (.md)"}},
		{"the antivirus article", []string{write("configure-network-connections-microsoft-defender-antivirus.md",
			"# Configure and validate Microsoft Defender Antivirus network connections\n\n|Service and description|URL|\n|---|---|\n|MAPS|`*.wdcp.microsoft.com`|\n")},
			[]string{"not imported", "no Geography column"}},
		{"one list twice", []string{badPort, midWildcard}, []string{"invalid"}}, // the first error wins
		{"no files", nil, []string{"no files"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := Files(tt.files)
			if err == nil {
				t.Fatalf("Files succeeded with %d rules, want an error", len(res.Rules))
			}
			for _, w := range tt.want {
				if w == "invalid" {
					continue
				}
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
	if _, err := Files([]string{write("urls.md", "# something else\n")}); !errors.Is(err, ErrUnknownDocument) {
		t.Errorf("unknown markdown: got %v, want ErrUnknownDocument", err)
	}
}

func TestSameListTwice(t *testing.T) {
	dir := t.TempDir()
	md := filepath.Join(dir, "standard-device-connectivity-urls-commercial.md")
	os.WriteFile(md, []byte(standardMD), 0o644)
	xlsx := filepath.Join(dir, "mde-urls-commercial.xlsx")
	writeSheet(t, xlsx, "", map[string][][]any{"URLs": {sheetHeader,
		{"Microsoft Defender for Endpoint", "WW", "CRL", "80", "crl.microsoft.com", "x", "Required"}}}, []string{"URLs"})
	_, err := Files([]string{md, xlsx})
	if err == nil || !strings.Contains(err.Error(), "S1 is already imported") {
		t.Errorf("got %v, want a refusal to import S1 twice", err)
	}
}

// TestMerge checks that an import replaces the rows of the imported lists
// only: rows another source vouches for stay.
func TestMerge(t *testing.T) {
	base, err := allowlist.ParseCatalog([]byte(`# catalog-version: 1
# catalog-published: 2026-01-01
# source: S1 2025-12-25 https://learn.microsoft.com/en-us/defender-endpoint/standard-device-connectivity-urls-commercial
# source: S5 2024-10-08 https://learn.microsoft.com/en-us/defender-endpoint/configure-network-connections-microsoft-defender-antivirus
# source: OLD - https://example.invalid/cited-by-no-row
# skipped: S1#old.md, line 9: no host name in the Endpoint/URL cell "x"
# skipped: S5#old.md, line 3: something else
service_id,service_name,geography,host,paths,ports,required,tls_exempt,anonymous,source,comment
crl,CRL,WW,crl.microsoft.com,/pki/crl/products,80,required,yes,yes,S1#old,
av-adl,ADL,WW,go.microsoft.com,,80,required,yes,yes,S5,port 80
mma,MMA,WW,*.azure-automation.net,,443,optional,yes,yes,S1#old,
both,Both,WW,both.microsoft.com,,443,optional,yes,yes,S1;S5,
`), "base")
	if err != nil {
		t.Fatal(err)
	}
	res, err := Markdown("standard-device-connectivity-urls-commercial.md", []byte(standardMD))
	if err != nil {
		t.Fatal(err)
	}
	out := Merge(base, res, "2", time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC))
	if r := findRule(out.Rules, "crl.microsoft.com", allowlist.WW); r == nil || len(r.Paths) != 0 {
		t.Errorf("crl.microsoft.com = %+v, want the imported host-wide row", r)
	}
	if r := findRule(out.Rules, "go.microsoft.com", allowlist.WW); r == nil || r.Source != "S5" {
		t.Errorf("go.microsoft.com port 80 (S5) = %+v, want it kept", r)
	}
	if r := findRule(out.Rules, "*.azure-automation.net", allowlist.WW); r != nil {
		t.Errorf("a row cited only by S1 survived the S1 import: %+v", r)
	}
	if r := findRule(out.Rules, "both.microsoft.com", allowlist.WW); r == nil {
		t.Error("a row S5 also vouches for was dropped")
	}
	var tags []string
	for _, s := range out.Sources {
		tags = append(tags, s.Tag)
	}
	if !slices.Equal(tags, []string{"S1", "S5"}) {
		t.Errorf("sources = %v, want [S1 S5] (S1 replaced, OLD no longer cited)", tags)
	}
	if s, _ := out.Source("S1"); s.Date != "2026-07-03" {
		t.Errorf("S1 date = %q, want the imported article's", s.Date)
	}
	if !slices.ContainsFunc(out.Skipped, func(s string) bool { return strings.HasPrefix(s, "S5#old.md") }) ||
		slices.ContainsFunc(out.Skipped, func(s string) bool { return strings.HasPrefix(s, "S1#old.md") }) {
		t.Errorf("skipped = %q, want S5's kept and S1's replaced", out.Skipped)
	}
	data, err := out.Format()
	if err != nil {
		t.Fatal(err)
	}
	back, err := allowlist.ParseCatalog(data, "merged")
	if err != nil {
		t.Fatalf("merged catalog does not read back: %v", err)
	}
	if d := allowlist.DiffCatalogs(out, back); !d.Empty() {
		t.Errorf("format and parse changed the catalog: %+v", d)
	}
}

// streamlinedMD has the streamlined article's tables without a Geography
// column: the core table (WW), the MMA table (locations in the category),
// and a row naming a storage account S1 scopes to the US.
const streamlinedMD = `---
title: Microsoft Defender for Endpoint streamlined connectivity URLs - commercial
ms.date: 12/25/2025
---
## Common endpoints
|Service|Port|Endpoint/URLs|Endpoint/URL Description|Type|Comments|OS|
|-|-|-|-|-|-|-|
|Defender for Endpoint|443|https://config.edge.skype.com/config/v1|Internal configuration management|Required|Linux|Linux|
|Malware storage|443|ussus1eastprod.blob.core.windows.net|Malware Sample Submission Storage|Required||All|
## Windows 7, 8.1, 2008R2 (MMA)
|Category|Port|Endpoint/URL|Endpoint/URL Description|
|---|---|---|---|
|Microsoft Defender for Endpoint AU|443|winatp-gw-aue.microsoft.com<br>winatp-gw-aus.microsoft.com|Microsoft Defender for Endpoint Command and Control |
`

func TestNoGeographyColumn(t *testing.T) {
	s2, err := Markdown("streamlined-device-connectivity-urls-commercial.md", []byte(streamlinedMD))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		host string
		geo  allowlist.Geography
	}{
		{"no column, no location: WW", "config.edge.skype.com", allowlist.WW},
		{"location from the category", "winatp-gw-aue.microsoft.com", allowlist.AU},
		{"second name, same category", "winatp-gw-aus.microsoft.com", allowlist.AU},
	} {
		if findRule(s2.Rules, tt.host, tt.geo) == nil {
			t.Errorf("%s: no %s row for %s", tt.name, tt.geo, tt.host)
		}
	}
	if findRule(s2.Rules, "winatp-gw-aue.microsoft.com", allowlist.WW) != nil {
		t.Error("an AU gateway host became a WW row")
	}
	// Merged with S1, which scopes the storage account to the US, the WW
	// row from the table without geography must not open it everywhere.
	s1, err := Markdown("standard-device-connectivity-urls-commercial.md", []byte(strings.Replace(standardMD,
		"|Microsoft Defender for Endpoint|US|Microsoft Defender for Endpoint US|443|winatp-gw-cus.microsoft.com",
		"|Microsoft Defender for Endpoint|US|Microsoft Defender for Endpoint US|443|`ussus1eastprod.blob.core.windows.net`|Malware Sample Submission Storage|Required||||||\n"+
			"|Microsoft Defender for Endpoint|US|Microsoft Defender for Endpoint US|443|winatp-gw-cus.microsoft.com", 1)))
	if err != nil {
		t.Fatal(err)
	}
	both := &Result{Sources: append(s1.Sources, s2.Sources...), Rules: append(s1.Rules, s2.Rules...)}
	out := Merge(&allowlist.Catalog{}, both, "x", time.Now())
	if findRule(out.Rules, "ussus1eastprod.blob.core.windows.net", allowlist.WW) != nil {
		t.Error("the US storage account is open everywhere after the merge")
	}
	if findRule(out.Rules, "ussus1eastprod.blob.core.windows.net", allowlist.US) == nil {
		t.Error("the US row of the storage account is gone")
	}
	if !slices.ContainsFunc(out.Skipped, func(s string) bool {
		return strings.Contains(s, "ussus1eastprod.blob.core.windows.net has no geography here but is listed for US")
	}) {
		t.Errorf("skipped = %q, want a note for the dropped WW row", out.Skipped)
	}
}

// TestDropUnscopedKinds: a portal row scoped to one cloud does not scope a
// device row of the same host (G1's GCC portal login.microsoftonline.com and
// the Live Response row every government cloud needs).
func TestDropUnscopedKinds(t *testing.T) {
	device := allowlist.Rule{Action: allowlist.Allow, Host: "login.microsoftonline.com", Ports: []uint16{443},
		Geography: allowlist.USGov, ServiceID: "live-response", TLSExempt: true, Anonymous: true, Source: "G1#a"}
	portal := allowlist.Rule{Action: allowlist.Allow, Host: "login.microsoftonline.com", Ports: []uint16{443},
		Geography: allowlist.GCC, ServiceID: "admin-portal", Source: "G1#b"}
	scopedDevice := device
	scopedDevice.Geography, scopedDevice.Source = allowlist.DoD, "G1#c"
	for _, tt := range []struct {
		name      string
		rules     []allowlist.Rule
		wantKept  int
		wantNotes int
	}{
		{"portal row does not scope a device row", []allowlist.Rule{device, portal}, 2, 0},
		{"device row of one cloud scopes the unscoped device row", []allowlist.Rule{device, scopedDevice}, 1, 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out := Merge(&allowlist.Catalog{}, &Result{Rules: tt.rules}, "x", time.Now())
			if len(out.Rules) != tt.wantKept || len(out.Skipped) != tt.wantNotes {
				t.Errorf("kept %d rules, %d notes (%q); want %d, %d", len(out.Rules), len(out.Skipped), out.Skipped, tt.wantKept, tt.wantNotes)
			}
		})
	}
}

// TestMarkdownLineEndings: learn.microsoft.com pages mix CRLF (the article
// body) and LF (the front matter); both read the same.
func TestMarkdownLineEndings(t *testing.T) {
	lf, err := Markdown("standard-device-connectivity-urls-commercial.md", []byte(standardMD))
	if err != nil {
		t.Fatal(err)
	}
	i := strings.Index(standardMD, "\n# ")
	mixed := standardMD[:i] + strings.ReplaceAll(standardMD[i:], "\n", "\r\n")
	crlf, err := Markdown("standard-device-connectivity-urls-commercial.md", []byte(mixed))
	if err != nil {
		t.Fatal(err)
	}
	if len(crlf.Rules) != len(lf.Rules) || len(crlf.Skipped) != len(lf.Skipped) {
		t.Fatalf("CRLF: %d rules %d skipped, LF: %d rules %d skipped", len(crlf.Rules), len(crlf.Skipped), len(lf.Rules), len(lf.Skipped))
	}
	for i := range lf.Rules {
		if a, b := lf.Rules[i], crlf.Rules[i]; a.Host != b.Host || a.Comment != b.Comment || a.Source != b.Source {
			t.Errorf("rule %d: LF %+v, CRLF %+v", i, a, b)
		}
	}
}
