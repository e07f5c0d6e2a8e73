// Package allowlist is the gateway's pure decision logic: the embedded Defender
// service catalog, operator rules, target normalisation, and the decision whether
// a target (host, port and, for plain HTTP, path) may be reached.
//
// Nothing in this package does I/O. A Policy is an immutable value built once
// from a Catalog, operator rules and settings; it is safe for concurrent use and
// is swapped as a whole when configuration changes.
//
// Matching follows the conventions of Microsoft's URL tables ("Configure your
// network environment", learn.microsoft.com/defender-endpoint/configure-environment,
// and the standard and streamlined connectivity URL lists):
//   - "*.example.com" matches any subdomain of example.com, never example.com
//     itself and never a name that merely ends with the same letters;
//   - a gateway serves one cloud: the commercial cloud, or one of the US
//     Government clouds (GCC, GCC High, DoD), whose lists Microsoft publishes
//     separately ("standard connectivity URLs - US government");
//   - in the commercial cloud, WW rows always apply and rows of another
//     geography apply only when that data location is configured; in a
//     government cloud, the rows marked US Gov apply always, plus the rows of
//     that cloud, and no commercial row does;
//   - the most specific pattern that names a host decides (an exact name beats a
//     wildcard, a longer wildcard beats a shorter one), so a geography-specific
//     row such as edr-cus.us.endpoint.security.microsoft.com (US) is refused by an
//     EU gateway even though the WW wildcard *.endpoint.security.microsoft.com
//     would cover it;
//   - deny rules win over allow rules at every level.
package allowlist

import (
	"errors"
	"fmt"
	"strings"

	"github.com/defendergw/gateway/internal/reason"
)

// Sentinel errors, one per refusal reason. Decisions carry them unwrapped (so a
// decision costs no allocation); callers wrap them with context.
var (
	ErrNotListed = errors.New("destination is not on the allowlist")
	ErrGeography = errors.New("destination belongs to a geography that is not configured")
	ErrCloud     = errors.New("destination belongs to another cloud than the one this gateway serves")
	ErrPort      = errors.New("port is not allowed for this destination")
	ErrIPLiteral = errors.New("ip-literal destinations are not allowed")
	ErrBadTarget = errors.New("malformed target")
	// ErrServiceDisabled refuses a destination that only a row of a
	// disabled catalog service would allow (Decision.Detail names the
	// service and the setting that switched it off).
	ErrServiceDisabled = errors.New("destination belongs to a catalog service that is disabled")
)

// Reason is the machine-readable code of a decision, sent to clients in the
// X-Gateway-Reason header of refusals: the gateway's one reason vocabulary.
type Reason = reason.Code

// ReasonOf maps an error from this package to its reason, reason.Allowed for
// nil, or reason.None if err is not one of this package's sentinels.
func ReasonOf(err error) Reason {
	switch {
	case err == nil:
		return reason.Allowed
	case errors.Is(err, ErrNotListed):
		return reason.NotListed
	case errors.Is(err, ErrGeography):
		return reason.Geography
	case errors.Is(err, ErrCloud):
		return reason.Cloud
	case errors.Is(err, ErrPort):
		return reason.Port
	case errors.Is(err, ErrIPLiteral):
		return reason.IPLiteral
	case errors.Is(err, ErrBadTarget):
		return reason.BadRequest
	case errors.Is(err, ErrServiceDisabled):
		return reason.ServiceDisabled
	}
	return reason.None
}

// Geography is the value of the Geography column of Microsoft's URL tables:
// a commercial data location (WW for every location), or a US Government
// environment (USGov for all three government clouds, or one of them).
type Geography uint8

// Geographies known to the catalog. Commercial data locations come first:
// UAE rows exist in the newest standard table (03/2026); Switzerland and
// India are data locations of their own ("Data storage and privacy",
// learn.microsoft.com/defender-endpoint/data-storage-privacy) with no device
// rows beyond WW. The US Government geographies are those of the
// government tables (learn.microsoft.com/defender-endpoint/standard-device-connectivity-urls-gov).
const (
	WW Geography = iota
	US
	EU
	UK
	AU
	UAE
	CH
	IN
	USGov   // "US Gov" / "USGov": every US Government cloud
	GCC     // "GCC" (and "GCC Mod", which belongs to GCC)
	GCCHigh // "GCC High"
	DoD     // "DoD"
	numGeographies
)

