package tlsbypass

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/defendergw/gateway/internal/bufpool"
)

// TestMain fails the package if any goroutine (a relay direction, a test
// helper) outlives the tests.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	// bound is the generous upper limit for "Relay gave up in bounded time"
	// when the configured timeout is 200ms.
	bound = 3 * time.Second
	// ioBound is the deadline on every blocking operation of the test's own
	// ends, so a broken relay fails a test instead of hanging it.
	ioBound = 20 * time.Second
)

// tcpPair returns a connected pair of TCP connections over loopback: the
// dialed end and the accepted end. Both are closed when the test ends.
func tcpPair(tb testing.TB) (dialed, accepted *net.TCPConn) {
	tb.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 0})
	if err != nil {
		tb.Fatalf("listen on 127.0.0.1:0: %v", err)
	}
	defer ln.Close()
	type accept struct {
		c   *net.TCPConn
		err error
	}
	ch := make(chan accept, 1)
	go func() {
		c, err := ln.AcceptTCP()
		ch <- accept{c, err}
	}()
	d, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		ln.Close()
		<-ch
		tb.Fatalf("dial %s: %v", ln.Addr(), err)
	}
	a := <-ch
	if a.err != nil {
		d.Close()
		tb.Fatalf("accept on %s: %v", ln.Addr(), a.err)
	}
	tb.Cleanup(func() {
		d.Close()
		a.c.Close()
	})
	return d, a.c
}

// side names one end of the tunnel.
type side int

const (
	clientSide side = iota
	upstreamSide
)

func (s side) String() string {
	if s == clientSide {
		return "client"
	}
	return "upstream"
}

func (s side) other() side { return 1 - s }

// tunnel is the topology Relay runs in: the test's client end talks to the
// relay's client conn over one loopback pair, the relay's upstream conn talks
// to the test's upstream end over another.
type tunnel struct {
	client, upstream *net.TCPConn // the test's ends
	rc, ru           *net.TCPConn // the relay's ends
	pipes            *Pipes       // the relay's Options.Splice
}

func newTunnel(tb testing.TB) *tunnel {
	tb.Helper()
	c, rc := tcpPair(tb) // the client dials the gateway
	ru, u := tcpPair(tb) // the gateway dials the destination
	return &tunnel{client: c, upstream: u, rc: rc, ru: ru}
}

// newTunnelCopy is newTunnel whose relay splices with pipes (nil: buffer).
func newTunnelCopy(tb testing.TB, pipes *Pipes) *tunnel {
	tb.Helper()
	tn := newTunnel(tb)
	tn.pipes = pipes
	return tn
}

// exhaustedPipes is a bound whose only pipe is taken for good: every burst
// takes the buffered fallback.
func exhaustedPipes() *Pipes {
	p := NewPipes(1)
	p.acquire()
	return p
}

// eachCopy runs a relay test once per copy method, so that the pooled
// buffer, splice, and splice's fallback when no pipe is free keep exactly
// the same semantics.
func eachCopy(t *testing.T, test func(t *testing.T, pipes *Pipes)) {
	for _, m := range []struct {
		name  string
		pipes *Pipes
	}{{"buffer", nil}, {"splice", NewPipes(64)}, {"splice without a free pipe", exhaustedPipes()}} {
		t.Run(m.name, func(t *testing.T) { test(t, m.pipes) })
	}
}

// end is the test's end on side s.
func (tn *tunnel) end(s side) *net.TCPConn {
	if s == clientSide {
		return tn.client
	}
	return tn.upstream
}

func (tn *tunnel) closeAll() {
	for _, c := range []*net.TCPConn{tn.client, tn.upstream, tn.rc, tn.ru} {
		c.Close()
	}
}

// relay starts Relay on the relay's ends.
func (tn *tunnel) relay(pending []byte, opts Options) <-chan Stats {
	ch := make(chan Stats, 1)
	opts.Splice = tn.pipes
	go func() { ch <- Relay(tn.rc, tn.ru, pending, opts) }()
	return ch
}

