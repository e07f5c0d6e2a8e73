package telemetry

import (
	"bytes"
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"
)

var testTime = time.UnixMilli(1700000000123)

func tunnelEvent() Event {
	return Event{
		Timestamp:  testTime,
		ActionType: ConnectionSuccess,
		LocalIP:    "10.0.0.5",
		LocalPort:  51234,
		RemoteURL:  "winatp-gw-weu.microsoft.com",
		RemoteIP:   "20.1.2.3",
		RemotePort: 443,
		Protocol:   "Tcp",
		Method:     "CONNECT",
		Status:     200,
		Fields: AdditionalFields{
			Service: "endpoint-detection", Geography: "EU", Rule: "catalog:12", TLS: "bypass",
			SNI: "winatp-gw-weu.microsoft.com", BytesUp: 1200, BytesDown: 5320, Duration: 150 * time.Millisecond,
		},
	}
}

func TestAppendJSONShape(t *testing.T) {
	minimal := Event{Timestamp: testTime, ActionType: ConnectionBlocked, LocalIP: "10.0.0.9", LocalPort: 1,
		RemoteURL: "http://evil.example/x", RemotePort: 80, Protocol: "Tcp", Method: "GET", Status: 403,
		Fields: AdditionalFields{Reason: "not_allowlisted"}}
	override := tunnelEvent()
	override.Fields.Method, override.Fields.Status, override.Fields.Path = "GET", 204, "/a/b"
	tests := []struct {
		name   string
		ev     Event
		top    map[string]any
		fields map[string]any
	}{
		{"tunnel", tunnelEvent(), map[string]any{
			"Timestamp": "2023-11-14T22:13:20.123Z", "ActionType": "ConnectionSuccess", "LocalIP": "10.0.0.5",
			"LocalPort": 51234.0, "RemoteUrl": "winatp-gw-weu.microsoft.com", "RemoteIP": "20.1.2.3",
			"RemotePort": 443.0, "Protocol": "Tcp",
		}, map[string]any{
			"service": "endpoint-detection", "geography": "EU", "rule": "catalog:12", "tls": "bypass",
			"sni": "winatp-gw-weu.microsoft.com", "bytes_up": 1200.0, "bytes_down": 5320.0, "duration_s": 0.15,
			"method": "CONNECT", "status": 200.0,
		}},
		{"minimal omits empties", minimal, map[string]any{
			"Timestamp": "2023-11-14T22:13:20.123Z", "ActionType": "ConnectionBlocked", "LocalIP": "10.0.0.9",
			"LocalPort": 1.0, "RemoteUrl": "http://evil.example/x", "RemoteIP": "", "RemotePort": 80.0, "Protocol": "Tcp",
		}, map[string]any{"reason": "not_allowlisted", "method": "GET", "status": 403.0}},
		{"fields override method and status", override, nil, map[string]any{
			"service": "endpoint-detection", "geography": "EU", "rule": "catalog:12", "tls": "bypass",
			"sni": "winatp-gw-weu.microsoft.com", "bytes_up": 1200.0, "bytes_down": 5320.0, "duration_s": 0.15,
			"method": "GET", "path": "/a/b", "status": 204.0,
		}},
		{"empty event", Event{}, map[string]any{
			"Timestamp": "0001-01-01T00:00:00.000Z", "ActionType": "", "LocalIP": "", "LocalPort": 0.0,
			"RemoteUrl": "", "RemoteIP": "", "RemotePort": 0.0, "Protocol": "",
		}, map[string]any{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			line := AppendJSON(nil, &tt.ev)
			if !bytes.HasSuffix(line, []byte("\n")) || bytes.Count(line, []byte("\n")) != 1 {
				t.Fatalf("not one line: %q", line)
			}
			var got map[string]any
			if err := json.Unmarshal(line, &got); err != nil {
				t.Fatalf("%v: %s", err, line)
			}
			keys := slices.Sorted(maps.Keys(got))
			wantKeys := []string{"ActionType", "AdditionalFields", "LocalIP", "LocalPort", "Protocol", "RemoteIP", "RemotePort", "RemoteUrl", "Timestamp"}
			if !slices.Equal(keys, wantKeys) {
				t.Errorf("keys %v, want %v", keys, wantKeys)
			}
			for k, v := range tt.top {
				if got[k] != v {
					t.Errorf("%s = %#v, want %#v", k, got[k], v)
				}
			}
			af, ok := got["AdditionalFields"].(map[string]any)
			if !ok {
				t.Fatalf("AdditionalFields is %T", got["AdditionalFields"])
			}
			if !maps.Equal(af, tt.fields) {
				t.Errorf("AdditionalFields = %v, want %v", af, tt.fields)
			}
		})
	}
}

