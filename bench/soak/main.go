// Command soak holds moderate load with churn on a `gateway lab` replica for a
// bounded time and fails when goroutines, file descriptors or memory grow
// beyond noise between the warmed-up start and the end. Loopback only.
//
//	go run ./bench/soak --gateway ./gateway --duration 10m
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	bin := flag.String("gateway", "./gateway", "gateway binary")
	duration := flag.Duration("duration", 10*time.Minute, "how long to hold the load")
	warmup := flag.Duration("warmup", 20*time.Second, "load before the baseline sample")
	workers := flag.Int("workers", 16, "concurrent clients")
	long := flag.Int("long", 200, "long-lived tunnels held throughout")
	flag.Parse()
	if err := run(*bin, *duration, *warmup, *workers, *long); err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(1)
	}
}

type sample struct {
	rss, goroutines, fds float64
}

func run(bin string, duration, warmup time.Duration, workers, long int) error {
	dir, err := os.MkdirTemp("", "soak")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	cmd := exec.Command(bin, "lab", "--listen", "127.0.0.1:0", "--dir", dir, "--geo", "EU")
	cmd.Env = append(os.Environ(), "GATEWAY_ADMIN_LISTEN=127.0.0.1:0", "GATEWAY_ACCESS_LOG=off", "GATEWAY_LOG_LEVEL=error",
		"GATEWAY_MAX_CONNS_PER_CLIENT=0")
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	var gw, ca, admin string
	sc := bufio.NewScanner(out)
	for sc.Scan() && (gw == "" || ca == "" || admin == "") {
		l := sc.Text()
		if v, ok := strings.CutPrefix(l, "lab gateway: "); ok {
			gw = v
		} else if v, ok := strings.CutPrefix(l, "lab CA: "); ok {
			ca = v
		} else if v, ok := strings.CutPrefix(l, "lab admin: "); ok {
			admin = v
		}
	}
	go io.Copy(io.Discard, out)
	if admin == "" {
		return fmt.Errorf("lab did not start")
	}
	pem, err := os.ReadFile(ca)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	proxyURL, _ := url.Parse(gw)

	var ok, refused, failed atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	// Long-lived tunnels, as Defender endpoints keep them.
	var longConns []net.Conn
	for i := 0; i < long; i++ {
		c, err := connect(proxyURL.Host, "winatp-gw-weu.microsoft.com:443", i)
		if err != nil {
			return fmt.Errorf("long tunnel %d: %w", i, err)
		}
		tc := tls.Client(c, &tls.Config{ServerName: "winatp-gw-weu.microsoft.com", RootCAs: pool})
		if err := tc.Handshake(); err != nil {
			return fmt.Errorf("long tunnel %d: %w", i, err)
		}
		longConns = append(longConns, tc)
	}
	hosts := []string{"https://winatp-gw-weu.microsoft.com/test", "https://eu-v20.events.data.microsoft.com/ping",
		"http://crl.microsoft.com/pki/crl/products/soak.crl", "https://winatp-gw-cus.microsoft.com/test", // refused: geography
		"https://unlisted.example.test/"} // refused: not-listed
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			tr := &http.Transport{Proxy: http.ProxyURL(proxyURL), TLSClientConfig: &tls.Config{RootCAs: pool},
				DialContext:         (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 1, byte(2+w))}}).DialContext,
				MaxIdleConnsPerHost: 2}
			client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
			defer tr.CloseIdleConnections()
			for i := 0; ctx.Err() == nil; i++ {
				u := hosts[rand.IntN(len(hosts))]
				resp, err := client.Get(u)
				switch {
				case err != nil && (strings.Contains(err.Error(), "Forbidden") || strings.Contains(err.Error(), "Bad Gateway")):
					refused.Add(1)
				case err != nil:
					if ctx.Err() == nil {
						failed.Add(1)
					}
				default:
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode >= 400 && resp.Header.Get("X-Gateway-Reason") != "" {
						refused.Add(1)
					} else {
						ok.Add(1)
					}
				}
				if i%50 == 0 {
					tr.CloseIdleConnections() // churn: new connections and tunnels
				}
				time.Sleep(time.Duration(rand.IntN(20)) * time.Millisecond)
			}
		}(w)
	}
	time.Sleep(warmup)
	start, err := scrape(admin)
	if err != nil {
		return err
	}
	startOK, startFailed := ok.Load(), failed.Load()
	fmt.Printf("start: rss=%.1f MiB goroutines=%.0f fds=%.0f\n", start.rss/(1<<20), start.goroutines, start.fds)
	deadline := time.Now().Add(duration)
	var loaded sample // the last sample under load
	for time.Now().Before(deadline) {
		time.Sleep(min(30*time.Second, time.Until(deadline)))
		loaded, _ = scrape(admin)
		fmt.Printf("  %s rss=%.1f MiB goroutines=%.0f fds=%.0f ok=%d refused=%d failed=%d\n", time.Now().Format("15:04:05"),
			loaded.rss/(1<<20), loaded.goroutines, loaded.fds, ok.Load(), refused.Load(), failed.Load())
	}
	cancel()
	wg.Wait()
	// Long tunnels still work at the end.
	longFailed := 0
	for _, c := range longConns {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(c, "GET /commands/test HTTP/1.1\r\nHost: winatp-gw-weu.microsoft.com\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.StatusCode != 200 {
			longFailed++
		}
		c.Close()
	}
	time.Sleep(2 * time.Second) // let closed connections and tunnels drain
	end, err := scrape(admin)
	if err != nil {
		return err
	}
	fmt.Printf("end:   rss=%.1f MiB goroutines=%.0f fds=%.0f (long tunnels closed)\n", end.rss/(1<<20), end.goroutines, end.fds)
	fmt.Printf("requests: ok=%d refused=%d failed=%d (failed during the window: %d); long tunnels failed: %d/%d\n",
		ok.Load()-startOK, refused.Load(), failed.Load(), failed.Load()-startFailed, longFailed, len(longConns))
	// Under the same load, the start and the end must match within noise;
	// with the load and the long tunnels gone, everything must drain.
	var problems []string
	if loaded.goroutines > start.goroutines+20 {
		problems = append(problems, fmt.Sprintf("goroutines grew under load %.0f -> %.0f", start.goroutines, loaded.goroutines))
	}
	if loaded.fds > start.fds+20 {
		problems = append(problems, fmt.Sprintf("fds grew under load %.0f -> %.0f", start.fds, loaded.fds))
	}
	if loaded.rss > start.rss*1.5+16<<20 {
		problems = append(problems, fmt.Sprintf("rss grew under load %.1f -> %.1f MiB", start.rss/(1<<20), loaded.rss/(1<<20)))
	}
	if end.goroutines > 64 || end.fds > 64 {
		problems = append(problems, fmt.Sprintf("after the load: %.0f goroutines and %.0f fds still held", end.goroutines, end.fds))
	}
	if failed.Load() > 0 {
		problems = append(problems, fmt.Sprintf("%d requests failed", failed.Load()))
	}
	if longFailed > 0 {
		problems = append(problems, fmt.Sprintf("%d long tunnels broke", longFailed))
	}
	if len(problems) > 0 {
		return fmt.Errorf("%s", strings.Join(problems, "; "))
	}
	fmt.Println("soak: PASS")
	return nil
}

func connect(proxy, target string, i int) (net.Conn, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 2, byte(2+i%200))}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", proxy)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != 200 {
		c.Close()
		return nil, fmt.Errorf("CONNECT %s: %v %v", target, resp, err)
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// scrape reads the gateway's own view of its resources.
func scrape(admin string) (sample, error) {
	resp, err := http.Get(admin + "/metrics")
	if err != nil {
		return sample{}, err
	}
	defer resp.Body.Close()
	var s sample
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 {
			continue
		}
		v, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "process_resident_memory_bytes":
			s.rss = v
		case "go_goroutines":
			s.goroutines = v
		case "process_open_fds":
			s.fds = v
		}
	}
	return s, sc.Err()
}