// wait returns Relay's stats. If Relay has not returned within limit it
// reports an error, closes every conn so Relay cannot outlive the test, and
// returns ok false.
func (tn *tunnel) wait(t *testing.T, ch <-chan Stats, limit time.Duration) (st Stats, ok bool) {
	t.Helper()
	timer := time.NewTimer(limit)
	defer timer.Stop()
	select {
	case st := <-ch:
		return st, true
	case <-timer.C:
		t.Errorf("Relay still running after %s; want it to have returned", limit)
		tn.closeAll()
		<-ch
		return Stats{}, false
	}
}

// sent is the byte count Stats report for the direction leaving side s.
func sent(st Stats, from side) int64 {
	if from == clientSide {
		return st.ClientToUpstream
	}
	return st.UpstreamToClient
}

func randBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	var s [32]byte
	s[0] = byte(seed)
	rand.NewChaCha8(s).Read(b)
	return b
}

func writeAll(c *net.TCPConn, p []byte) error {
	c.SetWriteDeadline(time.Now().Add(ioBound))
	_, err := c.Write(p)
	return err
}

// sendAndCloseWrite writes p, then half-closes c.
func sendAndCloseWrite(c *net.TCPConn, p []byte) error {
	if err := writeAll(c, p); err != nil {
		return err
	}
	return c.CloseWrite()
}

// readAll reads c up to EOF.
func readAll(c *net.TCPConn) ([]byte, error) {
	c.SetReadDeadline(time.Now().Add(ioBound))
	return io.ReadAll(c)
}

func readFull(c *net.TCPConn, n int) ([]byte, error) {
	c.SetReadDeadline(time.Now().Add(ioBound))
	b := make([]byte, n)
	_, err := io.ReadFull(c, b)
	return b, err
}

// wantEOF checks that c has nothing more to read: the peer has finished.
func wantEOF(t *testing.T, name string, c *net.TCPConn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(ioBound))
	var b [1]byte
	if n, err := c.Read(b[:]); n != 0 || err != io.EOF {
		t.Errorf("%s end Read = %d, %v; want 0, EOF", name, n, err)
	}
}

// wantRelayClosed checks that Relay closed its own conns.
func wantRelayClosed(t *testing.T, tn *tunnel) {
	t.Helper()
	for name, c := range map[string]*net.TCPConn{"relay client conn": tn.rc, "relay upstream conn": tn.ru} {
		if _, err := c.Write([]byte{0}); !errors.Is(err, net.ErrClosed) {
			t.Errorf("%s Write after Relay returned: err = %v; want net.ErrClosed", name, err)
		}
	}
}

func bytesDiff(got, want []byte) string {
	if bytes.Equal(got, want) {
		return ""
	}
	i := 0
	for i < len(got) && i < len(want) && got[i] == want[i] {
		i++
	}
	return fmt.Sprintf("%d bytes, want %d; first difference at byte %d", len(got), len(want), i)
}

func TestRelayBothWays(t *testing.T) { eachCopy(t, testRelayBothWays) }

func testRelayBothWays(t *testing.T, pipes *Pipes) {
	tests := []struct {
		name     string
		up, down int // bytes client→upstream, upstream→client
	}{
		{"nothing either way", 0, 0},
		{"one byte each way", 1, 1},
		{"4MiB each way concurrently", 4 << 20, 4 << 20},
		{"4MiB client to upstream only", 4 << 20, 0},
		{"4MiB upstream to client only", 0, 4 << 20},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tn := newTunnelCopy(t, pipes)
			up, down := randBytes(uint64(2*i), tt.up), randBytes(uint64(2*i+1), tt.down)
			ch := tn.relay(nil, Options{})

			var gotUp, gotDown []byte
			var errs [4]error
			var wg sync.WaitGroup
			wg.Go(func() { errs[0] = sendAndCloseWrite(tn.client, up) })
			wg.Go(func() { errs[1] = sendAndCloseWrite(tn.upstream, down) })
			wg.Go(func() { gotUp, errs[2] = readAll(tn.upstream) })
			wg.Go(func() { gotDown, errs[3] = readAll(tn.client) })
			wg.Wait()
			for i, what := range []string{"client send", "upstream send", "upstream read", "client read"} {
				if errs[i] != nil {
					t.Errorf("%s: %v", what, errs[i])
				}
			}
			if d := bytesDiff(gotUp, up); d != "" {
				t.Errorf("upstream received %s", d)
			}
			if d := bytesDiff(gotDown, down); d != "" {
				t.Errorf("client received %s", d)
			}

			st, ok := tn.wait(t, ch, ioBound)
			if !ok {
				return
			}
			if st.ClientToUpstream != int64(tt.up) || st.UpstreamToClient != int64(tt.down) {
				t.Errorf("Stats bytes = %d up, %d down; want %d, %d", st.ClientToUpstream, st.UpstreamToClient, tt.up, tt.down)
			}
			if st.End != "closed" || st.Err != nil {
				t.Errorf("Stats End, Err = %q, %v; want \"closed\", nil", st.End, st.Err)
			}
			wantEOF(t, "client", tn.client)
			wantEOF(t, "upstream", tn.upstream)
			wantRelayClosed(t, tn)
		})
	}
}

