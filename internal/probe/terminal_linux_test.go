package probe

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// openPTY opens a pseudo-terminal pair without a helper library: the
// master from /dev/ptmx, unlocked, and the slave it names.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	fd := int(m.Fd())
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		t.Skipf("unlockpt: %v", err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		t.Skipf("ptsname: %v", err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("opening the slave: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return m, s
}

func TestTerminalProgressOnATerminal(t *testing.T) {
	master, slave := openPTY(t)
	progress := TerminalProgress(slave)
	if progress == nil {
		t.Fatal("TerminalProgress on a pseudo-terminal is nil")
	}
	progress(1, 2)
	progress(2, 2)
	master.SetReadDeadline(time.Now().Add(5 * time.Second))
	var got strings.Builder
	buf := make([]byte, 256)
	for !strings.Contains(got.String(), "probing 2/2") {
		n, err := master.Read(buf)
		if err != nil {
			t.Fatalf("reading the terminal: %v (read %q)", err, got.String())
		}
		got.Write(buf[:n])
	}
	if want := "\rprobing 1/2\rprobing 2/2"; got.String() != want {
		t.Errorf("terminal shows %q, want %q", got.String(), want)
	}
}
