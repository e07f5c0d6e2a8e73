package allowlist

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/defendergw/gateway/internal/reason"
)

// Options shape a Policy.
type Options struct {
	// Cloud is the cloud the gateway serves. In the commercial cloud WW and
	// the Geographies apply; in a government cloud the USGov rows and that
	// cloud's own rows apply, and Geographies must be empty.
	Cloud Cloud
	// Geographies are the configured commercial data locations. WW always
	// applies. If empty (commercial cloud), every data location applies
	// (Policy.AllGeographies reports it so the caller can warn).
	Geographies []Geography
	// DisabledServices are catalog service ids whose rows are left out,
	// from the GATEWAY_DISABLED_SERVICES setting.
	DisabledServices []string
	// RulesDisabledServices are catalog service ids whose rows are left
	// out, from the rules file's disable_services key
	// (RuleSet.DisabledServices). Kept apart from DisabledServices so that
	// a refusal names the setting that switched the service off.
	RulesDisabledServices []string
	// Rules are the operator's rules, added to the catalog's.
	Rules []Rule
	// BlobScope chooses how Azure blob storage is opened (see BlobScope).
	BlobScope BlobScope
	// Audit allows what enforce mode refuses for allowlist reasons
	// (not-listed, geography, cloud, port, service-disabled) and marks the
	// decision as audited, like network protection's Audit mode. Address
	// safety (ip-literal, malformed targets) is enforced in every mode.
	Audit bool
	// UnlistedAuthenticated lets authenticated users reach destinations no
	// rule names (the general egress proxy case), on UnlistedPorts only and
	// never against a deny rule. The caller enforces the authentication.
	UnlistedAuthenticated bool
	// UnlistedPorts are the ports unlisted destinations may use; default
	// 80 and 443.
	UnlistedPorts []uint16
}

// BlobScope says how much of Azure blob storage the catalog opens.
type BlobScope uint8

const (
	// BlobListed (the zero value) drops the catalog's storage wildcards
	// (*.blob.core.windows.net, *.blob.core.usgovcloudapi.net), leaving only
	// the storage accounts the catalog names, as Microsoft's guidance asks:
	// "Don't exclude the URL *.blob.core.windows.net from any kind of network
	// inspection. Instead, exclude only the blob URLs that are specific to MDE
	// and listed in the spreadsheet."
	// (learn.microsoft.com/defender-endpoint/configure-environment)
	BlobListed BlobScope = iota
	// BlobWildcard keeps the wildcard rows, which only the Microsoft
	// Monitoring Agent needs (retired by Microsoft in August 2024): every
	// storage account in Azure is allowed and tunnelled raw.
	BlobWildcard
)

// BlobWildcardHost is the commercial storage wildcard BlobListed removes.
const BlobWildcardHost = "*.blob.core.windows.net"

// blobWildcards are the storage wildcards BlobListed removes: the commercial
// cloud's and the US Government cloud's.
var blobWildcards = []string{BlobWildcardHost, "*.blob.core.usgovcloudapi.net"}

// ParseBlobScope parses "listed" or "wildcard" ("" is listed).
func ParseBlobScope(s string) (BlobScope, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "listed", "":
		return BlobListed, nil
	case "wildcard":
		return BlobWildcard, nil
	}
	return 0, fmt.Errorf("blob scope %q: want listed or wildcard", s)
}

func (b BlobScope) String() string {
	if b == BlobListed {
		return "listed"
	}
	return "wildcard"
}

