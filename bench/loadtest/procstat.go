package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

func cpuTicks(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("bad /proc stat")
	}
	f := strings.Fields(s[i+1:]) // f[0] is field 3 (state); utime is field 14, stime 15
	if len(f) < 13 {
		return 0, errors.New("short /proc stat")
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, errors.New("bad utime/stime")
	}
	return ut + st, nil
}

func rssKiB(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			f := strings.Fields(line)
			if len(f) >= 2 {
				return strconv.ParseInt(f[1], 10, 64)
			}
		}
	}
	return 0, errors.New("no VmRSS")
}

// ioCounts returns a process's read and write system calls so far
// (/proc/PID/io syscr and syscw).
func ioCounts(pid int) ([2]int64, error) {
	var c [2]int64
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return c, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ": ")
		if !ok {
			continue
		}
		n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		switch k {
		case "syscr":
			c[0] = n
		case "syscw":
			c[1] = n
		}
	}
	return c, nil
}

func fdCount(pid int) (int, error) {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(ents), err
}

// goStats reads the gateway's goroutine count and Go stack and heap in use
// from its /metrics.
func (h *harness) goStats(t *target) (gor int, stack, heap float64, err error) {
	c := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return dialLoopback(ctx, t.adminAddr) },
	}}
	resp, err := c.Get("http://" + t.adminAddr + "/metrics")
	if err != nil {
		return 0, 0, 0, err
	}
	defer resp.Body.Close()
	want := map[string]*float64{"go_memstats_stack_inuse_bytes": &stack, "go_memstats_heap_inuse_bytes": &heap}
	var g float64
	want["go_goroutines"] = &g
	found := 0
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 8<<20))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && want[f[0]] != nil {
			if *want[f[0]], err = strconv.ParseFloat(f[1], 64); err != nil {
				return 0, 0, 0, fmt.Errorf("%s: %w", f[0], err)
			}
			found++
		}
	}
	if found != len(want) {
		return 0, 0, 0, errors.New("go_goroutines or go_memstats_{stack,heap}_inuse_bytes missing from /metrics")
	}
	return int(g), stack, heap, nil
}
