//go:build unix

package tlsbypass

import (
	"bytes"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestStalledReaderHoldsNoBuffer checks that a tunnel whose reader is much
// slower than its source parks waiting for room in the destination
// (waitRoom), not inside a write holding a pooled buffer: thousands of
// downloads to slow clients must not pin 32 KiB each.
func TestStalledReaderHoldsNoBuffer(t *testing.T) {
	for _, m := range []struct {
		name  string
		pipes *Pipes
	}{{"buffer", nil}, {"splice without a free pipe", exhaustedPipes()}} {
		t.Run(m.name, func(t *testing.T) {
			tn := newTunnelCopy(t, m.pipes)
			// Small socket buffers between the relay and the client, so
			// the stall shows at once rather than after megabytes.
			tn.client.SetReadBuffer(16 << 10)
			tn.rc.SetWriteBuffer(16 << 10)
			ch := tn.relay(nil, Options{HalfCloseTimeout: ioBound})
			// The upstream floods; the client reads a little now and then.
			stop := make(chan struct{})
			drained := make(chan struct{})
			go func() {
				defer close(drained)
				buf := make([]byte, 16<<10)
				for {
					select {
					case <-stop:
						return
					case <-time.After(30 * time.Millisecond):
					}
					tn.client.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
					if _, err := tn.client.Read(buf); err != nil && !isTimeout(err) {
						return
					}
				}
			}()
			flooded := make(chan struct{})
			go func() {
				defer close(flooded)
				chunk := make([]byte, 64<<10)
				for {
					select {
					case <-stop:
						return
					default:
					}
					tn.upstream.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
					if _, err := tn.upstream.Write(chunk); err != nil && !isTimeout(err) {
						return
					}
				}
			}()
			deadline := time.Now().Add(bound)
			var where string
			for time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
				if where = relayWait(); strings.Contains(where, "waitRoom") {
					break
				}
			}
			close(stop)
			<-flooded
			<-drained
			if !strings.Contains(where, "waitRoom") {
				t.Errorf("stalled direction is parked in %q; want waitRoom (holding no buffer)", where)
			}
			tn.closeAll()
			tn.wait(t, ch, ioBound)
		})
	}
}

// relayWait names the relay function in which a copying goroutine waits:
// the innermost tlsbypass frame of any goroutine blocked in copy.
func relayWait() string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var found []string
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		s := string(g)
		if !strings.Contains(s, "tlsbypass.(*relay).copy(") {
			continue
		}
		for _, line := range strings.Split(s, "\n") {
			if strings.Contains(line, "tlsbypass.(*relay).") && !strings.HasPrefix(line, "\t") {
				found = append(found, line[strings.Index(line, "(*relay)."):])
				break
			}
		}
	}
	return strings.Join(found, " | ")
}

func isTimeout(err error) bool {
	type timeout interface{ Timeout() bool }
	te, ok := err.(timeout)
	return ok && te.Timeout()
}