// Policy is the effective allowlist: catalog plus operator rules for the
// configured geographies, indexed by name. It is immutable.
type Policy struct {
	version       string
	published     time.Time
	cloud         Cloud
	geos          uint16 // bit per Geography in force
	allGeos       bool
	rules         []Rule // catalog rows (disabled services removed) then operator rules
	allow         index  // allow rules of this policy's cloud
	foreign       index  // allow rules of the other clouds: only to explain a refusal
	deny          index
	services      []string
	blobScope     BlobScope
	audit         bool
	unlistedAuth  bool
	unlistedPorts []uint16
	// disabled holds the rows of disabled services aside. disabledIx
	// indexes those of this cloud, and withDisabled indexes them with the
	// allow rules, so that a refusal can tell that the target would be
	// allowed were the service enabled. They are consulted on the refusal
	// path only, and only when disabledBy is not nil (some service is
	// disabled).
	disabled     []Rule
	disabledIx   index
	withDisabled index
	disabledBy   map[string]DisabledBy
}

// index maps exact names and wildcard suffixes to rules. Lookups cost one map
// probe per label of the target, whatever the number of rules.
type index struct {
	exact map[string][]*Rule // "host" or canonical IP
	wild  map[string][]*Rule // "suffix" of "*.suffix"
}

func (ix *index) add(r *Rule) {
	if s, ok := strings.CutPrefix(r.Host, "*."); ok {
		ix.wild[s] = append(ix.wild[s], r)
		return
	}
	ix.exact[r.Host] = append(ix.exact[r.Host], r)
}

// lookup returns the rules of the most specific pattern naming host: the exact
// name, else the wildcard on the nearest parent. It does not allocate.
func (ix *index) lookup(host string) []*Rule {
	if rs := ix.exact[host]; rs != nil {
		return rs
	}
	for s := host; ; {
		i := strings.IndexByte(s, '.')
		if i < 0 {
			return nil
		}
		s = s[i+1:]
		if rs := ix.wild[s]; rs != nil {
			return rs
		}
	}
}

// match returns the first rule, most specific pattern first, that covers t's
// port and path. It does not allocate.
func (ix *index) match(t Target) *Rule {
	for s := t.Host; ; {
		rs := ix.exact[s]
		if s != t.Host {
			rs = ix.wild[s]
		}
		for _, r := range rs {
			if r.AllowsPort(t.Port) && r.coversPath(t) {
				return r
			}
		}
		i := strings.IndexByte(s, '.')
		if i < 0 || t.IP.IsValid() {
			return nil
		}
		s = s[i+1:]
	}
}

// DisabledBy says which setting switched a catalog service off.
type DisabledBy uint8

// Settings that disable services.
const (
	NotDisabled DisabledBy = iota
	// DisabledBySetting is GATEWAY_DISABLED_SERVICES (Options.DisabledServices).
	DisabledBySetting
	// DisabledByRulesFile is the rules file's disable_services key
	// (Options.RulesDisabledServices).
	DisabledByRulesFile
	// DisabledByBoth is both of them.
	DisabledByBoth
)

// String names the setting as an operator writes it.
func (b DisabledBy) String() string {
	switch b {
	case DisabledBySetting:
		return "GATEWAY_DISABLED_SERVICES"
	case DisabledByRulesFile:
		return "disable_services in the rules file (GATEWAY_RULES_FILE)"
	case DisabledByBoth:
		return "GATEWAY_DISABLED_SERVICES and by disable_services in the rules file (GATEWAY_RULES_FILE)"
	}
	return ""
}

