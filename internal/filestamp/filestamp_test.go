package filestamp

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestMatches(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "rules.yaml")
	write := func(path, content string, mtime time.Time) {
		t.Helper()
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(path, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	t0 := time.Now().Add(-time.Hour).Truncate(time.Second)
	write(p, "v1", t0)
	s, err := Of(p)
	if err != nil {
		t.Fatal(err)
	}
	stat := func() os.FileInfo {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		return fi
	}
	tests := []struct {
		name   string
		change func()
		want   bool
	}{
		{"unchanged", func() {}, true},
		{"same size, new time", func() { write(p, "v2", t0.Add(time.Second)) }, false},
		{"new size, same time", func() { write(p, "v22", t0) }, false},
		{"renamed over, same time and size", func() {
			write(p+".tmp", "v1", t0)
			if err := os.Rename(p+".tmp", p); err != nil {
				t.Fatal(err)
			}
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			write(p, "v1", t0)
			s, _ = Of(p)
			tt.change()
			if got := s.Matches(stat()); got != tt.want {
				t.Errorf("Matches = %v, want %v", got, tt.want)
			}
		})
	}
	var none *Stamp
	if none.Matches(stat()) {
		t.Error("a nil Stamp matched")
	}
}