// numCommercial is the number of commercial geographies (WW to IN).
const numCommercial = USGov

var geographyNames = [numGeographies]string{"WW", "US", "EU", "UK", "AU", "UAE", "CH", "IN",
	"USGov", "GCC", "GCC-High", "DoD"}

func (g Geography) String() string {
	if g < numGeographies {
		return geographyNames[g]
	}
	return fmt.Sprintf("Geography(%d)", uint8(g))
}

// Government reports whether g is a US Government geography.
func (g Geography) Government() bool { return g >= USGov && g < numGeographies }

// MarshalText implements encoding.TextMarshaler.
func (g Geography) MarshalText() ([]byte, error) { return []byte(g.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (g *Geography) UnmarshalText(b []byte) error {
	v, err := ParseGeography(string(b))
	*g = v
	return err
}

// AllGeographies lists every known geography, WW first, then the other
// commercial data locations, then the government ones.
func AllGeographies() []Geography {
	gs := make([]Geography, numGeographies)
	for i := range gs {
		gs[i] = Geography(i)
	}
	return gs
}

// DataLocations lists the commercial data locations a gateway can be
// configured for (GATEWAY_GEOGRAPHIES), WW first.
func DataLocations() []Geography { return AllGeographies()[:numCommercial] }

// ParseGeography parses a catalog geography name, case-insensitively.
func ParseGeography(s string) (Geography, error) {
	for i, n := range geographyNames {
		if strings.EqualFold(strings.TrimSpace(s), n) {
			return Geography(i), nil
		}
	}
	return 0, fmt.Errorf("unknown geography %q (known: %s)", s, strings.Join(geographyNames[:], ", "))
}

// ParseDataLocation parses a commercial data location (WW, US, EU, UK, AU,
// UAE, CH, IN), case-insensitively. A government geography is refused with
// a pointer to the cloud setting: it is not a data location of the
// commercial cloud.
func ParseDataLocation(s string) (Geography, error) {
	g, err := ParseGeography(s)
	if err != nil || g.Government() {
		known := strings.Join(geographyNames[:numCommercial], ", ")
		if err == nil {
			return 0, fmt.Errorf("%s is a US Government environment, not a data location (known: %s); choose the government cloud instead (GATEWAY_CLOUD, --cloud)",
				s, known)
		}
		return 0, fmt.Errorf("unknown data location %q (known: %s)", s, known)
	}
	return g, nil
}

// Cloud is the Microsoft cloud a gateway serves: the commercial cloud or a
// US Government cloud. Microsoft lists the government clouds' URLs
// separately (the "US government" standard and streamlined tables,
// mde-urls-gov.xlsx).
type Cloud uint8

// Clouds.
const (
	Commercial Cloud = iota
	CloudGCC
	CloudGCCHigh
	CloudDoD
	numClouds
)

var cloudNames = [numClouds]string{"commercial", "gcc", "gcc-high", "dod"}

func (c Cloud) String() string {
	if c < numClouds {
		return cloudNames[c]
	}
	return fmt.Sprintf("Cloud(%d)", uint8(c))
}

// Government reports whether c is a US Government cloud.
func (c Cloud) Government() bool { return c != Commercial }

// Geography is the geography of the rows that belong to this government
// cloud only (GCC, GCCHigh, DoD); for the commercial cloud it is WW.
func (c Cloud) Geography() Geography {
	switch c {
	case CloudGCC:
		return GCC
	case CloudGCCHigh:
		return GCCHigh
	case CloudDoD:
		return DoD
	}
	return WW
}

// MarshalText implements encoding.TextMarshaler.
func (c Cloud) MarshalText() ([]byte, error) { return []byte(c.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (c *Cloud) UnmarshalText(b []byte) error {
	v, err := ParseCloud(string(b))
	*c = v
	return err
}

// ParseCloud parses commercial, gcc, gcc-high or dod, case-insensitively
// ("" is commercial).
func ParseCloud(s string) (Cloud, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return Commercial, nil
	}
	for i, n := range cloudNames {
		if strings.EqualFold(s, n) {
			return Cloud(i), nil
		}
	}
	return 0, fmt.Errorf("unknown cloud %q (known: %s)", s, strings.Join(cloudNames[:], ", "))
}

// CloudOf is the cloud whose lists a row of geography g belongs to: for a
// commercial geography Commercial, for USGov every government cloud (ok is
// false), for GCC, GCCHigh and DoD that cloud.
func CloudOf(g Geography) (c Cloud, ok bool) {
	switch g {
	case USGov:
		return 0, false
	case GCC:
		return CloudGCC, true
	case GCCHigh:
		return CloudGCCHigh, true
	case DoD:
		return CloudDoD, true
	}
	return Commercial, true
}

// Action says what a rule does with the destinations it matches.
type Action uint8

// Rule actions.
const (
	Allow Action = iota
	Deny
)

func (a Action) String() string {
	if a == Deny {
		return "deny"
	}
	return "allow"
}

// MarshalText implements encoding.TextMarshaler.
func (a Action) MarshalText() ([]byte, error) { return []byte(a.String()), nil }

// ParseAction parses "allow" or "deny", in any case and with surrounding
// space (as written in a rules file): the one parser of an action.
func ParseAction(s string) (Action, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "allow":
		return Allow, nil
	case "deny":
		return Deny, nil
	}
	return Allow, fmt.Errorf("want allow or deny, got %q", s)
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (a *Action) UnmarshalText(b []byte) error {
	act, err := ParseAction(string(b))
	if err != nil {
		return fmt.Errorf("action: %w", err)
	}
	*a = act
	return nil
}

// Rule is one row of the catalog or of the operator's rules file.
type Rule struct {
	ID          string    `json:"id"`     // "catalog:<line>" or "<rules file>:<line>"
	Action      Action    `json:"action"` // allow or deny
	Host        string    `json:"host"`   // normalised exact name, "*.suffix", or canonical IP
	Paths       []string  `json:"paths,omitempty"`
	Ports       []uint16  `json:"ports,omitempty"` // empty: every port (deny rules only)
	Geography   Geography `json:"geography"`
	ServiceID   string    `json:"service_id"`
	ServiceName string    `json:"service_name"`
	Required    bool      `json:"required"`
	TLSExempt   bool      `json:"tls_exempt"`
	Anonymous   bool      `json:"anonymous"`
	// NoSNICheck switches off ClientHello verification of raw tunnels for
	// clients known not to send SNI (rules file: verify_sni: false). It is
	// the one negative flag kept: its zero value must be the safe one
	// (verify), for rules built in code as for rules read from a file.
	NoSNICheck bool   `json:"no_sni_check,omitempty"`
	Source     string `json:"source,omitempty"`
	Comment    string `json:"comment,omitempty"`
}

// Wildcard reports whether the rule's host is a "*.suffix" pattern.
func (r *Rule) Wildcard() bool { return strings.HasPrefix(r.Host, "*.") }

// AllowsPort reports whether the rule covers port p. A rule without ports
// covers every port.
func (r *Rule) AllowsPort(p uint16) bool {
	if len(r.Ports) == 0 {
		return true
	}
	for _, q := range r.Ports {
		if q == p {
			return true
		}
	}
	return false
}

// MatchesPath reports whether the rule covers the normalised path p. A rule
// without paths covers every path. A prefix matches on a segment boundary:
// "/pkiops/certs" matches "/pkiops/certs" and "/pkiops/certs/x.crt" but not
// "/pkiops/certsx". Comparison ignores ASCII case: the services behind the
// path-limited rows (www.microsoft.com, crl.microsoft.com) run IIS, whose paths
// are case-insensitive, so a case-sensitive check would refuse requests the
// origin treats as identical without making anything safer.
func (r *Rule) MatchesPath(p string) bool {
	if len(r.Paths) == 0 {
		return true
	}
	for _, prefix := range r.Paths {
		if len(p) < len(prefix) || !strings.EqualFold(p[:len(prefix)], prefix) {
			continue
		}
		if len(p) == len(prefix) || strings.HasSuffix(prefix, "/") || p[len(prefix)] == '/' {
			return true
		}
	}
	return false
}

// PortsString renders the rule's ports as "80|443" ("*" for every port).
func (r *Rule) PortsString() string {
	if len(r.Ports) == 0 {
		return "*"
	}
	var b strings.Builder
	for i, p := range r.Ports {
		if i > 0 {
			b.WriteByte('|')
		}
		fmt.Fprint(&b, p)
	}
	return b.String()
}