// NewPolicy builds the effective policy from a catalog and options.
func NewPolicy(cat *Catalog, opts Options) (*Policy, error) {
	p := &Policy{
		version:   cat.Version,
		published: cat.Published,
		cloud:     opts.Cloud,
		allow:     newIndex(),
		foreign:   newIndex(),
		deny:      newIndex(),
	}
	switch {
	case opts.Cloud >= numClouds:
		return nil, fmt.Errorf("unknown cloud %d", opts.Cloud)
	case opts.Cloud.Government():
		if len(opts.Geographies) > 0 {
			return nil, fmt.Errorf("geographies %v: a %s gateway applies the US Government rows, not commercial data locations",
				opts.Geographies, opts.Cloud)
		}
		p.geos = 1<<USGov | 1<<opts.Cloud.Geography()
	case len(opts.Geographies) == 0:
		p.allGeos = true
		p.geos = 1<<numCommercial - 1
	default:
		p.geos = 1 << WW
	}
	for _, g := range opts.Geographies {
		if g >= numCommercial {
			return nil, fmt.Errorf("geography %s: not a commercial data location", g)
		}
		p.geos |= 1 << g
	}
	known := cat.Services()
	for _, s := range opts.DisabledServices {
		if !slices.Contains(known, s) {
			return nil, fmt.Errorf("disabled service %q: not a catalog service (known: %s)", s, strings.Join(known, ", "))
		}
	}
	for _, s := range opts.RulesDisabledServices {
		if !slices.Contains(known, s) {
			return nil, fmt.Errorf("disable_services in the rules file: service %q: not a catalog service (known: %s)",
				s, strings.Join(known, ", "))
		}
	}
	for _, s := range known {
		var by DisabledBy
		if slices.Contains(opts.DisabledServices, s) {
			by = DisabledBySetting
		}
		if slices.Contains(opts.RulesDisabledServices, s) {
			by |= DisabledByRulesFile // DisabledByBoth when both
		}
		if by == NotDisabled {
			p.services = append(p.services, s)
			continue
		}
		if p.disabledBy == nil {
			p.disabledBy = map[string]DisabledBy{}
		}
		p.disabledBy[s] = by
	}
	p.blobScope, p.audit, p.unlistedAuth = opts.BlobScope, opts.Audit, opts.UnlistedAuthenticated
	p.unlistedPorts = opts.UnlistedPorts
	if len(p.unlistedPorts) == 0 {
		p.unlistedPorts = []uint16{80, 443}
	}
	for i := range cat.Rules {
		r := &cat.Rules[i]
		if opts.BlobScope == BlobListed && slices.Contains(blobWildcards, r.Host) {
			continue // not allowed even with its service enabled
		}
		if p.disabledBy[r.ServiceID] != NotDisabled {
			p.disabled = append(p.disabled, *r)
			continue
		}
		p.rules = append(p.rules, *r)
	}
	for _, r := range opts.Rules {
		// An operator rule without a geography (WW) means "wherever this
		// gateway runs": in a government cloud it applies as a USGov row
		// does, since no commercial row applies there.
		if opts.Cloud.Government() && r.Geography == WW {
			r.Geography = USGov
		}
		p.rules = append(p.rules, r)
	}
	for i := range p.rules {
		r := &p.rules[i]
		switch {
		case r.Action == Deny:
			p.deny.add(r)
		case p.cloudServes(r.Geography):
			p.allow.add(r)
		default:
			// Each cloud's list stands alone ("in a government cloud the
			// government lists apply instead of the commercial ones"): a
			// government row must not become the most specific pattern for
			// a commercial host (us4-v20.events.data.microsoft.com under
			// the commercial *.events.data.microsoft.com), nor the reverse.
			p.foreign.add(r)
		}
	}
	if p.disabledBy != nil {
		p.disabledIx, p.withDisabled = newIndex(), newIndex()
		for i := range p.rules {
			if r := &p.rules[i]; r.Action == Allow && p.cloudServes(r.Geography) {
				p.withDisabled.add(r)
			}
		}
		for i := range p.disabled {
			if r := &p.disabled[i]; p.cloudServes(r.Geography) {
				p.disabledIx.add(r)
				p.withDisabled.add(r)
			}
		}
	}
	return p, nil
}

func newIndex() index { return index{exact: map[string][]*Rule{}, wild: map[string][]*Rule{}} }

// Version is the catalog version the policy was built from.
func (p *Policy) Version() string { return p.version }

// Published is the publication date of the catalog the policy was built
// from.
func (p *Policy) Published() time.Time { return p.published }

// Cloud is the cloud the policy serves.
func (p *Policy) Cloud() Cloud { return p.cloud }

// AllGeographies reports whether no geography was configured, so that every
// data location's rows apply.
func (p *Policy) AllGeographies() bool { return p.allGeos }

