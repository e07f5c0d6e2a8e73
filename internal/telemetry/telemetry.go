// Package telemetry holds the gateway's Prometheus metrics and its
// connection-event log.
//
// Metrics are registered under the "gateway" namespace by NewMetrics. Every
// label is drawn from a small, bounded set (protocol, decision, reason,
// catalog service, geography, ...): a raw host name or client address never
// becomes a label value. Empty label values are recorded as "none". All
// methods of *Metrics are cheap, safe for concurrent use, and no-ops on a nil
// *Metrics, so a caller can run without metrics.
//
// The event log writes one line per connection, shaped like Defender's
// DeviceNetworkEvents table, either as JSON (AppendJSON) or as Squid's native
// access.log line (AppendSquid). Log never blocks: events go through a bounded
// queue to a single writer goroutine, and are dropped (and counted) when the
// queue is full. A file sink is reopened by Reopen, typically on SIGHUP after
// logrotate moved the file; the package does no rotation itself.
package telemetry
