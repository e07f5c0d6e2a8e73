package probe

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"syscall"

	gwreason "github.com/defendergw/gateway/internal/reason"
	"github.com/defendergw/gateway/internal/resolver"
)

const crlHint = "allow plain HTTP (port 80) to the CRL/CTL hosts without authentication or inspection: without them MpCmdRun -ValidateMapsConnection fails with hr=0x80072F8F (httpcore=451)"

// diagnoseStatus explains a refusal by a proxy (or by the gateway). A
// CRL/CTL target is crl-blocked when the refusal is about the destination
// (the fetch itself was refused or answered by something else); a refusal
// of this client or of the whole service, and a failure to reach the
// upstream, keep their own cause (see blamePort80 for the latter).
func diagnoseStatus(t Target, status int, reason string, via bool) (string, string) {
	rc, _ := gwreason.Parse(reason) // an unknown code is None: advice falls back to the access log
	who := "the proxy"
	if via {
		who = "the gateway"
	}
	crl := func(code, d string) (string, string) {
		if t.CRL {
			return DiagCRLBlocked, d + "; " + crlHint
		}
		return code, d
	}
	switch {
	case status == http.StatusProxyAuthRequired || rc == gwreason.AuthRequired:
		return DiagProxyAuth, fmt.Sprintf("%s answered %d (%s) to an anonymous request; the Defender sensor runs as LocalSystem and cannot authenticate: allow anonymous access to this URL",
			who, status, orText(reason, "Proxy Authentication Required"))
	case rc == gwreason.AuthRateLimited:
		return DiagAuthRateLimited, fmt.Sprintf("%s answered %d %s: too many failed authentications from this address (GATEWAY_AUTH_FAILURES_PER_MINUTE); check the --proxy-user password, wait a minute and retry",
			who, status, reason)
	case rc == gwreason.ServiceDisabled:
		d := fmt.Sprintf("%s refused %s: %d %s: an operator switched this service off (GATEWAY_DISABLED_SERVICES, or disable_services in GATEWAY_RULES_FILE); remove it there if the devices need it",
			who, hostOf(t.URL), status, reason)
		if t.CRL {
			d += "; without the CRL/CTL hosts MpCmdRun -ValidateMapsConnection fails with hr=0x80072F8F (httpcore=451)"
		}
		return DiagServiceDisabled, d
	case rc == gwreason.ClientNotAllowed:
		return DiagGatewayRefused, fmt.Sprintf("the gateway refused this machine: %d %s; %s", status, reason, reasonAdvice(rc))
	case rc == gwreason.DNSFailure:
		return DiagDNSFailure, fmt.Sprintf("%s could not resolve %s (%d %s); check its DNS servers (GATEWAY_DNS_SERVERS)", who, hostOf(t.URL), status, reason)
	case rc == gwreason.UpstreamTimeout || (status == http.StatusGatewayTimeout && reason == ""):
		return DiagTimeout, fmt.Sprintf("%s timed out reaching %s (%d %s); check the gateway's outbound firewall", who, hostOf(t.URL), status, orText(reason, "Gateway Timeout"))
	case rc == gwreason.UpstreamUnreachable || (status == http.StatusBadGateway && reason == ""):
		return DiagConnRefused, fmt.Sprintf("%s could not connect to %s (%d %s); check the gateway's outbound firewall", who, hostOf(t.URL), status, orText(reason, "Bad Gateway"))
	case reason != "":
		// A refused CRL/CTL fetch is exactly what breaks
		// ValidateMapsConnection, whatever the gateway's reason.
		return crl(DiagGatewayRefused, fmt.Sprintf("the gateway refused %s: %d %s; %s", hostOf(t.URL), status, reason, reasonAdvice(rc)))
	}
	d := fmt.Sprintf("%s answered %d %s", who, status, http.StatusText(status))
	if t.CRL {
		return DiagCRLBlocked, d + "; " + crlHint
	}
	return DiagUnexpectedStatus, d + "; allow this URL on the proxy"
}

// reasonAdvice says what to change for a gateway refusal reason: the
// reason table's advice, shared with the gateway.
func reasonAdvice(rc gwreason.Code) string {
	if a := rc.Advice(); a != "" {
		return a
	}
	return "see the gateway's access log for this request"
}

// diagnoseError explains a transport error by its own cause, CRL/CTL
// targets included: a connection that failed is not yet a blocked CRL
// (blamePort80 decides that once every result is in).
func diagnoseError(t Target, err error, via bool) (string, string) {
	return classifyError(t, err, via)
}

func classifyError(t Target, err error, via bool) (string, string) {
	host := hostOf(t.URL)
	var (
		cve  *tls.CertificateVerificationError
		uae  x509.UnknownAuthorityError
		he   x509.HostnameError
		cie  x509.CertificateInvalidError
		dnse *net.DNSError
		ne   net.Error
	)
	switch {
	case errors.As(err, &cve) || errors.As(err, &uae) || errors.As(err, &he) || errors.As(err, &cie):
		issuer := ""
		if cve != nil && len(cve.UnverifiedCertificates) > 0 {
			c := cve.UnverifiedCertificates[0]
			issuer = fmt.Sprintf(" (certificate for %q issued by %q)", c.Subject.CommonName, c.Issuer.String())
		} else if uae.Cert != nil {
			issuer = fmt.Sprintf(" (issued by %q)", uae.Cert.Issuer.String())
		} else if he.Certificate != nil {
			issuer = fmt.Sprintf(" (certificate for %v issued by %q)", he.Certificate.DNSNames, he.Certificate.Issuer.String())
		}
		return DiagTLSInspection, fmt.Sprintf("the certificate presented for %s does not verify%s: TLS inspection in the path breaks Defender's certificate pinning; exclude the Defender URLs from HTTPS scanning",
			host, issuer)
	case errors.As(err, &dnse):
		return DiagDNSFailure, fmt.Sprintf("%s could not be resolved (%v); check the DNS servers", dnse.Name, dnse.Err)
	case errors.Is(err, resolver.ErrDNSFailure):
		// Dialled through the gateway's own resolver (the upstream check).
		return DiagDNSFailure, fmt.Sprintf("%s could not be resolved (%v); check the DNS servers (GATEWAY_DNS_SERVERS)", host, rootErr(err))
	case errors.Is(err, resolver.ErrUpstreamUnreachable):
		return DiagConnRefused, fmt.Sprintf("could not connect to %s (%v); check the outbound firewall", host, rootErr(err))
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) ||
		(errors.As(err, &ne) && ne.Timeout()):
		where := host
		if via {
			where = "the gateway or " + host
		}
		return DiagTimeout, fmt.Sprintf("no answer from %s in time; check firewalls between this machine and %s", where, where)
	case errors.Is(err, context.Canceled):
		return DiagTimeout, "probe cancelled before " + host + " answered"
	case errors.Is(err, syscall.ECONNREFUSED):
		if via {
			return DiagConnRefused, "the gateway refused the connection: check the --via address and that the gateway is running"
		}
		return DiagConnRefused, fmt.Sprintf("%s refused the connection: a firewall rejects it or nothing listens there", host)
	}
	return DiagConnFailed, fmt.Sprintf("the connection to %s failed (%v); a middlebox may have closed it", host, rootErr(err))
}

func rootErr(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

func orText(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func hostOf(raw string) string {
	if u, err := url.Parse(raw); err == nil {
		return u.Host
	}
	return raw
}
