// Package reason is the gateway's one vocabulary of request outcomes: every
// reason a request is allowed, refused or fails, with everything that is said
// about it elsewhere — the HTTP status of the gateway's own answer, the
// X-Gateway-Reason code, the metric label, the hint sent in the refusal
// body, the advice the connectivity probe prints, and the ActionType of the
// access-log event (named as in Defender's DeviceNetworkEvents).
//
// The allowlist, the proxy, telemetry and the probe all read this table, so
// a reason is added, or its status changed, in one place. The package does
// no I/O.
package reason

import (
	"fmt"
	"net/http"
	"strings"
)

// Code is one reason. The zero value is None: nothing to report (a clean
// success whose decision carries no reason of its own).
type Code uint8

// The reasons. Their X-Gateway-Reason codes, statuses and labels are
// contracts: operators alert on them and the acceptance suite reads them.
const (
	None Code = iota
	// Allowed: the allowlist allows the destination.
	Allowed
	// Unlisted: an unlisted destination allowed to an authenticated user
	// (GATEWAY_UNLISTED=authenticated).
	Unlisted
	// NotListed: the destination is on no allow rule, or a deny rule
	// refuses it.
	NotListed
	// Geography: the destination serves a data location the gateway is
	// not configured for (GATEWAY_GEOGRAPHIES).
	Geography
	// Cloud: the destination belongs to another cloud (GATEWAY_CLOUD).
	Cloud
	// Port: the destination is listed on other ports only.
	Port
	// IPLiteral: an IP-literal destination no rule names.
	IPLiteral
	// BadRequest: the request target or framing is malformed.
	BadRequest
	// ServiceDisabled: only a row of a disabled catalog service allows the
	// destination (GATEWAY_DISABLED_SERVICES, disable_services).
	ServiceDisabled
	// PrivateDestination: the name resolves to an internal address.
	PrivateDestination
	// DNSFailure: the name could not be resolved.
	DNSFailure
	// UpstreamUnreachable: the destination refused or reset the
	// connection, or answered nothing usable.
	UpstreamUnreachable
	// UpstreamTimeout: the destination did not answer in time.
	UpstreamTimeout
	// NotTLS closes a verified tunnel that did not start with a
	// ClientHello (after the 200, so it shows in logs and metrics only).
	NotTLS
	// SNIMismatch closes a verified tunnel whose ClientHello names another
	// host than the CONNECT (domain fronting).
	SNIMismatch
	// ClientNotAllowed refuses a client outside GATEWAY_CLIENT_CIDRS.
	ClientNotAllowed
	// AuthRequired asks for valid proxy credentials: 407, or 403 inside
	// an inspected tunnel opened anonymously (clients never send
	// Proxy-Authorization inside TLS, so a 407 there cannot be answered).
	AuthRequired
	// AuthRateLimited refuses a client that failed authentication too
	// often.
	AuthRateLimited
	// MethodNotAllowed refuses TRACE.
	MethodNotAllowed
	// UpgradeRefused refuses a WebSocket upgrade of plain HTTP.
	UpgradeRefused
	// MaxForwards marks an OPTIONS the gateway answered itself because its
	// Max-Forwards was 0 (RFC 9110 §7.6.2); not a refusal.
	MaxForwards
	// Overloaded refuses a connection at GATEWAY_MAX_CONNS.
	Overloaded
	// ClientConnLimit refuses a connection at GATEWAY_MAX_CONNS_PER_CLIENT.
	ClientConnLimit
	// NoSNI closes a connection the transparent listener took whose
	// ClientHello names no server: without a name there is nothing to
	// decide.
	NoSNI
	// DestinationMismatch closes a transparent connection whose original
	// destination is not an address of the name its SNI or Host names
	// (GATEWAY_TRANSPARENT_STRICT_DESTINATION=true).
	DestinationMismatch
	// ParentRefused: the parent proxy (GATEWAY_PARENT_PROXY) answered with
	// a refusal or an error of its own (a CONNECT's non-2xx, a 407).
	ParentRefused
	// ParentUnreachable: no parent proxy could be connected to.
	ParentUnreachable

	count // number of codes; keep last
)

// Kind sorts reasons by what happened to the request.
type Kind uint8

const (
	// Success: the request went ahead (allowed, or answered by the gateway
	// as the final recipient).
	Success Kind = iota
	// Refused: the gateway refused the request; nothing reached the
	// destination.
	Refused
	// Failed: the policy allowed the request, but its destination could
	// not be resolved or reached.
	Failed
)

// ActionType values of the access-log event, as in Defender's
// DeviceNetworkEvents table.
const (
	ConnectionSuccess = "ConnectionSuccess"
	ConnectionFailed  = "ConnectionFailed"
	ConnectionBlocked = "ConnectionBlocked"
	// ConnectionAudited is a success that enforce mode would have refused
	// (GATEWAY_MODE=audit); it depends on the decision, not on a reason.
	ConnectionAudited = "ConnectionAudited"
)

