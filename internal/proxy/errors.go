package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/defendergw/gateway/internal/allowlist"
	"github.com/defendergw/gateway/internal/auth"
	"github.com/defendergw/gateway/internal/resolver"
	"github.com/defendergw/gateway/internal/tlsbypass"
)

// ReasonHeader carries the machine-readable reason of every response the
// gateway makes itself.
const ReasonHeader = "X-Gateway-Reason"

// Reason codes the proxy adds to the allowlist's.
const (
	ReasonPrivateDestination  = "private-destination"
	ReasonDNSFailure          = "dns-failure"
	ReasonUpstreamUnreachable = "upstream-unreachable"
	ReasonUpstreamTimeout     = "upstream-timeout"
	// ReasonNotTLS and ReasonSNIMismatch close verified raw tunnels (after
	// the 200, so they appear in logs and metrics, not in a response).
	ReasonNotTLS      = "not-tls"
	ReasonSNIMismatch = "sni-mismatch"
	// ReasonClientNotAllowed refuses clients outside GATEWAY_CLIENT_CIDRS.
	ReasonClientNotAllowed = "client-not-allowed"
	// ReasonAuthRequired asks for (valid) proxy credentials: 407, or 403
	// inside an inspected tunnel opened anonymously.
	ReasonAuthRequired = "auth-required"
	// ReasonAuthRateLimited refuses a client that failed too often.
	ReasonAuthRateLimited = "auth-rate-limited"
	// ReasonMethodNotAllowed refuses TRACE (405).
	ReasonMethodNotAllowed = "method-not-allowed"
	// ReasonUpgradeRefused refuses a WebSocket upgrade of plain HTTP.
	ReasonUpgradeRefused = "upgrade-refused"
	// ReasonMaxForwards marks an OPTIONS the gateway answered itself
	// because its Max-Forwards was 0 (RFC 9110 §7.6.2); not a refusal.
	ReasonMaxForwards = "max-forwards"
)

// allowedMethods is the Allow header of the gateway's 405 and of its own
// OPTIONS answers: every method it forwards (RFC 9110 §9), CONNECT for
// tunnels, and not TRACE.
const allowedMethods = "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, CONNECT"

var (
	// errMethodNotAllowed refuses TRACE: a proxy that forwards it lets
	// anyone make an origin echo the request as it arrived, cookies and
	// credentials added by other hops included (cross-site tracing); no
	// Defender component sends it.
	errMethodNotAllowed = errors.New("TRACE is not forwarded")
	// errUpgradeRefused refuses a WebSocket upgrade: the gateway relays
	// plain HTTP/1.1 only, and a WebSocket client cannot fall back to a
	// plain answer the way an h2c client does (whose Upgrade the gateway
	// drops, as RFC 9110 §7.8 lets a server do).
	errUpgradeRefused = errors.New("protocol upgrade to WebSocket is not relayed")
	// errBadMaxForwards refuses a Max-Forwards that is not 1*DIGIT.
	errBadMaxForwards = fmt.Errorf("Max-Forwards is not a number: %w", allowlist.ErrBadTarget)
)

