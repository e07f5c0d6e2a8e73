package main

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xuri/excelize/v2"

	"github.com/defendergw/gateway/internal/testutil"
)

// msHeader is the column header of Microsoft's mde-urls-*.xlsx.
var msHeader = []any{"Service", "Geography", "Category", "Port", "Endpoint/URL", "Endpoint/URL Description",
	"Required or Optional", "Windows 10, 11; Server 2022, 2019, 2016 (Unified Agent)", "Windows 7, 8.1",
	"Windows Server 2008 R2, 2012 R2, 2016 (MMA Based)", "Mac", "Linux", "Comments"}

// writeMSSheet writes rows under Microsoft's header, after a title row as
// the published spreadsheet has, into dir/name.
func writeMSSheet(t *testing.T, dir, name string, rows ...[]any) string {
	t.Helper()
	f := excelize.NewFile()
	defer f.Close()
	sheet := "Microsoft Defender URLs"
	if err := f.SetSheetName("Sheet1", sheet); err != nil {
		t.Fatal(err)
	}
	all := append([][]any{{"Microsoft Defender for Endpoint URLs"}, msHeader}, rows...)
	for i, r := range all {
		cell, _ := excelize.CoordinatesToCellName(1, i+1)
		if err := f.SetSheetRow(sheet, cell, &r); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(dir, name)
	if err := f.SaveAs(path); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestCatalogRoundTrip is the catalog routine end to end: Microsoft's
// spreadsheet, import with a diff, the file deployed as GATEWAY_CATALOG_FILE
// on a running gateway, decisions and the PAC file following the new rows,
// a second import hot-reloaded, and a broken file refused.
func TestCatalogRoundTrip(t *testing.T) {
	dns := testutil.NewDNS(t)
	ca := testutil.NewCA(t)
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok "+r.Host)
	}))
	up.TLS = &tls.Config{Certificates: []tls.Certificate{ca.Leaf(t, "newsvc.defender.microsoft.com", "second.defender.microsoft.com")}}
	up.StartTLS()
	t.Cleanup(up.Close)
	port := up.Listener.Addr().(*net.TCPAddr).Port
	for _, h := range []string{"newsvc.defender.microsoft.com", "second.defender.microsoft.com", "winatp-gw-weu.microsoft.com"} {
		dns.Set(h, "127.0.0.1")
	}
	dir := t.TempDir()
	mdeRow := func(geo, category, ports, host, desc, req string) []any {
		return []any{"Microsoft Defender for Endpoint", geo, category, ports, host, desc, req, "Yes"}
	}
	// This month's list: the CRL row, one EU gateway, and a new WW service on
	// the lab upstream's port; every other S1 row is gone.
	sheet := writeMSSheet(t, dir, "mde-urls-commercial.xlsx",
		mdeRow("WW", "CRL", "80", "crl.microsoft.com", "Certificate Revocation Lists", "Required"),
		mdeRow("EU", "Microsoft Defender for Endpoint EU", "443", "winatp-gw-weu.microsoft.com",
			"Microsoft Defender for Endpoint Command and Control", "Required"),
		mdeRow("WW", "Defender Widgets", fmt.Sprint(port), "newsvc.defender.microsoft.com", "A service Microsoft added", "Required"),
	)
	catFile := filepath.Join(dir, "catalog.csv")

	// --check against the embedded catalog: something changes (exit 1), and
	// the diff names the new row and the dropped ones by service.
	out, errOut, code := runCLI(t, nil, "catalog", "import", "--check", "--version", "2027.01.15", "--published", "2027-01-15", sheet)
	if code != 1 {
		t.Fatalf("import --check: exit %d, want 1\n%s\n%s", code, out, errOut)
	}
	for _, want := range []string{"-> 2027.01.15:", "defender-widgets\n", "+ WW newsvc.defender.microsoft.com: ports " + fmt.Sprint(port),
		"\nipv6-probe\n", "- WW reflector.defender.microsoft.com", "S1#mde-urls-commercial.xlsx, sheet Microsoft Defender URLs, row 5"} {
		if !strings.Contains(out, want) {
			t.Errorf("diff lacks %q:\n%s", want, out)
		}
	}
	if _, err := os.Stat(catFile); !os.IsNotExist(err) {
		t.Fatalf("--check wrote a file: %v", err)
	}
	if _, errOut, code := runCLI(t, nil, "catalog", "import", "--out", catFile, "--version", "2027.01.15", "--published", "2027-01-15", sheet); code != 0 {
		t.Fatalf("import --out: exit %d: %s", code, errOut)
	}
	// Importing the same list over the result changes nothing.
	if out, errOut, code := runCLI(t, nil, "catalog", "import", "--check", "--base", catFile, sheet); code != 0 {
		t.Errorf("re-import --check: exit %d, want 0\n%s\n%s", code, out, errOut)
	}

	if out, _, code := runCLI(t, []string{"GATEWAY_CATALOG_FILE=" + catFile}, "version"); code != 0 ||
		!strings.Contains(out, "catalog 2027.01.15 (file, published 2027-01-15), cloud commercial") {
		t.Errorf("version with GATEWAY_CATALOG_FILE: exit %d: %s", code, out)
	}

	rw := &reloadWorld{ca: ca, port: port}
	rw.g = startGateway(t, "GATEWAY_DNS_SERVERS="+dns.Addr, "GATEWAY_CATALOG_FILE="+catFile, "GATEWAY_GEOGRAPHIES=EU",
		"GATEWAY_ALLOW_PRIVATE_DESTINATIONS=127.0.0.1", "GATEWAY_ACCESS_LOG=off", "GATEWAY_RELOAD_INTERVAL=100ms")
	if log := rw.g.log(); !strings.Contains(log, `"catalog_version":"2027.01.15","catalog_source":"file","catalog_published":"2027-01-15","cloud":"commercial"`) {
		t.Errorf("start-up line does not show the catalog file:\n%s", log)
	}
	if code, reason, err := rw.get("newsvc.defender.microsoft.com"); err != nil || code != 200 {
		t.Errorf("new catalog row: %d %q %v, want 200", code, reason, err)
	}
	if code, reason, _ := rw.get("second.defender.microsoft.com"); code != 403 || reason != "not-listed" {
		t.Errorf("host of no row: %d %q, want 403 not-listed", code, reason)
	}
	// A row only S1 listed is gone; rows other sources list stay (allowed:
	// the gateway goes on to resolve them, which the lab DNS cannot).
	for _, tt := range []struct{ target, want string }{
		{"reflector.defender.microsoft.com:443", "not-listed"},
		{"mdav.eu.endpoint.security.microsoft.com:443", "dns-failure"}, // CA row
		{"winatp-gw-neu.microsoft.com:443", "dns-failure"},             // also in S2's MMA table
	} {
		_, resp := connect(t, rw.g.addr, tt.target)
		if got := resp.Header.Get("X-Gateway-Reason"); got != tt.want {
			t.Errorf("CONNECT %s: %d %q, want reason %q", tt.target, resp.StatusCode, got, tt.want)
		}
	}
	pacURL := "http://" + rw.g.addr + "/proxy.pac"
	if code, pac := httpGet(t, pacURL); code != 200 || !strings.Contains(pac, `"newsvc.defender.microsoft.com": 1`) ||
		strings.Contains(pac, "reflector.defender.microsoft.com") {
		t.Errorf("PAC (%d) does not follow the catalog file:\n%.2000s", code, pac)
	}
	admin := "http://" + rw.g.admin
	_, listing := httpGet(t, admin+"/allowlist")
	var l struct {
		Version   string `json:"catalog_version"`
		Published string `json:"catalog_published"`
		Cloud     string `json:"cloud"`
	}
	if err := json.Unmarshal([]byte(listing), &l); err != nil || l.Version != "2027.01.15" || l.Published != "2027-01-15" || l.Cloud != "commercial" {
		t.Errorf("/allowlist: %+v %v", l, err)
	}
	_, scrape := httpGet(t, admin+"/metrics")
	for _, want := range []string{`gateway_catalog_info{source="file",version="2027.01.15"} 1`,
		fmt.Sprintf("gateway_catalog_published_timestamp_seconds %g", float64(time.Date(2027, 1, 15, 0, 0, 0, 0, time.UTC).Unix()))} {
		if !strings.Contains(scrape, want) {
			t.Errorf("metrics lack %q", want)
		}
	}

	// Next month: a second new row, written over the deployed file by the
	// import itself (an atomic rename); the gateway picks it up.
	sheet2 := writeMSSheet(t, filepath.Join(dir, ""), "mde-urls-commercial.xlsx",
		mdeRow("WW", "CRL", "80", "crl.microsoft.com", "Certificate Revocation Lists", "Required"),
		mdeRow("WW", "Defender Widgets", fmt.Sprint(port), "newsvc.defender.microsoft.com", "A service Microsoft added", "Required"),
		mdeRow("WW", "Defender Widgets", fmt.Sprint(port), "second.defender.microsoft.com", "Another one", "Required"),
	)
	if _, errOut, code := runCLI(t, nil, "catalog", "import", "--base", catFile, "--out", catFile, "--version", "2027.02.15",
		"--published", "2027-02-15", sheet2); code != 0 {
		t.Fatalf("second import: exit %d: %s", code, errOut)
	}
	rw.waitFor(t, "second.defender.microsoft.com", 200)
	if _, resp := connect(t, rw.g.addr, "winatp-gw-weu.microsoft.com:443"); resp.StatusCode != 200 {
		t.Errorf("winatp-gw-weu after the second import: %d %q, want still allowed (S2 lists it)", resp.StatusCode, resp.Header.Get("X-Gateway-Reason"))
	}
	if _, resp := connect(t, rw.g.addr, "newsvc.defender.microsoft.com:443"); resp.Header.Get("X-Gateway-Reason") != "port" {
		t.Errorf("newsvc on 443: %d %q, want port (the row names the lab port)", resp.StatusCode, resp.Header.Get("X-Gateway-Reason"))
	}
	waitMetric(t, admin, `gateway_catalog_info{source="file",version="2027.02.15"} 1`)

	// A broken file: the previous catalog stays, the failure is counted and
	// logged with the file and line.
	tmp := catFile + ".tmp"
	good, _ := os.ReadFile(catFile)
	writeFile(t, tmp, strings.Replace(string(good), "second.defender.microsoft.com", "bad..name", 1))
	if err := os.Rename(tmp, catFile); err != nil {
		t.Fatal(err)
	}
	waitMetric(t, admin, `gateway_config_reloads_total{file="catalog",result="failure"} 1`)
	if code, _, err := rw.get("second.defender.microsoft.com"); err != nil || code != 200 {
		t.Errorf("after a broken catalog file: %d %v, want the previous catalog (200)", code, err)
	}
	if log := rw.g.log(); !strings.Contains(log, "GATEWAY_CATALOG_FILE: "+catFile+" line ") {
		t.Errorf("broken catalog not logged with file and line:\n%s", log)
	}
}