// Geographies lists the geographies in force: WW first and the data
// locations (commercial cloud), or USGov and the cloud's own (government).
func (p *Policy) Geographies() []Geography {
	var gs []Geography
	for _, g := range AllGeographies() {
		if p.geos&(1<<g) != 0 {
			gs = append(gs, g)
		}
	}
	return gs
}

// InGeography reports whether rows of geography g apply.
func (p *Policy) InGeography(g Geography) bool { return p.geos&(1<<g) != 0 }

// Audit reports whether the policy is in audit mode.
func (p *Policy) Audit() bool { return p.audit }

// UnlistedAuthenticated reports whether authenticated users may reach
// unlisted destinations.
func (p *Policy) UnlistedAuthenticated() bool { return p.unlistedAuth }

// BlobScope is the blob storage scope in force.
func (p *Policy) BlobScope() BlobScope { return p.blobScope }

// Services lists the enabled catalog service ids.
func (p *Policy) Services() []string { return p.services }

// DisabledBy says which setting disabled catalog service id (NotDisabled
// if none did).
func (p *Policy) DisabledBy(service string) DisabledBy { return p.disabledBy[service] }

// DisabledServices lists the service ids switched off, by either setting,
// in name order.
func (p *Policy) DisabledServices() []string {
	return slices.Sorted(maps.Keys(p.disabledBy))
}

// Rules returns every rule the policy holds, including rows of geographies
// that are not configured (use InGeography to tell). Callers must not modify it.
func (p *Policy) Rules() []Rule { return p.rules }

// Decision is the outcome of matching a target against the policy.
type Decision struct {
	Target  Target
	Allowed bool
	Reason  Reason
	// Err is the sentinel of the refusal reason (nil when allowed).
	Err error
	// Rule is the rule that allowed the target, or the rule that refused it
	// (a deny rule, or the closest rule that did not fit); nil when no rule
	// names the host.
	Rule *Rule
	// TLSExempt and Anonymous are true when any rule allowing the target is
	// TLS-inspection exempt or allows anonymous use.
	TLSExempt bool
	Anonymous bool
	// PathUnchecked is true when the allowing rule is limited to paths the
	// gateway cannot see (CONNECT tunnels carry the path encrypted).
	PathUnchecked bool
	// NoSNICheck is true when an allowing rule switches ClientHello
	// verification off.
	NoSNICheck bool
	// Unlisted is true when the target is allowed only because it is an
	// unlisted destination open to authenticated users: the caller must
	// authenticate the client.
	Unlisted bool
	// Audited is true when audit mode allowed a target that enforce mode
	// would refuse; Reason and Rule then say why and by which rule.
	Audited bool
	// DisabledBy is the setting that disabled the service of Rule when
	// Reason is reason.ServiceDisabled (Rule is then the disabled service's
	// row that would have allowed the target).
	DisabledBy DisabledBy
}

// Detail explains the decision beyond its reason, naming what to change,
// or is "". For reason.ServiceDisabled it names the service and the
// setting that disabled it. It allocates, so callers build it only when
// they show it.
func (d *Decision) Detail() string {
	if d.Reason != reason.ServiceDisabled || d.Rule == nil {
		return ""
	}
	return fmt.Sprintf("service %q (%s) is disabled by %s", d.Rule.ServiceID, d.Rule.ServiceName, d.DisabledBy)
}

// Service returns the service id of the decision's rule, or "".
func (d *Decision) Service() string {
	if d.Rule == nil {
		return ""
	}
	return d.Rule.ServiceID
}

// Geography returns the geography of the decision's rule, or "".
func (d *Decision) Geography() string {
	if d.Rule == nil {
		return ""
	}
	return d.Rule.Geography.String()
}

// RuleID returns the id of the decision's rule, or "".
func (d *Decision) RuleID() string {
	if d.Rule == nil {
		return ""
	}
	return d.Rule.ID
}