// classify maps an error to the status code and reason sent to the client.
// It is the only place where errors become statuses.
func classify(err error) (status int, reason string) {
	if r := allowlist.ReasonOf(err); r != "" && r != allowlist.ReasonAllowed {
		if r == allowlist.ReasonBadRequest {
			return http.StatusBadRequest, string(r)
		}
		return http.StatusForbidden, string(r)
	}
	var ne net.Error
	switch {
	case errors.Is(err, errMethodNotAllowed):
		return http.StatusMethodNotAllowed, ReasonMethodNotAllowed
	case errors.Is(err, errUpgradeRefused):
		return http.StatusForbidden, ReasonUpgradeRefused
	case errors.Is(err, errBadBody):
		return http.StatusBadRequest, string(allowlist.ReasonBadRequest)
	case errors.Is(err, ErrOverloaded):
		return http.StatusServiceUnavailable, ReasonOverloaded
	case errors.Is(err, ErrClientConnLimit):
		return http.StatusTooManyRequests, ReasonClientConnLimit
	case errors.Is(err, ErrClientNotAllowed):
		return http.StatusForbidden, ReasonClientNotAllowed
	case errors.Is(err, errAuthInsideTunnel):
		return http.StatusForbidden, ReasonAuthRequired
	case errors.Is(err, auth.ErrRateLimited):
		return http.StatusTooManyRequests, ReasonAuthRateLimited
	case errors.Is(err, auth.ErrNoCredentials), errors.Is(err, auth.ErrBadCredentials):
		return http.StatusProxyAuthRequired, ReasonAuthRequired
	case errors.Is(err, tlsbypass.ErrSNIMismatch):
		return http.StatusForbidden, ReasonSNIMismatch
	case errors.Is(err, tlsbypass.ErrNotTLS), errors.Is(err, tlsbypass.ErrPeekTimeout):
		return http.StatusForbidden, ReasonNotTLS
	case errors.Is(err, resolver.ErrPrivateDestination):
		return http.StatusForbidden, ReasonPrivateDestination
	case errors.Is(err, resolver.ErrDNSFailure):
		return http.StatusBadGateway, ReasonDNSFailure
	case errors.Is(err, resolver.ErrUpstreamTimeout), errors.Is(err, context.DeadlineExceeded),
		errors.As(err, &ne) && ne.Timeout():
		return http.StatusGatewayTimeout, ReasonUpstreamTimeout
	default:
		return http.StatusBadGateway, ReasonUpstreamUnreachable
	}
}

// hint tells the client what happened and what to change, in one or two
// plain-text lines.
func hint(reason, target string, d *allowlist.Decision, p *allowlist.Policy) string {
	switch reason {
	case string(allowlist.ReasonNotListed):
		if d != nil && d.Rule != nil && d.Rule.Action == allowlist.Deny {
			return fmt.Sprintf("%s is refused by deny rule %s.", target, d.Rule.ID)
		}
		if d != nil && d.Rule != nil && len(d.Rule.Paths) > 0 {
			return fmt.Sprintf("this path on %s is not on the allowlist; rule %s allows only %s.",
				target, d.Rule.ID, strings.Join(d.Rule.Paths, ", "))
		}
		return fmt.Sprintf("%s is not on the Defender allowlist. If endpoints need it, add an allow rule to the file named by GATEWAY_RULES_FILE.", target)
	case string(allowlist.ReasonGeography):
		g := ""
		if d != nil && d.Rule != nil {
			g = d.Rule.Geography.String()
		}
		return fmt.Sprintf("%s serves the %s data location, which this gateway does not (GATEWAY_GEOGRAPHIES=%s). Add %s only if your tenant's data is stored there.",
			target, g, geoList(p), g)
	case string(allowlist.ReasonCloud):
		where := "the commercial cloud"
		if d != nil && d.Rule != nil && d.Rule.Geography.Government() {
			where = "the US Government " + d.Rule.Geography.String() + " environment"
		}
		cloud := ""
		if p != nil {
			cloud = p.Cloud().String()
		}
		return fmt.Sprintf("%s serves %s, and this gateway serves the %s cloud (GATEWAY_CLOUD=%s). Set GATEWAY_CLOUD to your tenant's cloud.",
			target, where, cloud, cloud)
	case string(allowlist.ReasonPort):
		ports := ""
		if d != nil && d.Rule != nil {
			ports = d.Rule.PortsString()
		}
		return fmt.Sprintf("%s is allowed only on port(s) %s.", target, ports)
	case string(allowlist.ReasonServiceDisabled):
		if d == nil || d.Rule == nil {
			return fmt.Sprintf("%s belongs to a Defender service that this gateway has disabled (GATEWAY_DISABLED_SERVICES, or disable_services in the rules file).", target)
		}
		return fmt.Sprintf("%s is refused: %s; rule %s would allow it. Remove %s from %s if endpoints need the service.",
			target, d.Detail(), d.Rule.ID, d.Rule.ServiceID, disabledWhere(d.DisabledBy))
	case string(allowlist.ReasonIPLiteral):
		return "connect by host name: IP-literal destinations are refused unless a rule in GATEWAY_RULES_FILE names the address."
	case string(allowlist.ReasonBadRequest):
		return "the request target is malformed; send CONNECT host:port or an absolute http:// URL."
	case ReasonOverloaded, ReasonClientConnLimit:
		return limitHint(reason)
	case ReasonClientNotAllowed:
		return "this client address is not in GATEWAY_CLIENT_CIDRS; the gateway serves only the configured client networks."
	case ReasonMethodNotAllowed:
		return "TRACE is refused: it would echo the request to the origin and back, with what other hops added (cross-site tracing). Allowed methods: " + allowedMethods + "."
	case ReasonUpgradeRefused:
		return fmt.Sprintf("%s: the gateway does not relay WebSocket over plain HTTP; use wss:// (CONNECT).", target)
	case ReasonAuthRequired:
		return fmt.Sprintf("%s needs proxy authentication: send valid Basic credentials in Proxy-Authorization (Defender service URLs never need them).", target)
	case ReasonAuthRateLimited:
		return "too many failed authentication attempts from this address; wait a minute and retry with valid credentials."
	case ReasonPrivateDestination:
		return fmt.Sprintf("%s resolves to an internal address; the gateway does not connect to internal networks (labs may allow ranges with GATEWAY_ALLOW_PRIVATE_DESTINATIONS).", target)
	case ReasonDNSFailure:
		return fmt.Sprintf("%s could not be resolved; check the name and the servers in GATEWAY_DNS_SERVERS.", target)
	case ReasonUpstreamTimeout:
		return fmt.Sprintf("%s did not answer in time.", target)
	default:
		return fmt.Sprintf("%s could not be reached.", target)
	}
}

