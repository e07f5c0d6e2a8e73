package resolver

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func TestNew(t *testing.T) {
	tests := []struct {
		name    string
		opts    Options
		wantErr bool
	}{
		{name: "valid IPv4", opts: Options{Servers: []string{"127.0.0.1:53"}, Timeout: time.Second}},
		{name: "valid IPv6", opts: Options{Servers: []string{"[::1]:53", "127.0.0.53:5353"}, Timeout: time.Second}},
		{name: "no timeout", opts: Options{Servers: []string{"127.0.0.1:53"}}, wantErr: true},
		{name: "min ttl without max ttl", opts: Options{Servers: []string{"127.0.0.1:53"}, Timeout: time.Second, MinTTL: time.Hour}},
		{name: "no servers", opts: Options{}, wantErr: true},
		{name: "name instead of IP", opts: Options{Servers: []string{"dns.example:53"}}, wantErr: true},
		{name: "missing port", opts: Options{Servers: []string{"127.0.0.1"}}, wantErr: true},
		{name: "port zero", opts: Options{Servers: []string{"127.0.0.1:0"}}, wantErr: true},
		{name: "negative timeout", opts: Options{Servers: []string{"127.0.0.1:53"}, Timeout: -1}, wantErr: true},
		{name: "negative cache size", opts: Options{Servers: []string{"127.0.0.1:53"}, CacheSize: -1}, wantErr: true},
		{name: "min above max", opts: Options{Servers: []string{"127.0.0.1:53"}, Timeout: time.Second, MinTTL: time.Hour, MaxTTL: time.Minute}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := New(tt.opts)
			if gotErr := err != nil; gotErr != tt.wantErr {
				t.Fatalf("New error = %v, want error: %v", err, tt.wantErr)
			}
			if err == nil && r == nil {
				t.Fatal("New returned nil resolver and nil error")
			}
		})
	}
}

func TestServersFromResolvConf(t *testing.T) {
	tests := []struct {
		name    string
		content string
		want    []string
		wantErr bool
	}{
		{
			name:    "IPv4 and IPv6",
			content: "# comment\nsearch corp.example\nnameserver 127.0.0.53\nnameserver ::1\noptions ndots:1\n",
			want:    []string{"127.0.0.53:53", "[::1]:53"},
		},
		{name: "no nameserver", content: "search corp.example\n", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "resolv.conf")
			if err := os.WriteFile(path, []byte(tt.content), 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := ServersFromResolvConf(path)
			if gotErr := err != nil; gotErr != tt.wantErr {
				t.Fatalf("ServersFromResolvConf error = %v, want error: %v", err, tt.wantErr)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("ServersFromResolvConf = %q, want %q", got, tt.want)
			}
			if err == nil {
				if _, err := New(Options{Servers: got, Timeout: time.Second}); err != nil {
					t.Errorf("New(Servers: %q) error = %v, want nil", got, err)
				}
			}
		})
	}
	t.Run("missing file", func(t *testing.T) {
		if _, err := ServersFromResolvConf(filepath.Join(t.TempDir(), "nope")); err == nil {
			t.Error("ServersFromResolvConf(missing) error = nil, want error")
		}
	})
}