func TestRelayPendingFirst(t *testing.T) { eachCopy(t, testRelayPendingFirst) }

func testRelayPendingFirst(t *testing.T, pipes *Pipes) {
	tests := []struct {
		name          string
		pending, data []byte // data is what the client sends after pending
	}{
		{"no pending", nil, []byte("client data")},
		{"pending then client data", []byte("\x16\x03\x01 ClientHello"), []byte("client data")},
		{"pending only", []byte("\x16\x03\x01 ClientHello"), nil},
		{"1MiB pending then 1MiB client data", randBytes(10, 1<<20), randBytes(11, 1<<20)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tn := newTunnelCopy(t, pipes)
			// The head of the client's data is queued on the relay's client
			// conn before Relay starts, so a relay that copied client bytes
			// before writing pending would reorder them.
			head := tt.data[:min(len(tt.data), 16<<10)]
			if err := writeAll(tn.client, head); err != nil {
				t.Fatalf("client write: %v", err)
			}
			var errs [3]error
			var got []byte
			var wg sync.WaitGroup
			wg.Go(func() { errs[0] = sendAndCloseWrite(tn.client, tt.data[len(head):]) })
			wg.Go(func() {
				got, errs[1] = readAll(tn.upstream)
				if errs[1] == nil {
					errs[2] = tn.upstream.CloseWrite()
				}
			})
			ch := tn.relay(tt.pending, Options{})
			wg.Wait()
			for i, what := range []string{"client send", "upstream read", "upstream CloseWrite"} {
				if errs[i] != nil {
					t.Errorf("%s: %v", what, errs[i])
				}
			}
			want := append(append([]byte{}, tt.pending...), tt.data...)
			if d := bytesDiff(got, want); d != "" {
				t.Errorf("upstream received %s (want pending, then client data)", d)
			}
			if back, err := readAll(tn.client); err != nil || len(back) != 0 {
				t.Errorf("client read = %d bytes, %v; want 0 bytes, nil (EOF)", len(back), err)
			}
			st, ok := tn.wait(t, ch, ioBound)
			if !ok {
				return
			}
			if st.ClientToUpstream != int64(len(want)) || st.UpstreamToClient != 0 {
				t.Errorf("Stats bytes = %d up, %d down; want %d (pending included), 0", st.ClientToUpstream, st.UpstreamToClient, len(want))
			}
			if st.End != "closed" || st.Err != nil {
				t.Errorf("Stats End, Err = %q, %v; want \"closed\", nil", st.End, st.Err)
			}
		})
	}
}

func TestRelayHalfClose(t *testing.T) { eachCopy(t, testRelayHalfClose) }

