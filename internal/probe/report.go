package probe

import (
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strconv"
)

// Failed reports whether any required target failed.
func Failed(results []Result) bool {
	for _, r := range results {
		if r.Target.Required && !r.OK {
			return true
		}
	}
	return false
}

// diagAdvice is the summary paragraph per diagnosis.
var diagAdvice = map[string]string{
	DiagProxyAuth: "The proxy demanded authentication (407). Anonymous traffic must be permitted for the listed URLs: " +
		"the Defender sensor runs as LocalSystem and cannot authenticate to a proxy. Mark these destinations anonymous " +
		"(the catalog rows are; check operator rules and any upstream proxy).",
	DiagTLSInspection: "The certificate presented was not issued for the host, or by an issuer not among the trusted roots: " +
		"TLS inspection in the path breaks Defender's certificate pinning. Exclude the Defender URLs from HTTPS scanning " +
		"(SSL inspection) on every proxy and firewall between the devices and the Internet.",
	DiagCRLBlocked: "A CRL/CTL URL on port 80 is refused or failing. Windows cannot check the revocation of Microsoft's " +
		"certificates, and MpCmdRun -ValidateMapsConnection fails with hr=0x80072F8F (httpcore=451). Allow plain HTTP on " +
		"port 80 to crl.microsoft.com, ctldl.windowsupdate.com and www.microsoft.com/pkiops without authentication or inspection.",
	DiagAuthRateLimited: "The gateway refused further attempts (429 auth-rate-limited) after too many failed " +
		"authentications from this address (GATEWAY_AUTH_FAILURES_PER_MINUTE). Check the --proxy-user password, wait a " +
		"minute and probe again.",
	DiagServiceDisabled: "The gateway refused a service an operator switched off (403 service-disabled). If the devices " +
		"need it, remove it from GATEWAY_DISABLED_SERVICES (or from disable_services in GATEWAY_RULES_FILE).",
	DiagGatewayRefused: "The gateway refused the request (403 with X-Gateway-Reason). For reason geography, check " +
		"GATEWAY_GEOGRAPHIES against the tenant's data location; for not-listed, check GATEWAY_DISABLED_SERVICES, deny rules " +
		"and GATEWAY_BLOB_SCOPE; for client-not-allowed, GATEWAY_CLIENT_CIDRS.",
	DiagDNSFailure: "The name could not be resolved (directly, or by the gateway: 502 dns-failure). Check the DNS servers " +
		"(GATEWAY_DNS_SERVERS on the gateway) and that nothing filters Microsoft's names.",
	DiagTimeout: "No answer in time. A firewall silently drops the traffic, or the path is too slow; check outbound " +
		"rules for port 443 (and 80 for CRLs) from the gateway (or this machine).",
	DiagConnRefused: "The connection was refused. Check that the gateway listens at the --via address, or that outbound " +
		"connections are allowed by the firewall.",
	DiagConnFailed: "The connection failed without a clear cause (reset or closed). A middlebox may interfere with the " +
		"traffic; compare a direct probe with one via the gateway.",
	DiagUnexpectedStatus: "The URL answered with a status the real service does not give. Something in the path (a block " +
		"page, captive portal or redirecting proxy) answers instead of the service.",
}

// WriteText writes the results in the Windows client analyzer's style, then
// a summary with advice per diagnosis.
func WriteText(w io.Writer, results []Result, via *url.URL, notProbed []string) {
	label := "Direct"
	if via != nil {
		label = "Via gateway " + redact(via)
	}
	for i, r := range results {
		if i > 0 {
			fmt.Fprintln(w)
		}
		fmt.Fprintf(w, "Testing URL : %s\n", r.Target.URL)
		if r.OK {
			fmt.Fprintf(w, "1 - %s: Succeeded (%d)\n", label, r.Status)
			continue
		}
		what := r.Diagnosis
		if r.Status != 0 {
			what = strconv.Itoa(r.Status) + " " + what
		}
		if r.Detail != "" {
			what += ": " + r.Detail
		}
		fmt.Fprintf(w, "1 - %s: Failed (%s)\n", label, what)
	}
	s := summarize(results, notProbed)
	fmt.Fprintf(w, "\nSummary: %d URLs tested, %d succeeded, %d failed (%d required)\n",
		s.Total, s.Succeeded, s.Failed, s.RequiredFailed)
	if len(notProbed) > 0 {
		fmt.Fprintf(w, "\nNot probed (%d wildcard patterns name no host to test):\n", len(notProbed))
		for _, p := range notProbed {
			fmt.Fprintf(w, "  %s - not probed: wildcard\n", p)
		}
	}
	for _, d := range s.Diagnoses {
		fmt.Fprintf(w, "\n%s (%d URLs): %s\n", d.Code, d.Count, d.Advice)
		for _, u := range d.URLs {
			fmt.Fprintf(w, "  %s\n", u)
		}
	}
}

func redact(u *url.URL) string {
	c := *u
	c.User = nil
	return c.String()
}

type diagSummary struct {
	Code   string   `json:"code"`
	Count  int      `json:"count"`
	Advice string   `json:"advice"`
	URLs   []string `json:"urls"`
}

type summary struct {
	Total          int           `json:"total"`
	Succeeded      int           `json:"succeeded"`
	Failed         int           `json:"failed"`
	RequiredFailed int           `json:"required_failed"`
	NotProbed      []string      `json:"not_probed"`
	Diagnoses      []diagSummary `json:"diagnoses"`
}

func summarize(results []Result, notProbed []string) summary {
	s := summary{Total: len(results), NotProbed: notProbed, Diagnoses: []diagSummary{}}
	if s.NotProbed == nil {
		s.NotProbed = []string{}
	}
	byCode := map[string]*diagSummary{}
	for _, r := range results {
		if r.OK {
			s.Succeeded++
			continue
		}
		s.Failed++
		if r.Target.Required {
			s.RequiredFailed++
		}
		d := byCode[r.Diagnosis]
		if d == nil {
			d = &diagSummary{Code: r.Diagnosis, Advice: diagAdvice[r.Diagnosis]}
			byCode[r.Diagnosis] = d
		}
		d.Count++
		d.URLs = append(d.URLs, r.Target.URL)
	}
	for _, c := range diagOrder {
		if d := byCode[c]; d != nil {
			s.Diagnoses = append(s.Diagnoses, *d)
			delete(byCode, c)
		}
	}
	rest := make([]string, 0, len(byCode))
	for c := range byCode {
		rest = append(rest, c)
	}
	slices.Sort(rest)
	for _, c := range rest {
		s.Diagnoses = append(s.Diagnoses, *byCode[c])
	}
	return s
}

type jsonResult struct {
	Target
	OK         bool    `json:"ok"`
	Status     int     `json:"status"`
	Error      string  `json:"error,omitempty"`
	Diagnosis  string  `json:"diagnosis,omitempty"`
	Detail     string  `json:"detail,omitempty"`
	DurationMS float64 `json:"duration_ms"`
}

// WriteJSON writes {"results":[...],"summary":{...}}.
func WriteJSON(w io.Writer, results []Result, notProbed []string) error {
	out := struct {
		Results []jsonResult `json:"results"`
		Summary summary      `json:"summary"`
	}{Results: make([]jsonResult, 0, len(results)), Summary: summarize(results, notProbed)}
	for _, r := range results {
		out.Results = append(out.Results, jsonResult{Target: r.Target, OK: r.OK, Status: r.Status, Error: r.Error,
			Diagnosis: r.Diagnosis, Detail: r.Detail, DurationMS: float64(r.Duration.Microseconds()) / 1000})
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}
