package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/defendergw/gateway/internal/config"
)

var healthcheckHelp = cmdHelp{
	synopsis: "gateway healthcheck [flags]",
	about: `Ask the local gateway's admin listener whether it is alive (/healthz) or, with --ready, ready
(/readyz): exit 0 when it answers 200, 1 when not, 2 on error. It is the container image's
HEALTHCHECK (the image has no shell and no curl).`,
}

// healthcheck asks the local admin listener whether the gateway is alive
// (or, with --ready, ready). It is the container image's HEALTHCHECK: the
// image has no shell and no curl.
func healthcheck(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("healthcheck", flag.ContinueOnError)
	url := fs.String("url", "", "`URL` to check (default: /healthz on GATEWAY_ADMIN_LISTEN)")
	ready := fs.Bool("ready", false, "check /readyz instead of /healthz")
	timeout := fs.Duration("timeout", 2*time.Second, "give up after `D`")
	if exit, ok := parseNoArgs(fs, args, healthcheckHelp, stdout, stderr); !ok {
		return exit
	}
	if *url == "" {
		addr := config.EnvironMap()["GATEWAY_ADMIN_LISTEN"]
		if addr == "" {
			addr = config.Default("AdminListen")
		}
		host, port, err := net.SplitHostPort(addr)
		if err != nil || addr == "off" {
			fmt.Fprintf(stderr, "healthcheck: GATEWAY_ADMIN_LISTEN=%q: no admin listener to ask\n", addr)
			return 2
		}
		// A wildcard listener is reached on loopback.
		if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
			host = "127.0.0.1"
			if ip != nil && ip.To4() == nil {
				host = "::1"
			}
		}
		path := "/healthz"
		if *ready {
			path = "/readyz"
		}
		*url = "http://" + net.JoinHostPort(host, port) + path
	}
	c := &http.Client{Timeout: *timeout, Transport: &http.Transport{Proxy: nil}}
	resp, err := c.Get(*url)
	if err != nil {
		fmt.Fprintf(stderr, "healthcheck: %v\n", err)
		return 1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "healthcheck: %s: %d %s", *url, resp.StatusCode, body)
		return 1
	}
	fmt.Fprintf(stdout, "%s", body)
	return 0
}
