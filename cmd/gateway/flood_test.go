package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/defendergw/gateway/internal/testutil"
)

// fdCount is the number of open descriptors of process pid.
func fdCount(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatalf("reading the gateway's descriptors: %v", err)
	}
	return len(ents)
}

// echoUpstream echoes whatever each connection sends, for tunnels that
// carry traffic.
func echoUpstream(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

// openTunnel opens a CONNECT tunnel to target through the gateway.
func openTunnel(addr, target string) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != 200 || br.Buffered() != 0 {
		c.Close()
		return nil, fmt.Errorf("CONNECT %s: %v %v", target, resp, err)
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// TestConnectionFlood: against GATEWAY_MAX_CONNS=200, a flood of 20,000
// connections while 100 admitted tunnels carry traffic. The tunnels keep
// working, the gateway's descriptors stay within the limit plus the bounded
// refusals, /healthz answers throughout, and everything returns to the
// baseline after. Nothing here is timed: the bounds are on descriptors.
func TestConnectionFlood(t *testing.T) {
	if testing.Short() {
		t.Skip("the flood opens 20,000 connections")
	}
	dns := testutil.NewDNS(t)
	dns.Set("echo.lab.test", "127.0.0.1")
	port := echoUpstream(t)
	rules := filepath.Join(t.TempDir(), "rules.yaml")
	writeFile(t, rules, fmt.Sprintf("rules:\n  - action: allow\n    host: echo.lab.test\n    ports: [%d]\n    verify_sni: false\n", port))
	g := startGateway(t, "GATEWAY_DNS_SERVERS="+dns.Addr, "GATEWAY_RULES_FILE="+rules, "GATEWAY_GEOGRAPHIES=EU",
		"GATEWAY_ALLOW_PRIVATE_DESTINATIONS=127.0.0.1", "GATEWAY_MAX_CONNS=200", "GATEWAY_MAX_CONNS_PER_CLIENT=0",
		"GATEWAY_ACCESS_LOG=off", "GATEWAY_READ_HEADER_TIMEOUT=2s")
	pid := g.cmd.Process.Pid
	waitStatus(t, "http://"+g.admin+"/healthz", 200)
	base := fdCount(t, pid)

	// 100 admitted tunnels that carry traffic for the whole flood.
	const tunnels = 100
	target := fmt.Sprintf("echo.lab.test:%d", port)
	stop := make(chan struct{})
	var tunnelErrs, roundTrips atomic.Int64
	var twg sync.WaitGroup
	for i := 0; i < tunnels; i++ {
		c, err := openTunnel(g.addr, target)
		if err != nil {
			t.Fatalf("tunnel %d: %v", i, err)
		}
		twg.Add(1)
		go func() {
			defer twg.Done()
			defer c.Close()
			msg := []byte(strings.Repeat("x", 1024))
			buf := make([]byte, len(msg))
			for {
				select {
				case <-stop:
					return
				default:
				}
				c.SetDeadline(time.Now().Add(10 * time.Second))
				if _, err := c.Write(msg); err != nil {
					tunnelErrs.Add(1)
					return
				}
				if _, err := io.ReadFull(c, buf); err != nil {
					tunnelErrs.Add(1)
					return
				}
				roundTrips.Add(1)
				time.Sleep(10 * time.Millisecond)
			}
		}()
	}
	withTunnels := fdCount(t, pid)

	// Watch descriptors and /healthz while the flood runs.
	var maxFD atomic.Int64
	var healthFail, healthOK atomic.Int64
	watchDone := make(chan struct{})
	floodDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		hc := &http.Client{Timeout: 2 * time.Second}
		for i := 0; ; i++ {
			select {
			case <-floodDone:
				return
			default:
			}
			if n := int64(fdCount(t, pid)); n > maxFD.Load() {
				maxFD.Store(n)
			}
			if i%5 == 0 {
				resp, err := hc.Get("http://" + g.admin + "/healthz")
				if err != nil || resp.StatusCode != 200 {
					healthFail.Add(1)
				} else {
					healthOK.Add(1)
				}
				if resp != nil {
					resp.Body.Close()
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()

	// The flood: 1,000 clients at once, far more than the 100 free slots,
	// that do not cooperate: each connects and reads until the gateway
	// closes (a 503 first when refused) or 300 ms pass, then closes. The
	// gateway's own bounds, not the clients, must keep its descriptors low.
	const total = 20000
	var next, answered503, unanswered atomic.Int64
	start := time.Now()
	var fwg sync.WaitGroup
	for w := 0; w < 1000; w++ {
		fwg.Add(1)
		go func() {
			defer fwg.Done()
			buf := make([]byte, 512)
			for next.Add(1) <= total {
				c, err := net.DialTimeout("tcp", g.addr, 5*time.Second)
				if err != nil {
					unanswered.Add(1)
					continue
				}
				c.SetDeadline(time.Now().Add(300 * time.Millisecond))
				n, _ := io.ReadAtLeast(c, buf, 12)
				io.Copy(io.Discard, c) // until the gateway closes, or the deadline
				if n >= 12 && strings.HasPrefix(string(buf[:n]), "HTTP/1.1 503") {
					answered503.Add(1)
				} else {
					unanswered.Add(1) // admitted (waits for a request), or closed unanswered past the bound
				}
				c.Close()
			}
		}()
	}
	fwg.Wait()
	took := time.Since(start)
	close(floodDone)
	<-watchDone

	t.Logf("flood: %d connections in %v (%.0f/s): %d answered 503, %d other; descriptors: base %d, with tunnels %d, max %d; /healthz %d ok, %d failed; tunnel round trips %d",
		total, took.Round(time.Millisecond), total/took.Seconds(), answered503.Load(), unanswered.Load(), base, withTunnels,
		maxFD.Load(), healthOK.Load(), healthFail.Load(), roundTrips.Load())
	// The limit counts client connections (the 100 tunnels and up to 100
	// admitted flood connections waiting for a request); a tunnel also holds
	// its upstream; refusals in flight are at most 256; the splice pipes at
	// most 16 per CPU, two descriptors each.
	bound := int64(base + 200 + tunnels + 256 + 2*16*2 + 32)
	if maxFD.Load() > bound {
		t.Errorf("the gateway held %d descriptors during the flood, want at most %d", maxFD.Load(), bound)
	}
	if healthFail.Load() != 0 || healthOK.Load() == 0 {
		t.Errorf("/healthz: %d failures, %d answers during the flood", healthFail.Load(), healthOK.Load())
	}
	if answered503.Load() < total/4 {
		t.Errorf("only %d of %d flood connections got 503 overloaded", answered503.Load(), total)
	}
	close(stop)
	twg.Wait()
	if tunnelErrs.Load() != 0 {
		t.Errorf("%d admitted tunnels failed during the flood", tunnelErrs.Load())
	}
	// Back to the baseline once the tunnels are gone.
	deadline := time.Now().Add(15 * time.Second)
	for fdCount(t, pid) > base+4 {
		if time.Now().After(deadline) {
			t.Fatalf("descriptors did not return to the baseline %d: %d", base, fdCount(t, pid))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := openTunnel(g.addr, target); err != nil {
		t.Errorf("after the flood: %v", err)
	}
}

// TestOutOfDescriptors: with its descriptor table full, the gateway keeps
// serving the connections it holds, logs the accept failures once (not once
// per attempt), and accepts again when descriptors free up.
func TestOutOfDescriptors(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("bash is needed to lower the descriptor limit")
	}
	dns := testutil.NewDNS(t)
	dns.Set("echo.lab.test", "127.0.0.1")
	port := echoUpstream(t)
	rules := filepath.Join(t.TempDir(), "rules.yaml")
	writeFile(t, rules, fmt.Sprintf("rules:\n  - action: allow\n    host: echo.lab.test\n    ports: [%d]\n    verify_sni: false\n", port))
	// A hard limit, which Go cannot raise at start as it does the soft one.
	cmd := exec.Command(bash, "-c", `ulimit -Sn 48 && ulimit -Hn 48 && exec "$0" serve`, gatewayBin)
	g := startGatewayCmd(t, cmd, "GATEWAY_DNS_SERVERS="+dns.Addr, "GATEWAY_RULES_FILE="+rules, "GATEWAY_GEOGRAPHIES=EU",
		"GATEWAY_ALLOW_PRIVATE_DESTINATIONS=127.0.0.1", "GATEWAY_ACCESS_LOG=off", "GATEWAY_TUNNEL_COPY=buffer")
	target := fmt.Sprintf("echo.lab.test:%d", port)
	held, err := openTunnel(g.addr, target)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	// Fill the table: connections that wait for a request hold one each.
	var extra []net.Conn
	for i := 0; i < 80; i++ {
		c, err := net.DialTimeout("tcp", g.addr, 2*time.Second)
		if err != nil {
			break
		}
		extra = append(extra, c)
	}
	// Accepts fail for a while; the held tunnel still carries traffic.
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(g.log(), "out of file descriptors") {
		if time.Now().After(deadline) {
			t.Fatalf("no out-of-descriptors log line:\n%s", g.log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	held.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := held.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(held, buf); err != nil || string(buf) != "ping" {
		t.Errorf("held tunnel while out of descriptors: %q %v", buf, err)
	}
	time.Sleep(time.Second) // let the listener fail and retry for a while: the log must not grow per attempt
	if n := strings.Count(g.log(), "out of file descriptors"); n != 1 {
		t.Errorf("%d out-of-descriptors log lines in a second, want 1", n)
	}
	for _, c := range extra {
		c.Close()
	}
	// Descriptors free: new connections are served again.
	deadline = time.Now().Add(10 * time.Second)
	for {
		c, err := openTunnel(g.addr, target)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no new tunnel after descriptors freed up: %v\n%s", err, g.log())
		}
		time.Sleep(100 * time.Millisecond)
	}
}