func testRelayHalfClose(t *testing.T, pipes *Pipes) {
	tests := []struct {
		name   string
		closer side // half-closes after its request; the other side replies, then closes
	}{
		{"client half-closes, upstream replies", clientSide},
		{"upstream half-closes, client replies", upstreamSide},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tn := newTunnelCopy(t, pipes)
			a, b := tn.end(tt.closer), tn.end(tt.closer.other())
			request, reply := randBytes(uint64(20+i), 1<<10), randBytes(uint64(30+i), 2<<20)
			ch := tn.relay(nil, Options{HalfCloseTimeout: ioBound})

			if err := sendAndCloseWrite(a, request); err != nil {
				t.Fatalf("%s send and CloseWrite: %v", tt.closer, err)
			}
			got, err := readAll(b)
			if err != nil {
				t.Fatalf("%s read to EOF: %v", tt.closer.other(), err)
			}
			if d := bytesDiff(got, request); d != "" {
				t.Errorf("%s received %s", tt.closer.other(), d)
			}
			// b has seen EOF; its own direction must still flow.
			var gotReply []byte
			var readErr error
			var wg sync.WaitGroup
			wg.Go(func() { gotReply, readErr = readAll(a) })
			if err := writeAll(b, reply); err != nil {
				t.Errorf("%s reply after EOF: %v", tt.closer.other(), err)
			}
			b.Close()
			wg.Wait()
			if readErr != nil {
				t.Errorf("%s read reply: %v", tt.closer, readErr)
			}
			if d := bytesDiff(gotReply, reply); d != "" {
				t.Errorf("%s received reply %s", tt.closer, d)
			}

			st, ok := tn.wait(t, ch, ioBound)
			if !ok {
				return
			}
			if got, want := sent(st, tt.closer), int64(len(request)); got != want {
				t.Errorf("Stats bytes from %s = %d; want %d", tt.closer, got, want)
			}
			if got, want := sent(st, tt.closer.other()), int64(len(reply)); got != want {
				t.Errorf("Stats bytes from %s = %d; want %d", tt.closer.other(), got, want)
			}
			if st.End != "closed" || st.Err != nil {
				t.Errorf("Stats End, Err = %q, %v; want \"closed\", nil", st.End, st.Err)
			}
		})
	}
}

func TestRelayHalfCloseLinger(t *testing.T) { eachCopy(t, testRelayHalfCloseLinger) }

func testRelayHalfCloseLinger(t *testing.T, pipes *Pipes) {
	tests := []struct {
		name   string
		closer side // half-closes; the other side stays open and silent
		opts   Options
	}{
		{"client half-closes, no idle limit", clientSide, Options{HalfCloseTimeout: 200 * time.Millisecond}},
		{"upstream half-closes, no idle limit", upstreamSide, Options{HalfCloseTimeout: 200 * time.Millisecond}},
		{"client half-closes, long idle limit", clientSide, Options{HalfCloseTimeout: 200 * time.Millisecond, IdleTimeout: time.Hour}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tn := newTunnelCopy(t, pipes)
			a, b := tn.end(tt.closer), tn.end(tt.closer.other())
			ch := tn.relay(nil, tt.opts)
			if err := a.CloseWrite(); err != nil {
				t.Fatalf("%s CloseWrite: %v", tt.closer, err)
			}
			// The half-close is propagated: b reads EOF and then says nothing.
			wantEOF(t, tt.closer.other().String(), b)

			st, ok := tn.wait(t, ch, bound)
			if !ok {
				return
			}
			if st.End != "half-close-timeout" || !errors.Is(st.Err, errHalfClose) {
				t.Errorf("Stats End, Err = %q, %v; want \"half-close-timeout\", %v", st.End, st.Err, errHalfClose)
			}
			if st.ClientToUpstream != 0 || st.UpstreamToClient != 0 {
				t.Errorf("Stats bytes = %d up, %d down; want 0, 0", st.ClientToUpstream, st.UpstreamToClient)
			}
			// The lingering side is told the tunnel is over.
			wantEOF(t, tt.closer.String(), a)
			wantRelayClosed(t, tn)
		})
	}
}

// TestRelayNoHalfCloseTimeout: a zero HalfCloseTimeout sets no linger of its
// own (the package restates no default): after a half-close the other
// direction lasts until the idle limit ends it.
func TestRelayNoHalfCloseTimeout(t *testing.T) { eachCopy(t, testRelayNoHalfCloseTimeout) }

