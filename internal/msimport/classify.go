package msimport

import (
	"strings"
)

// service is a catalog service: a stable id (GATEWAY_DISABLED_SERVICES,
// metric labels) and a name.
type service struct{ id, name string }

// serviceRule assigns a service to rows whose text (Service, Category,
// description, endpoint, table title; lower case) contains any of the
// words. The first rule that matches wins, so narrower rules come first.
type serviceRule struct {
	service
	category []string // matched against the Category column only
	words    []string // matched against all the row's text
}

// serviceRules follow the categories and descriptions of Microsoft's tables
// (standard and streamlined, commercial and US Government, the Antivirus
// network-connections article). The ids are the catalog's since its first
// version: operators name them in GATEWAY_DISABLED_SERVICES.
var serviceRules = []serviceRule{
	// First: the streamlined row's description lists the services it
	// replaces ("Formerly: MAPS, ..., Command and Control").
	{service: service{"streamlined", "Streamlined connectivity"},
		words: []string{"streamlined connectivity", "consolidated defender for endpoint", "core defender for endpoint services"}},
	{service: service{"crl", "CRL / certificate trust"}, category: []string{"crl"},
		words: []string{"certificate revocation", "certificate validation", "root update mechanism", "automatic root update"}},
	{service: service{"edr-cnc", "EDR command and control"}, words: []string{"command and control"}},
	{service: service{"automated-ir", "Automated investigation and response storage"}, words: []string{"autoir"}},
	{service: service{"sample-storage", "Malware sample submission storage"},
		words: []string{"malware sample submission", "malware submission storage"}},
	{service: service{"av-diagnostic", "Antivirus diagnostic data (UTC / GDPR client)"}, category: []string{"utc"},
		words: []string{"client diagnostic data", "gdpr client"}},
	{service: service{"cyber-data", "Common cyber data"}, words: []string{"edr cyber data", "telemetry component"}},
	{service: service{"common-legacy", "Common (Windows 10 1703 and earlier)"}, words: []string{"telemetry channel"}},
	{service: service{"live-response", "Live Response push (WNS)"}, words: []string{"live response", "push notification"}},
	{service: service{"network-scanner", "Network scanner"}, words: []string{"network scanner", "network devices"}},
	{service: service{"security-management", "Security management"}, words: []string{"security management"}},
	{service: service{"mma", "MMA agent (older Windows)"}, words: []string{"monitoring agent"}},
	{service: service{"av-core", "Antivirus core service"}, words: []string{"defender core service"}},
	{service: service{"config-management", "Internal configuration management (Linux)"},
		words: []string{"internal configuration"}},
	{service: service{"ipv6-probe", "IPv6 connectivity probe"}, words: []string{"ipv6"}},
	{service: service{"linux-packages", "Common (Linux packages)"}, category: []string{"common (linux)"},
		words: []string{"linux agent", "linux app", "linux product"}},
	{service: service{"common-macos-linux", "Common (macOS/Linux)"},
		category: []string{"common (mac/linux)", "common (mac) (linux)", "common (mac)", "mac"},
		words:    []string{"mac app"}},
	{service: service{"cloud-protection-geo", "Antivirus cloud protection (geo)"},
		words: []string{"cloud-delivered protection and security intelligence updates"}},
	{service: service{"av-maps", "Antivirus cloud-delivered protection (MAPS)"}, category: []string{"maps"},
		words: []string{"maps - used by", "(maps)"}},
	{service: service{"smartscreen", "SmartScreen"}, words: []string{"smartscreen", "web & network protection"}},
	{service: service{"av-adl", "Antivirus security intelligence updates (alternate download location)"},
		category: []string{"mu (adl)"}, words: []string{"alternate location", "alternative download location", "alternate download location"}},
	{service: service{"av-update", "Antivirus Microsoft Update / Windows Update"},
		category: []string{"mu / wu", "mu/wu"}, words: []string{"microsoft update", "windows update", "mu / wu"}},
}

// portalService is the service of the Defender portal tables' rows.
var portalService = service{"admin-portal", "Admin portal (administrators' browsers)"}

// classify names the service of a row.
func classify(t *table, svc, category, description, endpoint string) service {
	if t.portal() {
		return portalService
	}
	cat := strings.ToLower(plainText(category))
	text := strings.ToLower(strings.Join([]string{plainText(svc), cat, plainText(description), endpoint}, " | "))
	for _, r := range serviceRules {
		for _, c := range r.category {
			if cat == c {
				return r.service
			}
		}
		for _, w := range r.words {
			if strings.Contains(text, w) {
				return r.service
			}
		}
	}
	// A service Microsoft adds later keeps its own, bounded id.
	name := plainText(category)
	if name == "" {
		name = plainText(svc)
	}
	return service{id: slug(name), name: name}
}

// slug turns a name into a service id: lower-case letters, digits and '-'.
func slug(s string) string {
	var b strings.Builder
	dash := false
	for _, r := range strings.ToLower(s) {
		switch {
		case r >= 'a' && r <= 'z' || r >= '0' && r <= '9':
			b.WriteRune(r)
			dash = false
		case !dash && b.Len() > 0:
			b.WriteByte('-')
			dash = true
		}
		if b.Len() >= 40 {
			break
		}
	}
	id := strings.Trim(b.String(), "-")
	if id == "" {
		return "other"
	}
	return id
}
