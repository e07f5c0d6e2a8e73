package telemetry

import (
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/defendergw/gateway/internal/reason"
)

// ActionType values, as in Defender's DeviceNetworkEvents (the reason
// table's, which maps each reason to one).
const (
	ConnectionSuccess = reason.ConnectionSuccess
	ConnectionFailed  = reason.ConnectionFailed
	ConnectionBlocked = reason.ConnectionBlocked
	ConnectionAudited = reason.ConnectionAudited
)

// Decisions and outcomes of AdditionalFields. The decision is what the
// gateway decided about the destination (allow, deny, audit: allowed only by
// audit mode); the outcome is how the connection ended; the reason says why
// it was refused or failed (or, audited, why enforce mode would refuse it),
// and is empty for a clean success.
const (
	DecisionAllow = "allow"
	DecisionDeny  = "deny"
	DecisionAudit = "audit"

	OutcomeRefused   = "refused"   // ConnectionBlocked: answered with a refusal, nothing reached the destination
	OutcomeFailed    = "failed"    // ConnectionFailed: the destination could not be resolved or reached
	OutcomeCompleted = "completed" // a forwarded HTTP response was relayed to its end (or the client left)
	// Tunnels end with the relay's outcome: closed, idle-timeout,
	// half-close-timeout or error.
)

// Event is one connection, shaped like a DeviceNetworkEvents row.
type Event struct {
	Timestamp  time.Time // when the connection ended; Log sets time.Now() if zero
	ActionType string    // ConnectionSuccess | ConnectionFailed | ConnectionBlocked | ConnectionAudited
	LocalIP    string    // the client
	LocalPort  int
	RemoteURL  string // the real target name (host, or URL for plain HTTP)
	RemoteIP   string // the address actually dialed ("" if none)
	RemotePort int
	Protocol   string // "Tcp"
	Method     string // CONNECT, GET, ...
	Status     int    // HTTP status answered to the client (200 for an established tunnel)
	Fields     AdditionalFields
}

// AdditionalFields is the AdditionalFields column. Empty values are omitted
// from JSON. Method and Status default to the Event's.
type AdditionalFields struct {
	Decision, Outcome                                string
	Service, Geography, Rule, Reason, User, TLS, SNI string
	BytesUp, BytesDown                               int64 // client_to_upstream, upstream_to_client
	Duration                                         time.Duration
	Method                                           string
	Path                                             string
	Status                                           int
	// PathUnchecked marks a raw tunnel allowed at host level by a
	// path-limited row: its path is encrypted, so it was not decided.
	PathUnchecked bool
	// Protocol is "transparent" for a connection the transparent
	// listener intercepted; empty (omitted) on the proxy port.
	Protocol string
}

func (e *Event) method() string {
	if e.Fields.Method != "" {
		return e.Fields.Method
	}
	return e.Method
}

func (e *Event) status() int {
	if e.Fields.Status != 0 {
		return e.Fields.Status
	}
	return e.Status
}

const rfc3339Milli = "2006-01-02T15:04:05.000Z07:00"

