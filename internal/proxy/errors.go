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
	"github.com/defendergw/gateway/internal/parent"
	"github.com/defendergw/gateway/internal/reason"
	"github.com/defendergw/gateway/internal/resolver"
	"github.com/defendergw/gateway/internal/tlsbypass"
)

// ReasonHeader carries the machine-readable reason of every response the
// gateway makes itself.
const ReasonHeader = "X-Gateway-Reason"

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

// classify maps an error to the reason and status sent to the client. It is
// the only place where errors become reasons; the status is the reason's
// own, except for an inner request of an anonymous inspected tunnel, which
// is refused with 403 rather than a 407 the client cannot answer there.
func classify(err error) (reason.Code, int) {
	if r := allowlist.ReasonOf(err); r.Refusal() {
		return r, r.Status()
	}
	var ne net.Error
	var rc reason.Code
	switch {
	case errors.Is(err, errMethodNotAllowed):
		rc = reason.MethodNotAllowed
	case errors.Is(err, errUpgradeRefused):
		rc = reason.UpgradeRefused
	case errors.Is(err, errBadBody):
		rc = reason.BadRequest
	case errors.Is(err, ErrOverloaded):
		rc = reason.Overloaded
	case errors.Is(err, ErrClientConnLimit):
		rc = reason.ClientConnLimit
	case errors.Is(err, ErrClientNotAllowed):
		rc = reason.ClientNotAllowed
	case errors.Is(err, ErrNoSNI):
		rc = reason.NoSNI
	case errors.Is(err, ErrDestinationMismatch):
		rc = reason.DestinationMismatch
	case errors.Is(err, errNoProxyAuth):
		// No 407: an intercepted client does not know it is proxied.
		return reason.AuthRequired, http.StatusForbidden
	case errors.Is(err, errAuthInsideTunnel):
		return reason.AuthRequired, http.StatusForbidden
	case errors.Is(err, auth.ErrRateLimited):
		rc = reason.AuthRateLimited
	case errors.Is(err, auth.ErrNoCredentials), errors.Is(err, auth.ErrBadCredentials):
		rc = reason.AuthRequired
	case errors.Is(err, tlsbypass.ErrSNIMismatch):
		rc = reason.SNIMismatch
	case errors.Is(err, tlsbypass.ErrNotTLS), errors.Is(err, tlsbypass.ErrPeekTimeout):
		rc = reason.NotTLS
	case errors.Is(err, parent.ErrRefused):
		rc = reason.ParentRefused
	case errors.Is(err, parent.ErrUnreachable):
		rc = reason.ParentUnreachable
	case errors.Is(err, resolver.ErrPrivateDestination):
		rc = reason.PrivateDestination
	case errors.Is(err, resolver.ErrDNSFailure):
		rc = reason.DNSFailure
	case errors.Is(err, resolver.ErrUpstreamTimeout), errors.Is(err, context.DeadlineExceeded),
		errors.As(err, &ne) && ne.Timeout():
		rc = reason.UpstreamTimeout
	default:
		rc = reason.UpstreamUnreachable
	}
	return rc, rc.Status()
}

// hint tells the client what happened and what to change, in one or two
// plain-text lines: the reason's own hint, made specific where the decision
// says more (which rule, which geography, cloud or ports).
func hint(rc reason.Code, target string, d *allowlist.Decision, p *allowlist.Policy) string {
	var rule *allowlist.Rule
	if d != nil {
		rule = d.Rule
	}
	switch rc {
	case reason.NotListed:
		if rule != nil && rule.Action == allowlist.Deny {
			return fmt.Sprintf("%s is refused by deny rule %s.", target, rule.ID)
		}
		if rule != nil && len(rule.Paths) > 0 {
			return fmt.Sprintf("this path on %s is not on the allowlist; rule %s allows only %s.",
				target, rule.ID, strings.Join(rule.Paths, ", "))
		}
	case reason.Geography:
		if rule != nil {
			g := rule.Geography.String()
			return fmt.Sprintf("%s serves the %s data location, which this gateway does not (GATEWAY_GEOGRAPHIES=%s). Add %s only if your tenant's data is stored there.",
				target, g, geoList(p), g)
		}
	case reason.Cloud:
		if p != nil {
			where := "the commercial cloud"
			if rule != nil && rule.Geography.Government() {
				where = "the US Government " + rule.Geography.String() + " environment"
			}
			cloud := p.Cloud().String()
			return fmt.Sprintf("%s serves %s, and this gateway serves the %s cloud (GATEWAY_CLOUD=%s). Set GATEWAY_CLOUD to your tenant's cloud.",
				target, where, cloud, cloud)
		}
	case reason.Port:
		if rule != nil {
			return fmt.Sprintf("%s is allowed only on port(s) %s.", target, rule.PortsString())
		}
	case reason.ServiceDisabled:
		if rule != nil {
			return fmt.Sprintf("%s is refused: %s; rule %s would allow it. Remove %s from %s if endpoints need the service.",
				target, d.Detail(), rule.ID, rule.ServiceID, disabledWhere(d.DisabledBy))
		}
	case reason.MethodNotAllowed:
		return rc.Hint(target) + " Allowed methods: " + allowedMethods + "."
	}
	return rc.Hint(target)
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
	reason reason.Code
	body   string
}

// newRefusal renders the answer to a request that ended with st's reason
// (st.fail has classified it).
func newRefusal(st *reqState) refusal {
	return renderRefusal(st.reason, st.status, st.targetString(), &st.decision, st.policy)
}

func renderRefusal(rc reason.Code, status int, target string, d *allowlist.Decision, p *allowlist.Policy) refusal {
	return refusal{status: status, reason: rc,
		body: fmt.Sprintf("%d %s: %s\n%s\n", status, http.StatusText(status), rc, hint(rc, target, d, p))}
}

// response renders the refusal for goproxy's HTTP path.
func (f refusal) response(req *http.Request) *http.Response {
	h := make(http.Header, 5)
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set(ReasonHeader, f.reason.String())
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