// specialStrings exercise every escaping path.
var specialStrings = []string{
	`"quoted" and \backslash\`,
	"new\nline\r\n",
	"tab\tform\fbs\b",
	"\x00\x01\x1f\x7f",
	"héllo ✓ 日本 😀",
	"sep\u2028\u2029",
	"invalid \xff\xfe utf8 \xe2\x82",
	"<html>&amp;",
	"with space",
	"",
}

// encodingJSON is the reference: encoding/json with HTML escaping off.
func encodingJSON(t testing.TB, v any) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		t.Fatal(err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
}

func TestAppendJSONStringMatchesEncodingJSON(t *testing.T) {
	for _, s := range specialStrings {
		t.Run("", func(t *testing.T) {
			got := appendJSONString(nil, s)
			if want := encodingJSON(t, s); !bytes.Equal(got, want) {
				t.Errorf("appendJSONString(%q) = %s, want %s", s, got, want)
			}
		})
	}
}

func specialEvent(s string) Event {
	return Event{
		Timestamp: testTime, ActionType: s, LocalIP: s, LocalPort: 1, RemoteURL: s, RemoteIP: s, RemotePort: 2,
		Protocol: s, Method: s, Status: 200,
		Fields: AdditionalFields{Service: s, Geography: s, Rule: s, Reason: s, User: s, TLS: s, SNI: s, Path: s},
	}
}

func TestAppendJSONSpecialChars(t *testing.T) {
	for _, s := range specialStrings {
		t.Run("", func(t *testing.T) {
			ev := specialEvent(s)
			line := AppendJSON(nil, &ev)
			if bytes.Count(line, []byte("\n")) != 1 || !json.Valid(line) {
				t.Fatalf("invalid line for %q: %s", s, line)
			}
			var want string // what encoding/json decodes s as (invalid UTF-8 replaced)
			if err := json.Unmarshal(encodingJSON(t, s), &want); err != nil {
				t.Fatal(err)
			}
			var got struct {
				RemoteUrl        string
				AdditionalFields map[string]any
			}
			if err := json.Unmarshal(line, &got); err != nil {
				t.Fatal(err)
			}
			if got.RemoteUrl != want {
				t.Errorf("RemoteUrl = %q, want %q", got.RemoteUrl, want)
			}
			if s != "" && got.AdditionalFields["path"] != want {
				t.Errorf("path = %q, want %q", got.AdditionalFields["path"], want)
			}
		})
	}
}

func FuzzAppendJSON(f *testing.F) {
	for _, s := range specialStrings {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := appendJSONString(nil, s), encodingJSON(t, s); !bytes.Equal(got, want) {
			t.Fatalf("appendJSONString(%q) = %s, want %s", s, got, want)
		}
		ev := specialEvent(s)
		line := AppendJSON(nil, &ev)
		if bytes.Count(line, []byte("\n")) != 1 || !json.Valid(line) {
			t.Fatalf("invalid JSON for %q: %s", s, line)
		}
	})
}

func TestAppendSquidGolden(t *testing.T) {
	plain := Event{
		Timestamp: time.UnixMilli(1700000001005), ActionType: ConnectionSuccess, LocalIP: "10.0.0.6",
		RemoteURL: "http://ctldl.windowsupdate.com/msdownload/update/v3/static/trustedr/en/authrootstl.cab",
		RemoteIP:  "93.184.216.34", RemotePort: 80, Method: "GET", Status: 200,
		Fields: AdditionalFields{User: "alice", BytesDown: 1234567, Duration: 2500 * time.Millisecond},
	}
	denied := Event{
		Timestamp: testTime, ActionType: ConnectionBlocked, LocalIP: "10.0.0.7",
		RemoteURL: "evil.example", RemotePort: 443, Method: "CONNECT", Status: 403,
	}
	failed := Event{
		Timestamp: testTime, ActionType: ConnectionFailed, LocalIP: "10.0.0.8",
		RemoteURL: "http://x.blob.core.windows.net/c", RemoteIP: "20.9.9.9", RemotePort: 80, Method: "GET", Status: 504,
		Fields: AdditionalFields{Duration: 10 * time.Second},
	}
	audited := tunnelEvent()
	audited.ActionType = ConnectionAudited
	v6 := tunnelEvent()
	v6.RemoteURL, v6.RemoteIP = "2001:db8::1", "2001:db8::1"
	weird := Event{
		Timestamp: testTime, ActionType: ConnectionSuccess, LocalIP: "10.0.0.5", RemoteURL: "http://h/a b\nc\x00é%20",
		Method: "GET", Status: 200, Fields: AdditionalFields{User: "bob smith\r\n"},
	}
	tests := []struct {
		name string
		ev   Event
		want string
	}{
		{"connect success", tunnelEvent(), "1700000000.123    150 10.0.0.5 TCP_TUNNEL/200 5320 CONNECT winatp-gw-weu.microsoft.com:443 - HIER_DIRECT/20.1.2.3 -\n"},
		{"http success", plain, "1700000001.005   2500 10.0.0.6 TCP_MISS/200 1234567 GET http://ctldl.windowsupdate.com/msdownload/update/v3/static/trustedr/en/authrootstl.cab alice HIER_DIRECT/93.184.216.34 -\n"},
		{"denied", denied, "1700000000.123      0 10.0.0.7 TCP_DENIED/403 0 CONNECT evil.example:443 - HIER_NONE/- -\n"},
		{"failed", failed, "1700000000.123  10000 10.0.0.8 TCP_MISS/504 0 GET http://x.blob.core.windows.net/c - HIER_NONE/- -\n"},
		{"audited", audited, "1700000000.123    150 10.0.0.5 TCP_TUNNEL/200 5320 CONNECT winatp-gw-weu.microsoft.com:443 - HIER_DIRECT/20.1.2.3 -\n"},
		{"ipv6", v6, "1700000000.123    150 10.0.0.5 TCP_TUNNEL/200 5320 CONNECT [2001:db8::1]:443 - HIER_DIRECT/2001:db8::1 -\n"},
		{"escaped", weird, "1700000000.123      0 10.0.0.5 TCP_MISS/200 0 GET http://h/a%20b%0Ac%00%C3%A9%20 bob%20smith%0D%0A HIER_NONE/- -\n"},
		{"empty", Event{}, "-62135596800.000      0 - NONE/000 0 - - - HIER_NONE/- -\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := string(AppendSquid(nil, &tt.ev)); got != tt.want {
				t.Errorf("got\n%q\nwant\n%q", got, tt.want)
			}
		})
	}
}

// checkSquidLine asserts line is one line of ten space-separated printable
// ASCII fields.
func checkSquidLine(t *testing.T, line []byte) {
	t.Helper()
	body, ok := bytes.CutSuffix(line, []byte("\n"))
	if !ok {
		t.Fatalf("no trailing newline: %q", line)
	}
	for _, b := range body {
		if b < ' ' || b >= 0x7f {
			t.Fatalf("byte %#x in %q", b, line)
		}
	}
	if f := strings.Split(string(body), " "); len(slices.DeleteFunc(f, func(s string) bool { return s == "" })) != 10 {
		t.Fatalf("%d fields in %q", len(f), line)
	}
}

func TestAppendSquidSpecialChars(t *testing.T) {
	for _, s := range specialStrings {
		t.Run("", func(t *testing.T) {
			for _, m := range []string{"CONNECT", s} {
				ev := specialEvent(s)
				ev.Method = m
				checkSquidLine(t, AppendSquid(nil, &ev))
			}
		})
	}
}

func FuzzAppendSquid(f *testing.F) {
	for _, s := range specialStrings {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ev := specialEvent(s)
		checkSquidLine(t, AppendSquid(nil, &ev))
		ev.Method = "CONNECT"
		checkSquidLine(t, AppendSquid(nil, &ev))
	})
}

func BenchmarkAppendJSON(b *testing.B) {
	ev := tunnelEvent()
	buf := make([]byte, 0, 1024)
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendJSON(buf[:0], &ev)
	}
	b.SetBytes(int64(len(buf)))
}

// jsonEvent is the json.Marshal alternative to AppendJSON, kept to compare
// their speed (BenchmarkAppendJSONMarshal).
type jsonEvent struct {
	Timestamp        string
	ActionType       string
	LocalIP          string
	LocalPort        int
	RemoteUrl        string //nolint:revive // DeviceNetworkEvents' spelling
	RemoteIP         string
	RemotePort       int
	Protocol         string
	AdditionalFields jsonFields
}

type jsonFields struct {
	Service   string  `json:"service,omitempty"`
	Geography string  `json:"geography,omitempty"`
	Rule      string  `json:"rule,omitempty"`
	Reason    string  `json:"reason,omitempty"`
	User      string  `json:"user,omitempty"`
	TLS       string  `json:"tls,omitempty"`
	SNI       string  `json:"sni,omitempty"`
	BytesUp   int64   `json:"bytes_up,omitempty"`
	BytesDown int64   `json:"bytes_down,omitempty"`
	Duration  float64 `json:"duration_s,omitempty"`
	Method    string  `json:"method,omitempty"`
	Path      string  `json:"path,omitempty"`
	Status    int     `json:"status,omitempty"`
}

func marshalJSON(e *Event) ([]byte, error) {
	f := &e.Fields
	return json.Marshal(jsonEvent{
		Timestamp: e.Timestamp.UTC().Format(rfc3339Milli), ActionType: e.ActionType, LocalIP: e.LocalIP,
		LocalPort: e.LocalPort, RemoteUrl: e.RemoteURL, RemoteIP: e.RemoteIP, RemotePort: e.RemotePort,
		Protocol: e.Protocol,
		AdditionalFields: jsonFields{
			Service: f.Service, Geography: f.Geography, Rule: f.Rule, Reason: f.Reason, User: f.User, TLS: f.TLS,
			SNI: f.SNI, BytesUp: f.BytesUp, BytesDown: f.BytesDown, Duration: f.Duration.Seconds(),
			Method: e.method(), Path: f.Path, Status: e.status(),
		},
	})
}

func TestAppendJSONMatchesMarshal(t *testing.T) {
	for _, ev := range []Event{tunnelEvent(), {}, specialEvent("plain"), specialEvent("a\"b\nc")} {
		want, err := marshalJSON(&ev)
		if err != nil {
			t.Fatal(err)
		}
		got := AppendJSON(nil, &ev)
		if string(got) != string(want)+"\n" {
			t.Errorf("AppendJSON = %s\njson.Marshal = %s", got, want)
		}
	}
}

func BenchmarkAppendJSONMarshal(b *testing.B) {
	ev := tunnelEvent()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := marshalJSON(&ev); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAppendSquid(b *testing.B) {
	ev := tunnelEvent()
	buf := make([]byte, 0, 1024)
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendSquid(buf[:0], &ev)
	}
	b.SetBytes(int64(len(buf)))
}

// TestEveryActionTypeBothFormats renders one event of each ActionType as the
// proxy records it, in both access-log formats: the fields decision,
// outcome and reason each keep one meaning.
func TestEveryActionTypeBothFormats(t *testing.T) {
	base := func(action, url string, port int, method string, status int, f AdditionalFields) Event {
		return Event{Timestamp: testTime, ActionType: action, LocalIP: "10.0.0.5", LocalPort: 51234, RemoteURL: url,
			RemotePort: port, Protocol: "Tcp", Method: method, Status: status, Fields: f}
	}
	success := base(ConnectionSuccess, "winatp-gw-weu.microsoft.com", 443, "CONNECT", 200, AdditionalFields{
		Decision: DecisionAllow, Outcome: "error", Service: "edr-cnc", Geography: "EU", Rule: "catalog:75", TLS: "bypass",
		SNI: "winatp-gw-weu.microsoft.com", BytesUp: 700, BytesDown: 1300, Duration: 2 * time.Second})
	success.RemoteIP = "20.1.2.3"
	audited := base(ConnectionAudited, "http://unlisted.example.com/a", 80, "GET", 200, AdditionalFields{
		Decision: DecisionAudit, Outcome: OutcomeCompleted, Reason: "not-listed", Path: "/a", BytesDown: 12, Duration: 40 * time.Millisecond})
	audited.RemoteIP = "203.0.113.7"
	tests := []struct {
		name   string
		ev     Event
		fields map[string]any
		squid  string
	}{
		{"success ended by a reset: the end is the outcome, not a reason", success, map[string]any{
			"decision": "allow", "outcome": "error", "service": "edr-cnc", "geography": "EU", "rule": "catalog:75",
			"tls": "bypass", "sni": "winatp-gw-weu.microsoft.com", "bytes_up": 700.0, "bytes_down": 1300.0,
			"duration_s": 2.0, "method": "CONNECT", "status": 200.0,
		}, "1700000000.123   2000 10.0.0.5 TCP_TUNNEL/200 1300 CONNECT winatp-gw-weu.microsoft.com:443 - HIER_DIRECT/20.1.2.3 -\n"},
		{"blocked", base(ConnectionBlocked, "winatp-gw-cus.microsoft.com", 443, "CONNECT", 403, AdditionalFields{
			Decision: DecisionDeny, Outcome: OutcomeRefused, Reason: "geography", Service: "edr-cnc", Geography: "US", Rule: "catalog:47"}),
			map[string]any{"decision": "deny", "outcome": "refused", "reason": "geography", "service": "edr-cnc",
				"geography": "US", "rule": "catalog:47", "method": "CONNECT", "status": 403.0},
			"1700000000.123      0 10.0.0.5 TCP_DENIED/403 0 CONNECT winatp-gw-cus.microsoft.com:443 - HIER_NONE/- -\n"},
		{"failed: allowed, then not resolvable", base(ConnectionFailed, "nxdomain.wdcp.microsoft.com", 443, "CONNECT", 502, AdditionalFields{
			Decision: DecisionAllow, Outcome: OutcomeFailed, Reason: "dns-failure", Service: "av-maps", Geography: "WW", Rule: "catalog:100"}),
			map[string]any{"decision": "allow", "outcome": "failed", "reason": "dns-failure", "service": "av-maps",
				"geography": "WW", "rule": "catalog:100", "method": "CONNECT", "status": 502.0},
			"1700000000.123      0 10.0.0.5 TCP_MISS/502 0 CONNECT nxdomain.wdcp.microsoft.com:443 - HIER_NONE/- -\n"},
		{"audited: the reason is what enforce mode would refuse", audited, map[string]any{
			"decision": "audit", "outcome": "completed", "reason": "not-listed", "bytes_down": 12.0, "duration_s": 0.04,
			"method": "GET", "path": "/a", "status": 200.0,
		}, "1700000000.123     40 10.0.0.5 TCP_MISS/200 12 GET http://unlisted.example.com/a - HIER_DIRECT/203.0.113.7 -\n"},
	}
	seen := map[string]bool{}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			seen[tt.ev.ActionType] = true
			var got struct{ AdditionalFields map[string]any }
			if err := json.Unmarshal(AppendJSON(nil, &tt.ev), &got); err != nil {
				t.Fatal(err)
			}
			if !maps.Equal(got.AdditionalFields, tt.fields) {
				t.Errorf("JSON AdditionalFields = %v,\nwant %v", got.AdditionalFields, tt.fields)
			}
			if line := string(AppendSquid(nil, &tt.ev)); line != tt.squid {
				t.Errorf("squid line\n%q, want\n%q", line, tt.squid)
			}
		})
	}
	for _, a := range []string{ConnectionSuccess, ConnectionBlocked, ConnectionFailed, ConnectionAudited} {
		if !seen[a] {
			t.Errorf("no case for %s", a)
		}
	}
}

func TestAppendJSONPathUnchecked(t *testing.T) {
	for _, tt := range []struct {
		name string
		set  bool
		want bool
	}{{"unchecked", true, true}, {"checked", false, false}} {
		t.Run(tt.name, func(t *testing.T) {
			e := Event{ActionType: ConnectionSuccess, Fields: AdditionalFields{PathUnchecked: tt.set}}
			line := string(AppendJSON(nil, &e))
			if got := strings.Contains(line, `"path_unchecked":true`); got != tt.want {
				t.Errorf("line %s: path_unchecked present = %v, want %v", line, got, tt.want)
			}
			var v map[string]any
			if err := json.Unmarshal([]byte(line), &v); err != nil {
				t.Fatalf("invalid JSON %s: %v", line, err)
			}
		})
	}
}