// disabledWhere names the setting(s) a disabled service is to be removed
// from.
func disabledWhere(by allowlist.DisabledBy) string {
	switch by {
	case allowlist.DisabledByRulesFile:
		return "disable_services in the rules file (GATEWAY_RULES_FILE)"
	case allowlist.DisabledByBoth:
		return "both GATEWAY_DISABLED_SERVICES and disable_services in the rules file (GATEWAY_RULES_FILE)"
	}
	return "GATEWAY_DISABLED_SERVICES"
}

func geoList(p *allowlist.Policy) string {
	if p == nil {
		return ""
	}
	if p.AllGeographies() {
		return "(unset: all)"
	}
	var s []string
	for _, g := range p.Geographies() {
		s = append(s, g.String())
	}
	return strings.Join(s, ",")
}

// refusal is a response the gateway makes itself.
type refusal struct {
	status int
	reason string
	body   string
}

func newRefusal(err error, target string, d *allowlist.Decision, p *allowlist.Policy) refusal {
	status, reason := classify(err)
	return refusal{status: status, reason: reason,
		body: fmt.Sprintf("%d %s: %s\n%s\n", status, http.StatusText(status), reason, hint(reason, target, d, p))}
}

// response renders the refusal for goproxy's HTTP path.
func (f refusal) response(req *http.Request) *http.Response {
	h := make(http.Header, 5)
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set(ReasonHeader, f.reason)
	h.Set("Cache-Control", "no-store")
	if f.status == http.StatusMethodNotAllowed {
		h.Set("Allow", allowedMethods) // RFC 9110 §15.5.6
	}
	return &http.Response{
		StatusCode: f.status, Status: strconv.Itoa(f.status) + " " + http.StatusText(f.status),
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Request: req, Header: h,
		ContentLength: int64(len(f.body)), Body: io.NopCloser(strings.NewReader(f.body)),
	}
}

// write renders the refusal on a raw connection.
func (f refusal) write(w io.Writer, proto string) error {
	_, err := fmt.Fprintf(w, "%s %d %s\r\n%s: %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
		proto, f.status, http.StatusText(f.status), ReasonHeader, f.reason, len(f.body), f.body)
	return err
}

// closeWith answers c with the refusal and closes it cleanly: the client may
// already have sent more (tunnel bytes behind a CONNECT, a request behind a
// refused connection), and closing with unread data would reset the
// connection and lose the answer.
func (f refusal) closeWith(c net.Conn, proto string) {
	defer c.Close()
	c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if f.write(c, proto) != nil {
		return
	}
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	io.Copy(io.Discard, io.LimitReader(c, 256<<10))
}