func testRelayNoHalfCloseTimeout(t *testing.T, pipes *Pipes) {
	tn := newTunnelCopy(t, pipes)
	a, b := tn.end(clientSide), tn.end(upstreamSide)
	ch := tn.relay(nil, Options{IdleTimeout: 300 * time.Millisecond})
	if err := a.CloseWrite(); err != nil {
		t.Fatalf("client CloseWrite: %v", err)
	}
	wantEOF(t, "upstream", b)
	st, ok := tn.wait(t, ch, bound)
	if !ok {
		return
	}
	if st.End != "idle-timeout" {
		t.Errorf("Stats End = %q (%v), want \"idle-timeout\": no half-close linger without HalfCloseTimeout", st.End, st.Err)
	}
}

// TestRelayHalfCloseLingerStalledWriter: after one side half-closes, the
// other direction must end within HalfCloseTimeout even when it is stuck
// writing to a peer that does not read (Options.HalfCloseTimeout: "bounds how
// long one direction may keep flowing after the other has finished").
func TestRelayHalfCloseLingerStalledWriter(t *testing.T) {
	eachCopy(t, testRelayHalfCloseLingerStalledWriter)
}

func testRelayHalfCloseLingerStalledWriter(t *testing.T, pipes *Pipes) {
	tests := []struct {
		name   string
		closer side // half-closes and never reads; the other side floods it
		opts   Options
	}{
		{"client half-closes, upstream floods, no idle limit", clientSide, Options{HalfCloseTimeout: 200 * time.Millisecond}},
		{"upstream half-closes, client floods, no idle limit", upstreamSide, Options{HalfCloseTimeout: 200 * time.Millisecond}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tn := newTunnelCopy(t, pipes)
			a, b := tn.end(tt.closer), tn.end(tt.closer.other())
			ch := tn.relay(nil, tt.opts)
			if err := a.CloseWrite(); err != nil {
				t.Fatalf("%s CloseWrite: %v", tt.closer, err)
			}
			wantEOF(t, tt.closer.other().String(), b)
			var wg sync.WaitGroup
			defer wg.Wait()
			wg.Go(func() {
				chunk := make([]byte, 64<<10)
				b.SetWriteDeadline(time.Now().Add(ioBound))
				for {
					if _, err := b.Write(chunk); err != nil {
						return
					}
				}
			})
			st, ok := tn.wait(t, ch, bound)
			b.Close() // stop the flood
			if !ok {
				return
			}
			if st.End != "half-close-timeout" || !errors.Is(st.Err, errHalfClose) {
				t.Errorf("Stats End, Err = %q, %v; want \"half-close-timeout\", %v", st.End, st.Err, errHalfClose)
			}
		})
	}
}

func TestRelayIdleTimeout(t *testing.T) { eachCopy(t, testRelayIdleTimeout) }

func testRelayIdleTimeout(t *testing.T, pipes *Pipes) {
	const (
		idle   = 200 * time.Millisecond
		every  = 50 * time.Millisecond
		during = 600 * time.Millisecond
		msgLen = 16
	)
	tests := []struct {
		name    string
		traffic bool
		from    side // sender of the steady one-way traffic
	}{
		{"silent tunnel", false, clientSide},
		{"steady traffic client to upstream only", true, clientSide},
		{"steady traffic upstream to client only", true, upstreamSide},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tn := newTunnelCopy(t, pipes)
			ch := tn.relay(nil, Options{IdleTimeout: idle, HalfCloseTimeout: ioBound})
			var want []byte
			if tt.traffic {
				src, dst := tn.end(tt.from), tn.end(tt.from.other())
				msgs := int(during / every)
				want = randBytes(uint64(40+i), msgs*msgLen)
				var got []byte
				var readErr error
				var wg sync.WaitGroup
				wg.Go(func() { got, readErr = readFull(dst, len(want)) })
				tick := time.NewTicker(every)
				for m := range msgs {
					<-tick.C
					if err := writeAll(src, want[m*msgLen:(m+1)*msgLen]); err != nil {
						t.Errorf("%s write %d of %d: %v", tt.from, m+1, msgs, err)
						break
					}
				}
				tick.Stop()
				wg.Wait()
				// Every message crossing proves the idle timer did not close
				// the tunnel while only one direction was active.
				if readErr != nil {
					t.Errorf("%s read: %v", tt.from.other(), readErr)
				}
				if d := bytesDiff(got, want); d != "" {
					t.Errorf("%s received %s", tt.from.other(), d)
				}
			}
			// Now silent: the idle limit ends the tunnel.
			st, ok := tn.wait(t, ch, bound)
			if !ok {
				return
			}
			if st.End != "idle-timeout" || !errors.Is(st.Err, errIdle) {
				t.Errorf("Stats End, Err = %q, %v; want \"idle-timeout\", %v", st.End, st.Err, errIdle)
			}
			if got := sent(st, tt.from); got != int64(len(want)) {
				t.Errorf("Stats bytes from %s = %d; want %d", tt.from, got, len(want))
			}
			if got := sent(st, tt.from.other()); got != 0 {
				t.Errorf("Stats bytes from %s = %d; want 0", tt.from.other(), got)
			}
			wantEOF(t, "client", tn.client)
			wantEOF(t, "upstream", tn.upstream)
			wantRelayClosed(t, tn)
		})
	}
}

