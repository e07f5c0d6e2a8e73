package main

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"
)

// runRelay is the reference column: a minimal Go CONNECT relay with no
// policy, no logs and no limits, what any Go proxy's tunnel costs at the
// least. It resolves names with the bench DNS server (as the gateway does)
// and relays with io.Copy, which splices on Linux. Plain HTTP gets 501.
func runRelay(listen, dnsAddr string) {
	res := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, dnsAddr)
	}}
	dialer := &net.Dialer{Timeout: 5 * time.Second, Resolver: res}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		fatalf("relay: %v", err)
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			os.Exit(1)
		}
		go relayConn(c, dialer)
	}
}

func relayConn(c net.Conn, d *net.Dialer) {
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil {
		c.Close()
		return
	}
	if req.Method != http.MethodConnect {
		io.WriteString(c, "HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
		c.Close()
		return
	}
	up, err := d.Dial("tcp", req.Host)
	if err != nil {
		io.WriteString(c, "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
		c.Close()
		return
	}
	io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n")
	if n := br.Buffered(); n > 0 {
		b, _ := br.Peek(n)
		up.Write(b)
	}
	done := make(chan struct{})
	go func() {
		io.Copy(up, c) // TCPConn.ReadFrom: splice
		up.(*net.TCPConn).CloseWrite()
		close(done)
	}()
	io.Copy(c, up)
	c.(*net.TCPConn).CloseWrite()
	<-done
	c.Close()
	up.Close()
}

func (h *harness) startRelay(ctx context.Context, t *target) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	t.proxyAddr = "127.0.0.1:" + strconv.Itoa(port)
	if err := h.launch(t, self, []string{"relay-serve", t.proxyAddr, h.up.dnsAddr}, os.Environ()); err != nil {
		return err
	}
	return h.waitReady(ctx, t, nil)
}
