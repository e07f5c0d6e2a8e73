//go:build !linux

package gateway

import (
	"net"
	"time"
)

// listenConfig lets the net package set GATEWAY_TCP_KEEPALIVE on every
// accepted connection.
func listenConfig(keepAlive time.Duration) net.ListenConfig {
	period, cfg := tcpKeepAlive(keepAlive)
	return net.ListenConfig{KeepAlive: period, KeepAliveConfig: cfg}
}
