package tlsbypass

import (
	"testing"
	"time"
)

// TestSpliceIdleHoldsNoPipe checks the point of splicing only while bytes
// flow: after a burst each way, an idle tunnel holds no pipe (none counted
// as in use, and no file descriptors beyond its two sockets' worth).
func TestSpliceIdleHoldsNoPipe(t *testing.T) {
	tests := []struct {
		name    string
		bytes   int
		spliced bool // large bursts take a pipe; small ones a buffer
	}{
		{"one byte each way", 1, false},
		{"4MiB each way", 4 << 20, true},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pipes := NewPipes(8)
			tn := newTunnelCopy(t, pipes)
			ch := tn.relay(nil, Options{})
			for s := range []side{clientSide, upstreamSide} {
				from := side(s)
				want := randBytes(uint64(70+2*i+s), tt.bytes)
				errc := make(chan error, 1)
				go func() { errc <- writeAll(tn.end(from), want) }()
				got, err := readFull(tn.end(from.other()), len(want))
				if err != nil {
					t.Fatalf("%s read: %v", from.other(), err)
				}
				if err := <-errc; err != nil {
					t.Fatalf("%s write: %v", from, err)
				}
				if d := bytesDiff(got, want); d != "" {
					t.Fatalf("%s received %s", from.other(), d)
				}
			}
			// The burst is over: both directions are back to waiting.
			deadline := time.Now().Add(bound)
			for pipes.inUse.Load() != 0 && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			if got := pipes.inUse.Load(); got != 0 {
				t.Errorf("pipes in use while idle = %d; want 0", got)
			}
			if got := pipes.taken.Load() > 0; got != tt.spliced {
				t.Errorf("spliced = %v (%d pipes taken); want %v", got, pipes.taken.Load(), tt.spliced)
			}
			tn.client.CloseWrite()
			tn.upstream.CloseWrite()
			if st, ok := tn.wait(t, ch, ioBound); ok && (st.End != "closed" || st.UpstreamToClient != int64(tt.bytes)) {
				t.Errorf("Stats End, down = %q, %d; want \"closed\", %d", st.End, st.UpstreamToClient, tt.bytes)
			}
		})
	}
}

// TestPipesBound checks the bound itself: never more than max at once.
func TestPipesBound(t *testing.T) {
	for _, max := range []int{0, 1, 3} {
		p := NewPipes(max)
		want := max
		if want < 1 {
			want = 1
		}
		got := 0
		for p.acquire() {
			got++
			if got > 100 {
				break
			}
		}
		if got != want {
			t.Errorf("NewPipes(%d): acquired %d; want %d", max, got, want)
		}
		p.release()
		if !p.acquire() {
			t.Errorf("NewPipes(%d): acquire after release failed", max)
		}
	}
}
