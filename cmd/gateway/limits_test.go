package main

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/defendergw/gateway/internal/testutil"
)

func TestMaxConns(t *testing.T) {
	dns := testutil.NewDNS(t)
	_, port, rules := labTLS(t, dns)
	g := startGateway(t, "GATEWAY_DNS_SERVERS="+dns.Addr, "GATEWAY_RULES_FILE="+rules, "GATEWAY_GEOGRAPHIES=EU",
		"GATEWAY_ALLOW_PRIVATE_DESTINATIONS=127.0.0.1", "GATEWAY_MAX_CONNS=2", "GATEWAY_ACCESS_LOG=off")
	target := fmt.Sprintf("app.lab.test:%d", port)
	open := func() (net.Conn, int, string) {
		t.Helper()
		c, resp := connect(t, g.addr, target)
		return c, resp.StatusCode, resp.Header.Get("X-Gateway-Reason")
	}
	t1, c1, _ := open()
	_, c2, _ := open()
	if c1 != 200 || c2 != 200 {
		t.Fatalf("first two tunnels: %d %d", c1, c2)
	}
	if _, code, reason := open(); code != 503 || reason != "overloaded" {
		t.Fatalf("third connection: %d %q, want 503 overloaded", code, reason)
	}
	// The gateway is still healthy, and a slot frees when a tunnel ends.
	if code, _ := httpGet(t, "http://"+g.admin+"/healthz"); code != 200 {
		t.Errorf("/healthz = %d", code)
	}
	t1.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, code, _ := open()
		if code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("slot not freed after a tunnel closed: %d", code)
		}
		time.Sleep(50 * time.Millisecond)
	}
	_, scrape := httpGet(t, "http://"+g.admin+"/metrics")
	if !strings.Contains(scrape, `reason="overloaded"`) {
		t.Errorf("refusal not counted")
	}
}