// AppendJSON appends e as one JSON object and a newline to dst. Strings are
// escaped exactly as encoding/json does with HTML escaping off (invalid UTF-8
// becomes U+FFFD), so the line is always valid JSON.
func AppendJSON(dst []byte, e *Event) []byte {
	dst = append(dst, `{"Timestamp":"`...)
	dst = e.Timestamp.UTC().AppendFormat(dst, rfc3339Milli)
	dst = append(dst, `","ActionType":`...)
	dst = appendJSONString(dst, e.ActionType)
	dst = append(dst, `,"LocalIP":`...)
	dst = appendJSONString(dst, e.LocalIP)
	dst = append(dst, `,"LocalPort":`...)
	dst = strconv.AppendInt(dst, int64(e.LocalPort), 10)
	dst = append(dst, `,"RemoteUrl":`...)
	dst = appendJSONString(dst, e.RemoteURL)
	dst = append(dst, `,"RemoteIP":`...)
	dst = appendJSONString(dst, e.RemoteIP)
	dst = append(dst, `,"RemotePort":`...)
	dst = strconv.AppendInt(dst, int64(e.RemotePort), 10)
	dst = append(dst, `,"Protocol":`...)
	dst = appendJSONString(dst, e.Protocol)
	dst = append(dst, `,"AdditionalFields":{`...)
	f := &e.Fields
	n := len(dst)
	dst = appendJSONField(dst, n, "decision", f.Decision)
	dst = appendJSONField(dst, n, "protocol", f.Protocol)
	dst = appendJSONField(dst, n, "outcome", f.Outcome)
	dst = appendJSONField(dst, n, "service", f.Service)
	dst = appendJSONField(dst, n, "geography", f.Geography)
	dst = appendJSONField(dst, n, "rule", f.Rule)
	dst = appendJSONField(dst, n, "reason", f.Reason)
	dst = appendJSONField(dst, n, "user", f.User)
	dst = appendJSONField(dst, n, "tls", f.TLS)
	dst = appendJSONField(dst, n, "sni", f.SNI)
	if f.BytesUp != 0 {
		dst = appendJSONKey(dst, n, "bytes_up")
		dst = strconv.AppendInt(dst, f.BytesUp, 10)
	}
	if f.BytesDown != 0 {
		dst = appendJSONKey(dst, n, "bytes_down")
		dst = strconv.AppendInt(dst, f.BytesDown, 10)
	}
	if f.Duration != 0 {
		dst = appendJSONKey(dst, n, "duration_s")
		dst = strconv.AppendFloat(dst, f.Duration.Seconds(), 'f', -1, 64)
	}
	dst = appendJSONField(dst, n, "method", e.method())
	dst = appendJSONField(dst, n, "path", f.Path)
	if s := e.status(); s != 0 {
		dst = appendJSONKey(dst, n, "status")
		dst = strconv.AppendInt(dst, int64(s), 10)
	}
	if f.PathUnchecked {
		dst = appendJSONKey(dst, n, "path_unchecked")
		dst = append(dst, "true"...)
	}
	return append(dst, "}}\n"...)
}

// appendJSONKey appends `"key":`, preceded by a comma unless dst has not
// grown past the object's opening at n.
func appendJSONKey(dst []byte, n int, key string) []byte {
	if len(dst) > n {
		dst = append(dst, ',')
	}
	dst = append(dst, '"')
	dst = append(dst, key...)
	return append(dst, '"', ':')
}

func appendJSONField(dst []byte, n int, key, v string) []byte {
	if v == "" {
		return dst
	}
	return appendJSONString(appendJSONKey(dst, n, key), v)
}

const hexDigits = "0123456789abcdef"