// connect sends one CONNECT on a new connection and returns the connection
// (closed when the test ends) and the response. Bytes after the response may
// sit in the reader this used: use the connection only to hold or close it.
func connect(t *testing.T, proxyAddr, target string) (net.Conn, *http.Response) {
	t.Helper()
	c, err := net.DialTimeout("tcp", proxyAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatal(err)
	}
	return c, resp
}

// waitMetric waits until the admin listener's scrape contains line.
func waitMetric(t *testing.T, admin, line string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, scrape := httpGet(t, admin+"/metrics")
		if strings.Contains(scrape, line) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics never showed %q:\n%s", line, grepLines(scrape, "gateway_catalog", "gateway_config"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func grepLines(s string, prefixes ...string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		for _, p := range prefixes {
			if strings.HasPrefix(l, p) {
				out = append(out, l)
			}
		}
	}
	return strings.Join(out, "\n")
}

func TestCatalogFileErrors(t *testing.T) {
	dir := t.TempDir()
	good, _, _ := runCLI(t, nil, "catalog", "--format", "csv", "--all") // not the catalog format: no header lines
	bad := filepath.Join(dir, "bad.csv")
	writeFile(t, bad, "# catalog-version: 1\n# catalog-published: 2026-12-02\n# source: S1 - https://learn.microsoft.com/x\n"+
		"service_id,service_name,geography,host,paths,ports,required,tls_exempt,anonymous,source,comment\n"+
		"crl,CRL,WW,crl.microsoft.com,,80,required,yes,yes,S1,\n"+
		"crl,CRL,MARS,crl.microsoft.com,,80,required,yes,yes,S1,\n")
	notCatalog := filepath.Join(dir, "listing.csv")
	writeFile(t, notCatalog, good)
	tests := []struct {
		name string
		file string
		want []string
	}{
		{"bad row", bad, []string{"GATEWAY_CATALOG_FILE", bad + " line 6", "MARS"}},
		{"missing file", filepath.Join(dir, "nope.csv"), []string{"GATEWAY_CATALOG_FILE", "nope.csv", "no such file"}},
		{"not a catalog", notCatalog, []string{"GATEWAY_CATALOG_FILE", "catalog-version"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, args := range [][]string{{"serve"}, {"explain", "crl.microsoft.com:80"}, {"version"}} {
				_, errOut, code := runCLI(t, []string{"GATEWAY_CATALOG_FILE=" + tt.file, "GATEWAY_LISTEN=127.0.0.1:0",
					"GATEWAY_ADMIN_LISTEN=off", "GATEWAY_DNS_SERVERS=127.0.0.1"}, args...)
				if code != 2 {
					t.Errorf("%v: exit %d, want 2 (%s)", args, code, errOut)
				}
				for _, w := range tt.want {
					if !strings.Contains(errOut, w) {
						t.Errorf("%v: stderr %q lacks %q", args, errOut, w)
					}
				}
			}
		})
	}
}

