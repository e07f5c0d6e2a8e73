package config

import (
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestREADMESettingsTable keeps the README's table of settings and the
// Config struct in step: the same GATEWAY_ names, and each default as the
// env tag states it (a row without a backquoted default is a setting with
// none).
func TestREADMESettingsTable(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	start := strings.Index(s, "| variable | default | meaning |")
	if start < 0 {
		t.Fatal("README has no settings table")
	}
	end := strings.Index(s[start:], "\n\n")
	rows := strings.Split(s[start:start+end], "\n")[2:]
	name := regexp.MustCompile("`(GATEWAY_[A-Z0-9_]+)`")
	code := regexp.MustCompile("^`([^`]*)`")
	readme := map[string]string{} // name -> default ("" if none)
	for _, row := range rows {
		cells := strings.Split(row, " | ")
		if len(cells) < 3 {
			t.Fatalf("malformed row %q", row)
		}
		names := name.FindAllStringSubmatch(cells[0], -1)
		defaults := strings.Split(cells[1], " / ")
		for i, n := range names {
			def := ""
			d := defaults[min(i, len(defaults)-1)]
			if m := code.FindStringSubmatch(strings.TrimSpace(d)); m != nil {
				def = m[1]
			}
			readme[n[1]] = def
		}
	}
	typ := reflect.TypeFor[Config]()
	var inConfig []string
	for i := range typ.NumField() {
		f := typ.Field(i)
		tag := f.Tag.Get("env")
		if tag == "" {
			continue
		}
		n := EnvPrefix + tag
		inConfig = append(inConfig, n)
		want, listed := readme[n]
		if !listed {
			t.Errorf("%s is not in the README's settings table", n)
			continue
		}
		got := f.Tag.Get("envDefault")
		if !sameDefault(got, want) {
			t.Errorf("%s: Config's default %q, README's %q", n, got, want)
		}
	}
	for n := range readme {
		if !slices.Contains(inConfig, n) {
			t.Errorf("the README lists %s, which no Config field reads", n)
		}
	}
}

// sameDefault compares defaults as values: "0s" and "0" are one duration.
func sameDefault(a, b string) bool {
	if a == b {
		return true
	}
	da, errA := time.ParseDuration(a)
	db, errB := time.ParseDuration(b)
	if b == "0" {
		db, errB = 0, nil
	}
	return errA == nil && errB == nil && da == db
}