// appendJSONString is encoding/json's appendString with escapeHTML false.
func appendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		if b := s[i]; b < utf8.RuneSelf {
			if b >= 0x20 && b != '"' && b != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '\\', '"':
				dst = append(dst, '\\', b)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[b>>4], hexDigits[b&0xF])
			}
			i++
			start = i
			continue
		}
		c, size := utf8.DecodeRuneInString(s[i:])
		if c == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if c == '\u2028' || c == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[c&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// AppendSquid appends e and a newline to dst as a line of Squid's native
// access.log format,
//
//	%ts.%03tu %6tr %>a %Ss/%03>Hs %<st %rm %ru %[un %Sh/%<a %mt
//
// for example
//
//	1700000000.123    150 10.0.0.5 TCP_TUNNEL/200 5320 CONNECT winatp-gw-weu.microsoft.com:443 - HIER_DIRECT/20.1.2.3 -
//
// The result code is TCP_TUNNEL for a CONNECT and TCP_MISS for plain HTTP,
// whether the connection succeeded, failed (with its 502/504 status) or was
// audited: Squid has no audit result, so an audited line looks like a success
// and only the JSON format tells it apart. A blocked connection is
// TCP_DENIED. The size is the bytes sent to the client (BytesDown). Blocked
// and failed connections log HIER_NONE/-, others HIER_DIRECT/RemoteIP (or
// HIER_NONE/- if nothing was dialed). Fields are percent-encoded where they
// hold spaces, control characters or non-ASCII bytes, so a line is always
// one line of space-separated fields; empty fields are "-".
//
// calamaris and sarg read these lines as Squid's own. goaccess reads them
// with --log-format='%x.%^ %~%L %h %^/%s %b %m %U %e %^' --date-format=%s
// --time-format=%s, not with its built-in --log-format=SQUID: that one
// ("%^ %^ %^ %v %^: %x.%^ %~%L %h %^/%s %b %m %U") expects a syslog header
// (date, time, host, tag:) before each line and rejects Squid's own
// access.log in the same way; adding the header would break calamaris and
// sarg (squid_test.go runs all three).
func AppendSquid(dst []byte, e *Event) []byte {
	ts := e.Timestamp
	dst = strconv.AppendInt(dst, ts.Unix(), 10)
	dst = append(dst, '.')
	dst = appendPadded(dst, int64(ts.Nanosecond()/1e6), 3, '0')
	dst = append(dst, ' ')
	dst = appendPadded(dst, e.Fields.Duration.Milliseconds(), 6, ' ')
	dst = append(dst, ' ')
	dst = appendSquidField(dst, e.LocalIP)
	dst = append(dst, ' ')

	method := e.method()
	connect := method == "CONNECT"
	hier := true
	switch e.ActionType {
	case ConnectionBlocked:
		dst = append(dst, "TCP_DENIED"...)
		hier = false
	case ConnectionFailed:
		dst = append(dst, "TCP_MISS"...)
		hier = false
	case ConnectionSuccess, ConnectionAudited:
		if connect {
			dst = append(dst, "TCP_TUNNEL"...)
		} else {
			dst = append(dst, "TCP_MISS"...)
		}
	default:
		dst = append(dst, "NONE"...)
	}
	dst = append(dst, '/')
	dst = appendPadded(dst, int64(e.status()), 3, '0')
	dst = append(dst, ' ')
	dst = strconv.AppendInt(dst, max(e.Fields.BytesDown, 0), 10)
	dst = append(dst, ' ')
	dst = appendSquidField(dst, method)
	dst = append(dst, ' ')
	if connect && e.RemoteURL != "" && e.RemotePort != 0 {
		host := e.RemoteURL
		if strings.IndexByte(host, ':') >= 0 && host[0] != '[' { // IPv6 literal
			dst = append(dst, '[')
			dst = appendSquidEscaped(dst, host)
			dst = append(dst, ']')
		} else {
			dst = appendSquidEscaped(dst, host)
		}
		dst = append(dst, ':')
		dst = strconv.AppendInt(dst, int64(e.RemotePort), 10)
	} else {
		dst = appendSquidField(dst, e.RemoteURL)
	}
	dst = append(dst, ' ')
	dst = appendSquidField(dst, e.Fields.User)
	if hier && e.RemoteIP != "" {
		dst = append(dst, " HIER_DIRECT/"...)
		dst = appendSquidEscaped(dst, e.RemoteIP)
	} else {
		dst = append(dst, " HIER_NONE/-"...)
	}
	return append(dst, " -\n"...)
}

// appendPadded appends n right-aligned in width, padded with pad.
func appendPadded(dst []byte, n int64, width int, pad byte) []byte {
	var buf [20]byte
	b := strconv.AppendInt(buf[:0], n, 10)
	for i := len(b); i < width; i++ {
		dst = append(dst, pad)
	}
	return append(dst, b...)
}

func appendSquidField(dst []byte, s string) []byte {
	if s == "" {
		return append(dst, '-')
	}
	return appendSquidEscaped(dst, s)
}

// appendSquidEscaped appends s with bytes that could break the line's
// fields (space, control characters, DEL, non-ASCII) percent-encoded, as
// Squid does for URLs. '%' itself is left alone, as Squid does.
func appendSquidEscaped(dst []byte, s string) []byte {
	start := 0
	for i := 0; i < len(s); i++ {
		if b := s[i]; b <= ' ' || b >= 0x7f {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '%', "0123456789ABCDEF"[b>>4], "0123456789ABCDEF"[b&0xF])
			start = i + 1
		}
	}
	return append(dst, s[start:]...)
}