// TestCatalogImportErrors checks that a failed import writes nothing: the
// deployed file stays as it was.
func TestCatalogImportErrors(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "catalog.csv")
	writeFile(t, out, "previous content\n")
	badHost := writeMSSheet(t, dir, "mde-urls-commercial.xlsx",
		[]any{"Microsoft Defender for Endpoint", "WW", "CRL", "80", "crl.microsoft.com", "x", "Required"},
		[]any{"Microsoft Defender for Endpoint", "WW", "Common", "443", "bad_host..microsoft.com", "x", "Required"})
	notXLSX := filepath.Join(dir, "x", "mde-urls-gov.xlsx")
	os.MkdirAll(filepath.Dir(notXLSX), 0o755)
	writeFile(t, notXLSX, "PK not really")
	for _, tt := range []struct {
		name string
		args []string
		want []string
	}{
		{"invalid host", []string{badHost}, []string{"mde-urls-commercial.xlsx", "sheet Microsoft Defender URLs, row 4", "bad_host..microsoft.com"}},
		{"not a spreadsheet", []string{notXLSX}, []string{"mde-urls-gov.xlsx", "not an XLSX spreadsheet"}},
		{"no files", nil, []string{"usage: gateway catalog import"}},
		{"bad date", []string{"--published", "15/01/2027", badHost}, []string{"--published"}},
		{"bad base", []string{"--base", filepath.Join(dir, "nope.csv"), badHost}, []string{"--base"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, errOut, code := runCLI(t, nil, append([]string{"catalog", "import", "--out", out}, tt.args...)...)
			if code != 2 {
				t.Errorf("exit %d, want 2", code)
			}
			for _, w := range tt.want {
				if !strings.Contains(errOut, w) {
					t.Errorf("stderr %q lacks %q", errOut, w)
				}
			}
			if b, _ := os.ReadFile(out); string(b) != "previous content\n" {
				t.Errorf("a failed import changed %s: %q", out, b)
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 3 { // catalog.csv, the sheet, x/
				t.Errorf("a failed import left files behind: %v", entries)
			}
		})
	}
}

