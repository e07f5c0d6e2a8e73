package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/defendergw/gateway/internal/allowlist"
	"github.com/defendergw/gateway/internal/config"
	"github.com/defendergw/gateway/internal/msimport"
)

var importHelp = cmdHelp{
	synopsis: "gateway catalog import FILE... [flags]",
	about: `Reads Microsoft's published Defender URL lists (mde-urls-commercial.xlsx, mde-urls-gov.xlsx, or the articles'
markdown: standard-/streamlined-device-connectivity-urls-commercial.md, ...-gov.md,
configure-network-connections-microsoft-defender-antivirus.md) and writes a catalog for GATEWAY_CATALOG_FILE:
the catalog in force with the rows of the imported lists replaced by what the files say now.
Exit status: 0 done (with --check: nothing would change), 1 (--check) something would change, 2 error.`,
}

// catalogImport is "gateway catalog import".
func catalogImport(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("catalog import", flag.ContinueOnError)
	out := fs.String("out", "", "write the catalog to this `FILE`, atomically (default: standard output, unless --diff or --check)")
	diff := fs.Bool("diff", false, "print what would change against the catalog in force, grouped by service")
	check := fs.Bool("check", false, "like --diff, and exit 1 when anything would change (for a scheduled job)")
	base := fs.String("base", "", "`FILE` to update and compare with: a catalog file, or \"embedded\" (default: GATEWAY_CATALOG_FILE, else the embedded catalog)")
	version := fs.String("version", "", "version `V` of the new catalog (default: today's date, YYYY.MM.DD)")
	published := fs.String("published", "", "publication `DATE` of the new catalog, YYYY-MM-DD (default: today)")
	files, exit, ok := parseArgs(fs, args, importHelp, stdout, stderr)
	if !ok {
		return exit
	}
	if len(files) == 0 {
		usageError(stderr, fs, importHelp, "no FILE to import")
		return 2
	}
	now := time.Now().UTC()
	pub := now.Truncate(24 * time.Hour)
	if *published != "" {
		var err error
		if pub, err = time.Parse(time.DateOnly, *published); err != nil {
			fmt.Fprintf(stderr, "gateway catalog import: --published: want YYYY-MM-DD, got %q\n", *published)
			return 2
		}
	}
	if *version == "" {
		*version = pub.Format("2006.01.02")
	}
	baseCat, baseName, err := importBase(*base)
	if err != nil {
		fmt.Fprintf(stderr, "gateway catalog import: %v\n", err)
		return 2
	}
	res, err := msimport.Files(files)
	if err != nil {
		fmt.Fprintf(stderr, "gateway catalog import: %v\n", err)
		return 2
	}
	merged := msimport.Merge(baseCat, res, *version, pub)
	data, err := merged.Format()
	if err != nil {
		fmt.Fprintf(stderr, "gateway catalog import: %v\n", err)
		return 2
	}
	for _, s := range res.Sources {
		fmt.Fprintf(stderr, "imported %s (%s, %s)\n", s.Tag, s.Title, orText(s.Date, "undated"))
	}
	fmt.Fprintf(stderr, "rules imported: %d; rows of Microsoft's lists that map to no rule: %d\n", len(res.Rules), len(res.Skipped))
	for _, s := range res.Skipped {
		fmt.Fprintf(stderr, "  skipped %s\n", s)
	}
	changed := false
	if *diff || *check {
		d := allowlist.DiffCatalogs(baseCat, merged)
		changed = !d.Empty()
		d.Write(stdout, fmt.Sprintf("%s (%s)", baseCat.Version, baseName), merged.Version)
	}
	switch {
	case *out != "":
		if err := writeFileAtomic(*out, data); err != nil {
			fmt.Fprintf(stderr, "gateway catalog import: --out: %v\n", err)
			return 2
		}
		fmt.Fprintf(stderr, "wrote %s (catalog %s, %d rules)\n", *out, merged.Version, len(merged.Rules))
	case !*diff && !*check:
		stdout.Write(data)
	}
	if *check && changed {
		return 1
	}
	return 0
}

// importBase is the catalog an import updates: --base, else the catalog in
// force.
func importBase(base string) (*allowlist.Catalog, string, error) {
	switch base {
	case "embedded":
		cat, err := allowlist.Embedded()
		return cat, config.CatalogEmbedded, err
	case "":
		cfg, _, err := config.Load(config.EnvironMap())
		if err != nil {
			return nil, "", fmt.Errorf("configuration: %w", err)
		}
		cat, origin, err := cfg.LoadCatalog()
		if origin == config.CatalogFromFile {
			origin = cfg.CatalogFile
		}
		return cat, origin, err
	}
	data, err := os.ReadFile(base)
	if err != nil {
		return nil, "", fmt.Errorf("--base: %w", err)
	}
	cat, err := allowlist.ParseCatalog(data, base)
	if err != nil {
		return nil, "", fmt.Errorf("--base: %w", err)
	}
	return cat, base, nil
}

// writeFileAtomic writes data beside path and renames it over path, so a
// gateway watching the file never reads half of it, and a failed write
// leaves the old file.
func writeFileAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // after a successful rename there is nothing left to remove
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

func orText(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
