package proxy

import (
	"bufio"
	"net"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/defendergw/gateway/internal/reason"
)

func TestConnLimiter(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu      sync.Mutex
		refused []reason.Code
	)
	lim := &ConnLimiter{Max: 3, PerClient: 2, OnRefuse: func(r reason.Code) { mu.Lock(); refused = append(refused, r); mu.Unlock() }}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) }),
		ConnState: func(c net.Conn, s http.ConnState) {
			if s == http.StateClosed {
				lim.Release(c)
			}
		},
	}
	go srv.Serve(lim.Listener(ln))
	defer srv.Close()

	dial := func(src string) net.Conn {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		c, err := d.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	status := func(c net.Conn) (int, string) {
		t.Helper()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode, resp.Header.Get(ReasonHeader)
	}
	a1, a2 := dial("127.0.0.1"), dial("127.0.0.1")
	if code, _ := status(a1); code != 200 {
		t.Fatalf("first connection: %d", code)
	}
	status(a2)
	// A third connection from the same client exceeds PerClient.
	if code, got := status(dial("127.0.0.1")); code != 429 || got != reason.ClientConnLimit.String() {
		t.Errorf("third from one client: %d %q, want 429 %s", code, got, reason.ClientConnLimit.String())
	}
	b1 := dial("127.0.0.3")
	if code, _ := status(b1); code != 200 {
		t.Fatalf("other client: %d", code)
	}
	// The gateway is now full.
	if code, got := status(dial("127.0.0.4")); code != 503 || got != reason.Overloaded.String() {
		t.Errorf("over Max: %d %q, want 503 %s", code, got, reason.Overloaded.String())
	}
	// Closing a connection frees its slot.
	a1.Close()
	deadline := time.Now().Add(3 * time.Second)
	for lim.Active() != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("active = %d after a close, want 2", lim.Active())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if code, _ := status(dial("127.0.0.4")); code != 200 {
		t.Errorf("after a slot freed: %d, want 200", code)
	}
	mu.Lock()
	defer mu.Unlock()
	if want := []reason.Code{reason.ClientConnLimit, reason.Overloaded}; !slices.Equal(refused, want) {
		t.Errorf("OnRefuse called with %v, want %v", refused, want)
	}
}