type entry struct {
	code   string
	status int
	kind   Kind
	// hint is the refusal body's second line when nothing more specific
	// is known; %[1]s is the target as the client named it.
	hint string
	// advice is what the connectivity probe tells the operator to check.
	advice string
}

var table = [count]entry{
	None:     {code: "", status: http.StatusOK, kind: Success},
	Allowed:  {code: "allowed", status: http.StatusOK, kind: Success},
	Unlisted: {code: "unlisted", status: http.StatusOK, kind: Success},
	NotListed: {code: "not-listed", status: http.StatusForbidden, kind: Refused,
		hint:   "%[1]s is not on the Defender allowlist. If endpoints need it, add an allow rule to the file named by GATEWAY_RULES_FILE.",
		advice: "the URL is not on the gateway's allowlist: check GATEWAY_DISABLED_SERVICES, deny rules and GATEWAY_BLOB_SCOPE, or add an allow rule to GATEWAY_RULES_FILE"},
	Geography: {code: "geography", status: http.StatusForbidden, kind: Refused,
		hint:   "%[1]s serves a data location this gateway does not (GATEWAY_GEOGRAPHIES).",
		advice: "the URL serves a data location the gateway is not configured for: check GATEWAY_GEOGRAPHIES against the tenant's data location"},
	Cloud: {code: "cloud", status: http.StatusForbidden, kind: Refused,
		hint:   "%[1]s belongs to another cloud than this gateway serves (GATEWAY_CLOUD).",
		advice: "the URL belongs to another cloud than the gateway serves (commercial or a US Government cloud): check GATEWAY_CLOUD against the tenant's cloud"},
	Port: {code: "port", status: http.StatusForbidden, kind: Refused,
		hint:   "%[1]s is not allowed on this port.",
		advice: "the port is not allowed for this host: check the rule's ports"},
	IPLiteral: {code: "ip-literal", status: http.StatusForbidden, kind: Refused,
		hint:   "connect by host name: IP-literal destinations are refused unless a rule in GATEWAY_RULES_FILE names the address.",
		advice: "IP-literal destinations are refused: use the host name"},
	BadRequest: {code: "bad-request", status: http.StatusBadRequest, kind: Refused,
		hint: "the request target is malformed; send CONNECT host:port or an absolute http:// URL."},
	ServiceDisabled: {code: "service-disabled", status: http.StatusForbidden, kind: Refused,
		hint:   "%[1]s belongs to a Defender service that this gateway has disabled (GATEWAY_DISABLED_SERVICES, or disable_services in the rules file).",
		advice: "the service is switched off on the gateway: check GATEWAY_DISABLED_SERVICES"},
	PrivateDestination: {code: "private-destination", status: http.StatusForbidden, kind: Refused,
		hint:   "%[1]s resolves to an internal address; the gateway does not connect to internal networks (labs may allow ranges with GATEWAY_ALLOW_PRIVATE_DESTINATIONS).",
		advice: "the name resolves to an internal address (lab: GATEWAY_ALLOW_PRIVATE_DESTINATIONS)"},
	DNSFailure: {code: "dns-failure", status: http.StatusBadGateway, kind: Failed,
		hint: "%[1]s could not be resolved; check the name and the servers in GATEWAY_DNS_SERVERS."},
	UpstreamUnreachable: {code: "upstream-unreachable", status: http.StatusBadGateway, kind: Failed,
		hint: "%[1]s could not be reached."},
	UpstreamTimeout: {code: "upstream-timeout", status: http.StatusGatewayTimeout, kind: Failed,
		hint: "%[1]s did not answer in time."},
	NotTLS: {code: "not-tls", status: http.StatusForbidden, kind: Refused,
		hint:   "the tunnel to %[1]s must carry TLS.",
		advice: "the tunnel did not carry TLS for the CONNECT host"},
	SNIMismatch: {code: "sni-mismatch", status: http.StatusForbidden, kind: Refused,
		hint:   "the TLS ClientHello must name %[1]s, the host of the CONNECT.",
		advice: "the tunnel did not carry TLS for the CONNECT host"},
	ClientNotAllowed: {code: "client-not-allowed", status: http.StatusForbidden, kind: Refused,
		hint:   "this client address is not in GATEWAY_CLIENT_CIDRS; the gateway serves only the configured client networks.",
		advice: "this machine's address is not in GATEWAY_CLIENT_CIDRS"},
	AuthRequired: {code: "auth-required", status: http.StatusProxyAuthRequired, kind: Refused,
		hint: "%[1]s needs proxy authentication: send valid Basic credentials in Proxy-Authorization (Defender service URLs never need them)."},
	AuthRateLimited: {code: "auth-rate-limited", status: http.StatusTooManyRequests, kind: Refused,
		hint:   "too many failed authentication attempts from this address; wait a minute and retry with valid credentials.",
		advice: "too many failed authentications from this address; wait and retry"},
	MethodNotAllowed: {code: "method-not-allowed", status: http.StatusMethodNotAllowed, kind: Refused,
		hint: "TRACE is refused: it would echo the request to the origin and back, with what other hops added (cross-site tracing)."},
	UpgradeRefused: {code: "upgrade-refused", status: http.StatusForbidden, kind: Refused,
		hint: "%[1]s: the gateway does not relay WebSocket over plain HTTP; use wss:// (CONNECT)."},
	MaxForwards: {code: "max-forwards", status: http.StatusOK, kind: Success},
	Overloaded: {code: "overloaded", status: http.StatusServiceUnavailable, kind: Refused,
		hint: "the gateway is serving its maximum number of connections (GATEWAY_MAX_CONNS); retry later."},
	ClientConnLimit: {code: "client-conn-limit", status: http.StatusTooManyRequests, kind: Refused,
		hint: "this client address has too many open connections (GATEWAY_MAX_CONNS_PER_CLIENT); retry later."},
	NoSNI: {code: "no-sni", status: http.StatusForbidden, kind: Refused,
		hint:   "the intercepted TLS connection named no server (SNI); the transparent listener decides by the name.",
		advice: "the client sent TLS without a server name: connect by host name, not by address"},
	DestinationMismatch: {code: "destination-mismatch", status: http.StatusForbidden, kind: Refused,
		hint:   "the connection was addressed to an address %[1]s does not resolve to (GATEWAY_TRANSPARENT_STRICT_DESTINATION).",
		advice: "the endpoint and the gateway resolve the name to different addresses: use the same DNS servers, or set GATEWAY_TRANSPARENT_STRICT_DESTINATION=false"},
	ParentRefused: {code: "parent-refused", status: http.StatusBadGateway, kind: Failed,
		hint:   "the parent proxy (GATEWAY_PARENT_PROXY) refused %[1]s or could not reach it; its own log says why.",
		advice: "the parent proxy refused the request (its ACLs, its credentials in GATEWAY_PARENT_PROXY) or could not reach the destination: check the parent's log"},
	ParentUnreachable: {code: "parent-unreachable", status: http.StatusBadGateway, kind: Failed,
		hint:   "no parent proxy (GATEWAY_PARENT_PROXY) could be reached for %[1]s.",
		advice: "no parent proxy in GATEWAY_PARENT_PROXY answers: check that they run and that the gateway can reach them"},
}

