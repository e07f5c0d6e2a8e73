package main

import (
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/defendergw/gateway/internal/testutil"
)

// TestServeBinaryParent runs the binary with an authenticating parent proxy
// on loopback: a tunnel goes through it with the configured credentials,
// and the password is in none of the gateway's output (operational log,
// access log, metrics).
func TestServeBinaryParent(t *testing.T) {
	const pass = "pa55-w0rd-Secret"
	wantAuth := "Basic " + base64.StdEncoding.EncodeToString([]byte("gw:"+pass))
	dns := testutil.NewDNS(t)
	ca := testutil.NewCA(t)
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "behind the parent")
	}))
	up.TLS = &tls.Config{Certificates: []tls.Certificate{ca.Leaf(t, "app.lab.test")}}
	up.StartTLS()
	t.Cleanup(up.Close)
	upPort := up.Listener.Addr().(*net.TCPAddr).Port
	dns.Set("app.lab.test", "127.0.0.1")

	// The parent relays CONNECTs to the loopback upstream only, once the
	// credentials match.
	var connects, authorized atomic.Int64
	parent := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		connects.Add(1)
		if r.Method != http.MethodConnect || r.RequestURI != up.Listener.Addr().String() {
			http.Error(w, "not for this test", http.StatusForbidden)
			return
		}
		if r.Header.Get("Proxy-Authorization") != wantAuth {
			w.WriteHeader(http.StatusProxyAuthRequired)
			return
		}
		authorized.Add(1)
		dst, err := net.Dial("tcp", r.RequestURI)
		if err != nil {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		defer dst.Close()
		c, bw, _ := w.(http.Hijacker).Hijack()
		defer c.Close()
		bw.WriteString("HTTP/1.1 200 Connection established\r\n\r\n")
		bw.Flush()
		go io.Copy(dst, bw)
		io.Copy(c, dst)
	}))
	t.Cleanup(parent.Close)

	rules := filepath.Join(t.TempDir(), "rules.yaml")
	writeFile(t, rules, fmt.Sprintf("rules:\n  - action: allow\n    host: '*.lab.test'\n    ports: [%d]\n", upPort))
	accessLog := filepath.Join(t.TempDir(), "access.log")
	g := startGateway(t,
		"GATEWAY_GEOGRAPHIES=EU",
		"GATEWAY_DNS_SERVERS="+dns.Addr,
		"GATEWAY_RULES_FILE="+rules,
		"GATEWAY_ALLOW_PRIVATE_DESTINATIONS=127.0.0.1/32",
		"GATEWAY_LOG_LEVEL=debug",
		"GATEWAY_ACCESS_LOG="+accessLog,
		"GATEWAY_PARENT_PROXY=http://gw:"+pass+"@"+parent.Listener.Addr().String(),
	)
	proxyURL, _ := url.Parse("http://" + g.addr)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		Proxy: http.ProxyURL(proxyURL), TLSClientConfig: &tls.Config{RootCAs: ca.Pool}, DisableKeepAlives: true}}
	resp, err := client.Get(fmt.Sprintf("https://app.lab.test:%d/", upPort))
	if err != nil {
		t.Fatalf("tunnel through the parent: %v\n%s", err, g.log())
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "behind the parent" || authorized.Load() != 1 {
		t.Errorf("body %q, authorized CONNECTs %d (of %d): want the upstream's answer through one authorized CONNECT",
			body, authorized.Load(), connects.Load())
	}

	mresp, err := http.Get("http://" + g.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(mresp.Body)
	mresp.Body.Close()
	okSeries := fmt.Sprintf(`gateway_parent_requests_total{parent=%q,result="ok"} 1`, parent.Listener.Addr().String())
	if !strings.Contains(string(metrics), okSeries) {
		t.Errorf("metrics lack %s", okSeries)
	}
	waitFileContains(t, accessLog, "app.lab.test")
	log := g.log()
	if !strings.Contains(log, `"parents":"`+parent.Listener.Addr().String()+`"`) {
		t.Errorf("the start-up log does not name the parent by host:port:\n%s", log)
	}
	al, _ := os.ReadFile(accessLog)
	for name, text := range map[string]string{"operational log": log, "access log": string(al), "metrics": string(metrics)} {
		for _, secret := range []string{pass, base64.StdEncoding.EncodeToString([]byte("gw:" + pass))} {
			if strings.Contains(text, secret) {
				t.Errorf("the %s contains the parent's credentials:\n%s", name, text)
			}
		}
	}
}
