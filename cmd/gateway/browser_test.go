package main

import (
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestBrowserPAC starts headless Chromium with --proxy-pac-url pointing at
// the lab gateway: a catalog host goes through the gateway, an unlisted
// host does not.
func TestBrowserPAC(t *testing.T) {
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("chromium is required in CI (Debian package chromium)")
		}
		t.Skip("chromium not installed")
	}
	// At debug the operational log carries each request's outcome line.
	l := startLab(t, "GATEWAY_GEOGRAPHIES=EU", "GATEWAY_LOG_LEVEL=debug")

	// An unlisted destination, reachable directly on loopback.
	var direct atomic.Int64
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		direct.Add(1)
		io.WriteString(w, "<html><body>direct page</body></html>")
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	browse := func(url string) string {
		t.Helper()
		args := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
			"--disable-background-networking", "--disable-component-update", "--disable-sync",
			"--user-data-dir=" + t.TempDir(), "--proxy-pac-url=" + l.gateway + "/proxy.pac",
			// Chromium itself resolves nothing but loopback: proxied names are
			// resolved by the gateway, and nothing leaks to the system resolver.
			"--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
			"--virtual-time-budget=5000", "--dump-dom", url}
		return runChromium(t, chromium, args...)
	}

	page := browse("http://crl.microsoft.com/pki/crl/products/browser-check")
	if !strings.Contains(page, "Defender lab endpoint crl.microsoft.com/pki/crl/products/browser-check") {
		t.Errorf("catalog host through the PAC: page %q", page)
	}
	if !strings.Contains(l.stderr.String(), `"target":"http://crl.microsoft.com/pki/crl/products/browser-check"`) {
		t.Errorf("the gateway's log does not show the catalog request:\n%s", l.stderr.String())
	}

	url := "http://" + ln.Addr().String() + "/"
	page = browse(url)
	if !strings.Contains(page, "direct page") || direct.Load() == 0 {
		t.Errorf("unlisted host: page %q, direct hits %d", page, direct.Load())
	}
	if strings.Contains(l.stderr.String(), ln.Addr().String()) {
		t.Errorf("the unlisted host went through the gateway")
	}
}

// runChromium runs headless Chromium and returns what it printed. A
// browser that dies of a signal (headless Chromium crashes now and then on
// a loaded machine, before it loads anything) is run again, twice at most:
// its crash says nothing of the page. Any other failure is logged and its
// output returned for the caller's checks.
func runChromium(t *testing.T, chromium string, args ...string) string {
	t.Helper()
	args = append([]string{"--disable-dev-shm-usage"}, args...)
	for attempt := 1; ; attempt++ {
		cmd := exec.Command(chromium, args...)
		timer := time.AfterFunc(60*time.Second, func() { cmd.Process.Kill() })
		out, err := cmd.Output()
		timer.Stop()
		var ee *exec.ExitError
		if errors.As(err, &ee) && !ee.Exited() && attempt < 3 {
			t.Logf("chromium crashed (%v), attempt %d; running it again", err, attempt)
			continue
		}
		if err != nil {
			t.Logf("chromium: %v", err)
		}
		return string(out)
	}
}