func (c Code) entry() *entry {
	if c >= count {
		return &table[None]
	}
	return &table[c]
}

// String returns the X-Gateway-Reason code ("" for None).
func (c Code) String() string { return c.entry().code }

// Label returns the metric label value: the code, or "none" for None.
func (c Code) Label() string {
	if c == None {
		return "none"
	}
	return c.entry().code
}

// Status returns the HTTP status of the gateway's own answer.
func (c Code) Status() int { return c.entry().status }

// Kind says whether the reason is a success, a refusal or a failure.
func (c Code) Kind() Kind { return c.entry().kind }

// Refusal reports a reason the gateway refuses a request for.
func (c Code) Refusal() bool { return c.entry().kind == Refused }

// Failure reports a reason that ends an allowed request without refusing
// it: the destination could not be resolved or reached.
func (c Code) Failure() bool { return c.entry().kind == Failed }

// ActionType returns the access-log event's ActionType for a request that
// ended for this reason (ConnectionAudited depends on the decision and is
// the caller's).
func (c Code) ActionType() string {
	switch c.entry().kind {
	case Refused:
		return ConnectionBlocked
	case Failed:
		return ConnectionFailed
	}
	return ConnectionSuccess
}

// Hint returns the generic refusal hint for target.
func (c Code) Hint(target string) string {
	h := c.entry().hint
	if !strings.Contains(h, "%[1]s") {
		return h
	}
	return fmt.Sprintf(h, target)
}

// Advice returns what the connectivity probe tells the operator to check.
func (c Code) Advice() string { return c.entry().advice }

// MarshalText encodes the X-Gateway-Reason code.
func (c Code) MarshalText() ([]byte, error) { return []byte(c.String()), nil }

// UnmarshalText decodes an X-Gateway-Reason code; "" is None.
func (c *Code) UnmarshalText(b []byte) error {
	p, ok := Parse(string(b))
	if !ok {
		return fmt.Errorf("unknown reason %q", b)
	}
	*c = p
	return nil
}

// Parse returns the reason with X-Gateway-Reason code s ("" is None).
func Parse(s string) (Code, bool) {
	for c := range count {
		if table[c].code == s {
			return c, true
		}
	}
	return None, false
}

// All returns every reason but None, in declaration order.
func All() []Code {
	cs := make([]Code, 0, count-1)
	for c := Allowed; c < count; c++ {
		cs = append(cs, c)
	}
	return cs
}