func refuse(t Target, err error, r *Rule) Decision {
	return Decision{Target: t, Reason: ReasonOf(err), Err: err, Rule: r}
}

// Decide matches a normalised target. It does no I/O and, for targets without
// a path, does not allocate.
func (p *Policy) Decide(t Target) Decision {
	d := p.match(t, &p.allow)
	if d.Allowed || d.Err == ErrIPLiteral || d.Err == ErrBadTarget {
		return d
	}
	if p.unlistedAuth && d.Err == ErrNotListed && (d.Rule == nil || d.Rule.Action == Allow) &&
		slices.Contains(p.unlistedPorts, t.Port) {
		d.Allowed, d.Unlisted, d.Reason, d.Err = true, true, reason.Unlisted, nil
		return d
	}
	if p.disabledBy != nil && (d.Rule == nil || d.Rule.Action == Allow) && p.disabledIx.lookup(t.Host) != nil {
		// Refused, not by a deny rule, and a disabled service's row names
		// the host: would the target be allowed were it enabled (the most
		// specific pattern deciding among enabled and disabled rows)?
		if alt := p.match(t, &p.withDisabled); alt.Allowed {
			d = refuse(t, ErrServiceDisabled, alt.Rule)
			d.DisabledBy = p.disabledBy[alt.Rule.ServiceID]
		}
	}
	if p.audit {
		d.Allowed, d.Audited, d.Err = true, true, nil
		if d.Rule != nil && d.Rule.Action == Allow {
			d.TLSExempt, d.Anonymous, d.NoSNICheck = d.Rule.TLSExempt, d.Rule.Anonymous, d.Rule.NoSNICheck
		}
	}
	return d
}

// match is Decide in enforce mode, with the allow rules of allow (p.allow:
// the rules in force; p.withDisabled: those and the disabled services' rows).
func (p *Policy) match(t Target, allow *index) Decision {
	if denied := p.deny.match(t); denied != nil {
		return refuse(t, ErrNotListed, denied)
	}
	var rules []*Rule
	if t.IP.IsValid() {
		// IP literals are allowed only by a rule that names the address.
		if rules = allow.exact[t.Host]; rules == nil {
			return refuse(t, ErrIPLiteral, nil)
		}
	} else if rules = allow.lookup(t.Host); rules == nil {
		if other := p.foreign.lookup(t.Host); other != nil {
			return refuse(t, ErrCloud, other[0])
		}
		return refuse(t, ErrNotListed, nil)
	}
	d := Decision{Target: t}
	var geoMiss, portMiss, pathMiss *Rule
	for _, r := range rules {
		switch {
		case !p.InGeography(r.Geography):
			geoMiss = first(geoMiss, r)
		case !r.AllowsPort(t.Port):
			portMiss = first(portMiss, r)
		case t.HasPath && !r.MatchesPath(t.Path):
			pathMiss = first(pathMiss, r)
		default:
			if d.Rule == nil || (d.PathUnchecked && len(r.Paths) == 0) {
				d.Rule = r
				d.PathUnchecked = !t.HasPath && len(r.Paths) > 0
			}
			d.TLSExempt = d.TLSExempt || r.TLSExempt
			d.Anonymous = d.Anonymous || r.Anonymous
			d.NoSNICheck = d.NoSNICheck || r.NoSNICheck
		}
	}
	switch {
	case d.Rule != nil:
		d.Allowed, d.Reason = true, reason.Allowed
		return d
	case pathMiss != nil:
		return refuse(t, ErrNotListed, pathMiss)
	case portMiss != nil:
		return refuse(t, ErrPort, portMiss)
	default:
		return refuse(t, ErrGeography, geoMiss)
	}
}

// CloudServes reports whether rows of geography g belong to this policy's
// cloud (a data location not configured does; another cloud's row does
// not). Only those rows take part in choosing the most specific pattern.
func (p *Policy) CloudServes(g Geography) bool { return p.cloudServes(g) }