func TestRelayReset(t *testing.T) { eachCopy(t, testRelayReset) }

func testRelayReset(t *testing.T, pipes *Pipes) {
	tests := []struct {
		name  string
		reset side // aborts with RST while the other side streams to it
	}{
		{"upstream resets while client sends", upstreamSide},
		{"client resets while upstream sends", clientSide},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tn := newTunnelCopy(t, pipes)
			r, s := tn.end(tt.reset), tn.end(tt.reset.other())
			ch := tn.relay(nil, Options{})

			writeErr := make(chan error, 1)
			go func() {
				chunk := make([]byte, 32<<10)
				s.SetWriteDeadline(time.Now().Add(ioBound))
				for {
					if _, err := s.Write(chunk); err != nil {
						writeErr <- err
						return
					}
				}
			}()
			// Mid-stream: some bytes have crossed, more are in flight.
			const seen = 256 << 10
			if _, err := readFull(r, seen); err != nil {
				t.Fatalf("%s read %d bytes: %v", tt.reset, seen, err)
			}
			if err := r.SetLinger(0); err != nil {
				t.Fatalf("SetLinger(0): %v", err)
			}
			r.Close() // RST

			st, ok := tn.wait(t, ch, bound)
			if !ok {
				<-writeErr
				return
			}
			if st.End != "error" || st.Err == nil {
				t.Errorf("Stats End, Err = %q, %v; want \"error\", non-nil", st.End, st.Err)
			}
			if got := sent(st, tt.reset.other()); got < seen {
				t.Errorf("Stats bytes from %s = %d; want at least the %d the %s read", tt.reset.other(), got, seen, tt.reset)
			}
			// The streaming side observes the closure: its writes fail and
			// its reads end, neither by the test's own deadline.
			if err := <-writeErr; errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("%s write: %v; want the tunnel's closure, not the test deadline", tt.reset.other(), err)
			}
			s.SetReadDeadline(time.Now().Add(ioBound))
			var b [1]byte
			if n, err := s.Read(b[:]); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("%s Read = %d, %v; want EOF or connection reset", tt.reset.other(), n, err)
			}
			wantRelayClosed(t, tn)
		})
	}
}

// TestRelayQueuedBeforeStart: bytes (and a FIN) that arrived before Relay
// started are relayed at once. The runtime poller's readiness is reset when a
// RawConn read starts, so a wait that only trusted the poller would sleep
// until bytes that will never come.
func TestRelayQueuedBeforeStart(t *testing.T) { eachCopy(t, testRelayQueuedBeforeStart) }