// TestCloudCLI checks --cloud on catalog, pac and version.
func TestCloudCLI(t *testing.T) {
	out, _, code := runCLI(t, nil, "catalog", "--format", "json", "--cloud", "gcc-high")
	var doc struct {
		Cloud       string   `json:"cloud"`
		Geographies []string `json:"geographies"`
		BlobScope   string   `json:"blob_scope"`
		Rules       []struct {
			Host      string `json:"host"`
			Geography string `json:"geography"`
		} `json:"rules"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil || code != 0 {
		t.Fatalf("catalog --cloud gcc-high: exit %d, %v", code, err)
	}
	if doc.Cloud != "gcc-high" || strings.Join(doc.Geographies, ",") != "USGov,GCC-High" || doc.BlobScope != "listed" {
		t.Errorf("cloud %q geographies %v blob scope %q", doc.Cloud, doc.Geographies, doc.BlobScope)
	}
	hosts := map[string]bool{}
	for _, r := range doc.Rules {
		hosts[r.Host] = true
		if r.Geography != "USGov" && r.Geography != "GCC-High" {
			t.Errorf("gcc-high catalog lists %s of %s", r.Host, r.Geography)
		}
	}
	for h, want := range map[string]bool{"winatp-gw-usgt.microsoft.com": true, "unitedstates1.x.cp.wd.microsoft.us": true,
		"*.endpoint.security.microsoft.us": true, "winatp-gw-usmt.microsoft.com": false, "winatp-gw-weu.microsoft.com": false,
		"*.blob.core.usgovcloudapi.net": false} {
		if hosts[h] != want {
			t.Errorf("gcc-high catalog lists %s: %v, want %v", h, hosts[h], want)
		}
	}
	pac, _, code := runCLI(t, nil, "pac", "--proxy", "127.0.0.1:3128", "--cloud", "gcc")
	if code != 0 || !strings.Contains(pac, `"winatp-gw-usmt.microsoft.com"`) || strings.Contains(pac, "winatp-gw-weu") ||
		strings.Contains(pac, "winatp-gw-usgv") {
		t.Errorf("pac --cloud gcc: exit %d\n%.1500s", code, pac)
	}
	for _, tt := range []struct {
		env  []string
		want string
	}{
		{nil, "(embedded, published "},
		{nil, "cloud commercial"},
		{[]string{"GATEWAY_CLOUD=dod"}, "cloud dod"},
	} {
		if out, _, code := runCLI(t, tt.env, "version"); code != 0 || !strings.Contains(out, tt.want) {
			t.Errorf("version %v: exit %d %q, want %q", tt.env, code, out, tt.want)
		}
	}
}

func TestServeBinaryWarnsBlobWildcard(t *testing.T) {
	dns := testutil.NewDNS(t)
	for _, tt := range []struct {
		scope string
		warn  bool
	}{{"wildcard", true}, {"", false}, {"listed", false}} {
		t.Run("scope "+tt.scope, func(t *testing.T) {
			env := []string{"GATEWAY_DNS_SERVERS=" + dns.Addr, "GATEWAY_GEOGRAPHIES=EU"}
			if tt.scope != "" {
				env = append(env, "GATEWAY_BLOB_SCOPE="+tt.scope)
			}
			g := startGateway(t, env...)
			log := g.log()
			if got := strings.Contains(log, "GATEWAY_BLOB_SCOPE=wildcard: every Azure storage account"); got != tt.warn {
				t.Errorf("wildcard warning logged: %v, want %v\n%s", got, tt.warn, log)
			}
			want := `"blob_scope":"listed"`
			if tt.scope == "wildcard" {
				want = `"blob_scope":"wildcard"`
			}
			if !strings.Contains(log, want) {
				t.Errorf("start-up line lacks %s", want)
			}
		})
	}
}