func (p *Policy) cloudServes(g Geography) bool {
	c, ok := CloudOf(g)
	if !ok { // USGov: every government cloud
		return p.cloud.Government()
	}
	return c == p.cloud
}

// coversPath reports whether a deny rule applies to t: path-limited deny rules
// apply only where the gateway sees the path (plain HTTP, inspected HTTPS).
func (r *Rule) coversPath(t Target) bool {
	if t.HasPath {
		return r.MatchesPath(t.Path)
	}
	return len(r.Paths) == 0
}

func first(have, r *Rule) *Rule {
	if have != nil {
		return have
	}
	return r
}

// Explanation is a decision in the shape `gateway explain` prints and the
// admin endpoint serves.
type Explanation struct {
	Input          string   `json:"input"`
	Target         string   `json:"target,omitempty"`
	Allowed        bool     `json:"allowed"`
	Reason         Reason   `json:"reason"`
	Error          string   `json:"error,omitempty"`
	Detail         string   `json:"detail,omitempty"`
	Rule           *Rule    `json:"rule,omitempty"`
	Service        string   `json:"service,omitempty"`
	Geography      string   `json:"geography,omitempty"`
	TLSExempt      bool     `json:"tls_exempt"`
	Anonymous      bool     `json:"anonymous"`
	PathUnchecked  bool     `json:"path_unchecked,omitempty"`
	CatalogVersion string   `json:"catalog_version"`
	Cloud          string   `json:"cloud"`
	Geographies    []string `json:"geographies"`
}

// Explain parses an operator's target (see ParseTarget) and decides it.
func (p *Policy) Explain(input string) Explanation {
	e := Explanation{Input: input, CatalogVersion: p.version, Cloud: p.cloud.String()}
	for _, g := range p.Geographies() {
		e.Geographies = append(e.Geographies, g.String())
	}
	t, err := ParseTarget(input)
	if err != nil {
		e.Reason, e.Error = ReasonOf(err), err.Error()
		return e
	}
	d := p.Decide(t)
	e.Target, e.Allowed, e.Reason, e.Rule = t.HostPort(), d.Allowed, d.Reason, d.Rule
	e.Service, e.Geography = d.Service(), d.Geography()
	e.TLSExempt, e.Anonymous, e.PathUnchecked = d.TLSExempt, d.Anonymous, d.PathUnchecked
	if d.Err != nil {
		e.Error = d.Err.Error()
	}
	if e.Detail = d.Detail(); e.Detail != "" {
		// gateway explain prints Error as the detail line.
		e.Error += ": " + e.Detail
	}
	return e
}

// Listing is the effective allowlist as the admin endpoint and `gateway
// catalog --format json` show it.
type Listing struct {
	CatalogVersion   string   `json:"catalog_version"`
	CatalogPublished string   `json:"catalog_published"`
	Cloud            string   `json:"cloud"`
	Geographies      []string `json:"geographies"`
	BlobScope        string   `json:"blob_scope"`
	Mode             string   `json:"mode"`
	Unlisted         string   `json:"unlisted"`
	Rules            []Rule   `json:"rules"`
}

// List returns the rules in force (all rules, including other geographies'
// rows, when all is true).
func (p *Policy) List(all bool) Listing {
	l := Listing{CatalogVersion: p.version, CatalogPublished: p.published.Format(dateLayout), Cloud: p.cloud.String(),
		BlobScope: p.blobScope.String(), Mode: "enforce", Unlisted: "deny", Rules: []Rule{}}
	if p.audit {
		l.Mode = "audit"
	}
	if p.unlistedAuth {
		l.Unlisted = "authenticated"
	}
	for _, g := range p.Geographies() {
		l.Geographies = append(l.Geographies, g.String())
	}
	for _, r := range p.rules {
		if all || p.InGeography(r.Geography) {
			l.Rules = append(l.Rules, r)
		}
	}
	return l
}