func testRelayQueuedBeforeStart(t *testing.T, pipes *Pipes) {
	tests := []struct {
		name       string
		fromClient []byte
		fromUp     []byte
		fin        bool // the sender(s) also half-close before Relay starts
	}{
		{"client data queued", []byte("queued client hello"), nil, false},
		{"client data and FIN queued", []byte("queued client hello"), nil, true},
		{"upstream data queued", nil, []byte("queued server banner"), false},
		{"both ways queued", []byte("queued client hello"), []byte("queued server banner"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tn := newTunnelCopy(t, pipes)
			for _, q := range []struct {
				from side
				p    []byte
			}{{clientSide, tt.fromClient}, {upstreamSide, tt.fromUp}} {
				if q.p == nil {
					continue
				}
				if err := writeAll(tn.end(q.from), q.p); err != nil {
					t.Fatalf("%s write: %v", q.from, err)
				}
				if tt.fin {
					if err := tn.end(q.from).CloseWrite(); err != nil {
						t.Fatalf("%s CloseWrite: %v", q.from, err)
					}
				}
			}
			time.Sleep(50 * time.Millisecond) // let the bytes land in the relay's receive buffers
			// No idle limit: nothing but the queued bytes can wake the relay.
			ch := tn.relay(nil, Options{HalfCloseTimeout: ioBound})

			for _, q := range []struct {
				from side
				p    []byte
			}{{clientSide, tt.fromClient}, {upstreamSide, tt.fromUp}} {
				if q.p == nil {
					continue
				}
				dst := tn.end(q.from.other())
				dst.SetReadDeadline(time.Now().Add(bound))
				got := make([]byte, len(q.p))
				if _, err := io.ReadFull(dst, got); err != nil {
					t.Errorf("%s read of queued bytes: %v", q.from.other(), err)
				} else if !bytes.Equal(got, q.p) {
					t.Errorf("%s received %q; want %q", q.from.other(), got, q.p)
				}
				if tt.fin {
					wantEOF(t, q.from.other().String(), dst)
				}
			}
			// Finish cleanly.
			for _, s := range []side{clientSide, upstreamSide} {
				tn.end(s).CloseWrite()
			}
			st, ok := tn.wait(t, ch, ioBound)
			if !ok {
				return
			}
			if st.ClientToUpstream != int64(len(tt.fromClient)) || st.UpstreamToClient != int64(len(tt.fromUp)) {
				t.Errorf("Stats bytes = %d up, %d down; want %d, %d", st.ClientToUpstream, st.UpstreamToClient, len(tt.fromClient), len(tt.fromUp))
			}
			if st.End != "closed" || st.Err != nil {
				t.Errorf("Stats End, Err = %q, %v; want \"closed\", nil", st.End, st.Err)
			}
		})
	}
}

// benchPayload is streamed client→upstream per benchmark op.
const benchPayload = 256 << 20

// benchTunnel streams benchPayload bytes per op from the client end to the
// upstream end of one tunnel, whose middle start wires up; start returns a
// function that waits for the middle to finish after both ends half-closed.
func benchTunnel(b *testing.B, start func(tn *tunnel) (wait func())) {
	tn := newTunnel(b)
	wait := start(tn)
	chunk := randBytes(99, 1<<20)
	buf := make([]byte, 1<<20)
	b.SetBytes(benchPayload)
	b.ReportAllocs()
	for b.Loop() {
		errc := make(chan error, 1)
		go func() {
			var err error
			for n := 0; n < benchPayload && err == nil; n += len(chunk) {
				_, err = tn.client.Write(chunk)
			}
			errc <- err
		}()
		for n := 0; n < benchPayload; {
			m, err := tn.upstream.Read(buf)
			if err != nil {
				b.Fatalf("upstream read after %d bytes: %v", n, err)
			}
			n += m
		}
		if err := <-errc; err != nil {
			b.Fatalf("client write: %v", err)
		}
	}
	b.StopTimer()
	tn.client.CloseWrite()
	if rest, err := readAll(tn.upstream); err != nil || len(rest) != 0 {
		b.Errorf("upstream after the last op: %d bytes, %v; want 0, EOF", len(rest), err)
	}
	tn.upstream.CloseWrite()
	wait()
}

func BenchmarkRelayBulk(b *testing.B) {
	for _, m := range []struct {
		name  string
		pipes *Pipes
	}{{"buffer", nil}, {"splice", NewPipes(64)}} {
		b.Run(m.name, func(b *testing.B) {
			benchTunnel(b, func(tn *tunnel) func() {
				tn.pipes = m.pipes
				ch := tn.relay(nil, Options{})
				return func() {
					if st := <-ch; st.End != "closed" {
						b.Errorf("Relay End = %q (%v); want \"closed\"", st.End, st.Err)
					}
				}
			})
		})
	}
}

