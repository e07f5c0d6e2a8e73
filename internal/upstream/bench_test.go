package upstream

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// BenchmarkRoundTrip fetches a 1 KiB object over keep-alive connections with
// this client and, for comparison, with http.Transport configured as the
// gateway configures it.
func BenchmarkRoundTrip(b *testing.B) {
	object := strings.Repeat("x", 1024)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, object) }))
	defer srv.Close()
	for _, tc := range []struct {
		name string
		rt   http.RoundTripper
	}{
		{"upstream", New(Options{DialContext: (&net.Dialer{}).DialContext})},
		{"transport", &http.Transport{DialContext: (&net.Dialer{}).DialContext, MaxIdleConnsPerHost: 256, DisableCompression: true}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					req, _ := http.NewRequest("GET", srv.URL+"/object", nil)
					resp, err := tc.rt.RoundTrip(req)
					if err != nil {
						b.Error(err)
						return
					}
					if n, _ := io.Copy(io.Discard, resp.Body); n != int64(len(object)) {
						b.Errorf("read %d bytes, want %d", n, len(object))
					}
					resp.Body.Close()
				}
			})
		})
	}
}