// BenchmarkDirectCopy is the same topology with a minimal unverified tunnel:
// two goroutines io.Copy each way. On Linux io.Copy between TCP conns uses
// splice(2); the userspace variant hides ReaderFrom/WriterTo and copies
// through a 32KiB buffer like Relay does.
func BenchmarkDirectCopy(b *testing.B) {
	for _, bc := range []struct {
		name string
		copy func(dst, src *net.TCPConn)
	}{
		{"io.Copy", func(dst, src *net.TCPConn) { io.Copy(dst, src) }},
		{"userspace-32KiB", func(dst, src *net.TCPConn) {
			io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, make([]byte, bufpool.Size))
		}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			benchTunnel(b, func(tn *tunnel) func() {
				var wg sync.WaitGroup
				wg.Go(func() { bc.copy(tn.ru, tn.rc); tn.ru.CloseWrite() })
				wg.Go(func() { bc.copy(tn.rc, tn.ru); tn.rc.CloseWrite() })
				return func() {
					wg.Wait()
					tn.rc.Close()
					tn.ru.Close()
				}
			})
		})
	}
}

func TestRelayStaleWriteDeadline(t *testing.T) { eachCopy(t, testRelayStaleWriteDeadline) }

// testRelayStaleWriteDeadline: a write that had to wait for a slow reader
// arms a write deadline one idle period ahead. Once the reader caught up,
// that deadline must not end a tunnel that keeps moving bytes past it:
// writes that do not wait carry no deadline of their own, so the relay has
// to renew an expired one rather than fail.
func testRelayStaleWriteDeadline(t *testing.T, pipes *Pipes) {
	const (
		idle  = 400 * time.Millisecond
		bulk  = 16 << 20
		every = 100 * time.Millisecond
		msgs  = 8 // 800 ms of steady traffic, twice the idle period
	)
	tn := newTunnelCopy(t, pipes)
	ch := tn.relay(nil, Options{IdleTimeout: idle, HalfCloseTimeout: ioBound})
	want := randBytes(7, bulk)
	sendErr := make(chan error, 1)
	go func() { sendErr <- writeAll(tn.client, want) }()
	// The upstream reads nothing for a while: the relay's write fills the
	// socket buffers and waits, arming a deadline.
	time.Sleep(every)
	got, err := readFull(tn.upstream, bulk)
	if err != nil {
		t.Fatalf("upstream read of the bulk: %v", err)
	}
	if d := bytesDiff(got, want); d != "" {
		t.Fatalf("upstream received %s", d)
	}
	if err := <-sendErr; err != nil {
		t.Fatalf("client write of the bulk: %v", err)
	}
	for m := range msgs {
		time.Sleep(every)
		msg := randBytes(uint64(100+m), 64)
		if err := writeAll(tn.client, msg); err != nil {
			t.Fatalf("client write %d: %v", m, err)
		}
		if got, err := readFull(tn.upstream, len(msg)); err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("message %d of %d (%d ms after the bulk) did not cross: %v", m+1, msgs, (m+1)*int(every/time.Millisecond), err)
		}
	}
	tn.client.CloseWrite()
	tn.upstream.CloseWrite()
	st, ok := tn.wait(t, ch, bound)
	if ok && st.Err != nil {
		t.Errorf("Stats Err = %v, want a clean end", st.Err)
	}
}

// addrOnly stands for proxyheader.Conn: a TCPConn with another RemoteAddr.
type addrOnly struct{ *net.TCPConn }

func (c addrOnly) BareTCP() *net.TCPConn { return c.TCPConn }

// A connection that adds nothing to its byte path is relayed on its
// TCPConn, so that splice applies to it.
func TestBareUnwrapsAddressOnlyConns(t *testing.T) {
	peer, gw := peekPair(t)
	defer peer.Close()
	defer gw.Close()
	if got := bare(addrOnly{gw}); got != net.Conn(gw) {
		t.Errorf("bare(addrOnly) = %T, want the *net.TCPConn", got)
	}
	if got := bare(peer); got != net.Conn(peer) {
		t.Errorf("bare(TCPConn) = %T %p, want itself", got, got)
	}
}
