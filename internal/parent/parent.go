// Package parent sends the gateway's allowed traffic through one or more
// parent (corporate) proxies, GATEWAY_PARENT_PROXY: tunnels as a CONNECT to
// the parent, plain HTTP in absolute form (never CONNECT: Squid refuses
// CONNECT to port 80 by default).
//
// The gateway decides, resolves and checks every destination itself before a
// parent sees it (the caller passes the checked addresses), so a parent adds
// no way to internal addresses of its own: for tunnels, by default
// (Options.SendName false), the parent is asked for the checked IP address,
// never the name, and cannot resolve it again to something else. Plain HTTP
// names the host (see Chain.RoundTrip).
//
// Parents are tried in order. A parent that cannot be connected to (refused,
// timed out, or closed without an answer) is marked down for Options.Retry
// and skipped while another is up; a down parent is still tried after every
// up one has failed. A parent's answer — a refusal (403, 407), an error of
// its own (5xx) or anything but 2xx to a CONNECT — is its decision about the
// destination, not a failure of the parent: it is not failed over, and is
// returned as ErrRefused.
package parent

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/defendergw/gateway/internal/allowlist"
)

var (
	// ErrRefused: a parent answered, and not with success (CONNECT: any
	// non-2xx; plain HTTP: 407, 403 or 5xx).
	ErrRefused = errors.New("parent proxy refused the request")
	// ErrUnreachable: no parent could be connected to.
	ErrUnreachable = errors.New("no parent proxy reachable")
)

// Results of gateway_parent_requests_total.
const (
	ResultOK          = "ok"
	ResultRefused     = "refused"
	ResultUnreachable = "unreachable"
)

// Results lists every result label, for metrics initialisation.
var Results = []string{ResultOK, ResultRefused, ResultUnreachable}

// ParseURL parses one element of GATEWAY_PARENT_PROXY:
// http://[user:pass@]host:port. Errors never repeat the password.
func ParseURL(s string) (*url.URL, error) {
	s = strings.TrimSpace(s)
	u, err := url.Parse(s)
	if err != nil {
		// url's errors quote the whole input, password included.
		return nil, fmt.Errorf("%q is not a URL", redact(s))
	}
	shown := redact(s) // without userinfo, an "@" may still hide a password (an opaque URL)
	if u.User != nil {
		shown = u.Redacted()
	}
	switch {
	case u.Scheme != "http":
		return nil, fmt.Errorf("%q: want http://[user:pass@]host:port (https:// to the parent is not supported)", shown)
	case u.Opaque != "" || u.Host == "":
		return nil, fmt.Errorf("%q: want http://[user:pass@]host:port", shown)
	case (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.ForceQuery:
		return nil, fmt.Errorf("%q: a parent proxy URL has no path, query or fragment", shown)
	}
	host, port, err := net.SplitHostPort(u.Host)
	if err != nil || host == "" {
		return nil, fmt.Errorf("%q: want host:port, with the port", shown)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return nil, fmt.Errorf("%q: port %q is not a port number", shown, port)
	}
	if u.User != nil && u.User.Username() == "" {
		return nil, fmt.Errorf("%q: credentials without a user name", shown)
	}
	u.Path = ""
	return u, nil
}

// redact hides what could be a password in a string that did not parse.
func redact(s string) string {
	if at := strings.LastIndexByte(s, '@'); at >= 0 {
		if i := strings.Index(s, "://"); i >= 0 && i < at {
			return s[:i+3] + "xxxxx@" + s[at+1:]
		}
		return "xxxxx@" + s[at+1:]
	}
	return s
}

// NormalizeBypass normalises a GATEWAY_PARENT_BYPASS pattern as the
// allowlist does a rule's host: an exact name, "*.suffix", or an IP
// literal.
func NormalizeBypass(p string) (string, error) { return allowlist.NormalizePattern(p) }

// Options configure a Chain.
type Options struct {
	// Parents, in order; required. Userinfo holds the credentials sent in
	// Proxy-Authorization (Basic).
	Parents []*url.URL
	// Bypass lists the destinations that go direct: exact names and
	// "*.suffix" patterns (NormalizeBypass'd).
	Bypass []string
	// Retry is how long a parent that failed to connect is skipped; zero
	// means it is never skipped.
	Retry time.Duration
	// SendName asks the parent for the host name instead of the checked
	// address (GATEWAY_PARENT_TARGET=name): the parent's domain ACLs then
	// work, and it resolves the name itself.
	SendName bool
	// DialTimeout bounds connecting to one parent; zero means the
	// request's deadline only.
	DialTimeout time.Duration
	// KeepAlive and KeepAliveConfig are net.Dialer's, for connections to
	// parents.
	KeepAlive       time.Duration
	KeepAliveConfig net.KeepAliveConfig
	// Transport is the template of the plain-HTTP transport (timeouts,
	// pool sizes); its Proxy and DialContext are replaced. Nil means
	// http.Transport's defaults.
	Transport *http.Transport
	// Observe, if non-nil, counts one attempt on a parent (its Name) with
	// its result (ResultOK, ResultRefused, ResultUnreachable).
	Observe func(parent, result string)
	// Up, if non-nil, reports a parent's health: up at New, down at a
	// failed connection attempt, up again when it next answers.
	Up func(parent string, up bool)
}

// Parent is one parent proxy.
type Parent struct {
	url  *url.URL // with credentials, for http.Transport's Proxy-Authorization
	addr string   // host:port
	auth string   // Proxy-Authorization value, or ""

	mu        sync.Mutex
	downUntil time.Time
}

// Name is the parent's host:port: its metrics label and its name in logs
// (never its credentials).
func (p *Parent) Name() string { return p.addr }

// Chain is the ordered list of parents. It is safe for concurrent use.
type Chain struct {
	opts    Options
	parents []*Parent
	byAddr  map[string]*Parent
	exact   map[string]bool
	suffix  []string // ".suffix" of "*.suffix"
	tr      *http.Transport
	now     func() time.Time
}

type parentKey struct{}

// New builds a Chain.
func New(o Options) (*Chain, error) {
	if len(o.Parents) == 0 {
		return nil, errors.New("parent: no parent proxy")
	}
	c := &Chain{opts: o, byAddr: map[string]*Parent{}, exact: map[string]bool{}, now: time.Now}
	for _, u := range o.Parents {
		p := &Parent{url: u, addr: u.Host}
		if u.User != nil {
			pass, _ := u.User.Password()
			p.auth = "Basic " + base64.StdEncoding.EncodeToString([]byte(u.User.Username()+":"+pass))
		}
		c.parents = append(c.parents, p)
		c.byAddr[p.addr] = p
	}
	for _, b := range o.Bypass {
		if s, ok := strings.CutPrefix(b, "*."); ok {
			c.suffix = append(c.suffix, "."+s)
		} else {
			c.exact[b] = true
		}
	}
	if o.Transport != nil {
		c.tr = o.Transport.Clone()
	} else {
		c.tr = &http.Transport{}
	}
	c.tr.Proxy = func(r *http.Request) (*url.URL, error) {
		p, _ := r.Context().Value(parentKey{}).(*Parent)
		if p == nil {
			return nil, errors.New("parent: request without a parent")
		}
		return p.url, nil
	}
	c.tr.DialContext = func(ctx context.Context, _, addr string) (net.Conn, error) {
		p := c.byAddr[addr]
		if p == nil {
			return nil, fmt.Errorf("parent: %s is no parent proxy", addr)
		}
		return c.dial(ctx, p)
	}
	c.tr.DialTLSContext = nil
	c.tr.ProxyConnectHeader = nil
	for _, p := range c.parents {
		c.report(p, true)
	}
	return c, nil
}

// Parents lists the parents in order.
func (c *Chain) Parents() []*Parent { return c.parents }

// Bypass reports whether host (normalised) goes direct.
func (c *Chain) Bypass(host string) bool {
	if c.exact[host] {
		return true
	}
	for _, s := range c.suffix {
		if strings.HasSuffix(host, s) {
			return true
		}
	}
	return false
}

// CloseIdleConnections closes idle plain-HTTP connections to parents.
func (c *Chain) CloseIdleConnections() { c.tr.CloseIdleConnections() }

// order is the parents to try: those up, in order, then those down.
func (c *Chain) order() []*Parent {
	now := c.now()
	up := make([]*Parent, 0, len(c.parents))
	var down []*Parent
	for _, p := range c.parents {
		p.mu.Lock()
		isDown := now.Before(p.downUntil)
		p.mu.Unlock()
		if isDown {
			down = append(down, p)
		} else {
			up = append(up, p)
		}
	}
	return append(up, down...)
}

func (c *Chain) markDown(p *Parent) {
	if c.opts.Retry <= 0 {
		return
	}
	p.mu.Lock()
	wasUp := !c.now().Before(p.downUntil)
	p.downUntil = c.now().Add(c.opts.Retry)
	p.mu.Unlock()
	if wasUp {
		c.report(p, false)
	}
}

func (c *Chain) markUp(p *Parent) {
	p.mu.Lock()
	wasDown := !p.downUntil.IsZero() && c.now().Before(p.downUntil)
	p.downUntil = time.Time{}
	p.mu.Unlock()
	if wasDown {
		c.report(p, true)
	}
}

// Up reports whether p is up (not marked down).
func (c *Chain) Up(p *Parent) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return !c.now().Before(p.downUntil)
}

func (c *Chain) report(p *Parent, up bool) {
	if c.opts.Up != nil {
		c.opts.Up(p.addr, up)
	}
}

func (c *Chain) observe(p *Parent, result string) {
	if c.opts.Observe != nil {
		c.opts.Observe(p.addr, result)
	}
}

// unreachableError is a failure to connect to (or get an answer from) one
// parent; it names the parent by host:port only.
type unreachableError struct {
	parent string
	err    error
}

func (e *unreachableError) Error() string { return "parent " + e.parent + ": " + e.err.Error() }
func (e *unreachableError) Unwrap() error { return e.err }

// dial connects to p.
func (c *Chain) dial(ctx context.Context, p *Parent) (net.Conn, error) {
	d := net.Dialer{Timeout: c.opts.DialTimeout, KeepAlive: c.opts.KeepAlive, KeepAliveConfig: c.opts.KeepAliveConfig}
	conn, err := d.DialContext(ctx, "tcp", p.addr)
	if err != nil {
		var oe *net.OpError
		if errors.As(err, &oe) {
			err = oe.Err // "dial tcp host:port:" again adds nothing
		}
		return nil, &unreachableError{p.addr, err}
	}
	return conn, nil
}

// allFailed wraps the last parent's failure in ErrUnreachable.
func allFailed(last error) error {
	if last == nil {
		return ErrUnreachable
	}
	return fmt.Errorf("%w: %w", ErrUnreachable, last)
}

// target is what a parent is asked for: the first checked address, or the
// name with the decided port (SendName).
func (c *Chain) target(host string, port uint16, addrs []netip.AddrPort) string {
	if c.opts.SendName || len(addrs) == 0 {
		return net.JoinHostPort(host, strconv.Itoa(int(port)))
	}
	return addrs[0].String()
}

// DialTunnel opens a tunnel to host:port through the first parent that
// answers; addrs are the addresses the gateway checked for host. The
// connection returned is the parent's *net.TCPConn itself unless the
// parent sent bytes beyond its answer.
func (c *Chain) DialTunnel(ctx context.Context, host string, port uint16, addrs []netip.AddrPort) (net.Conn, error) {
	target := c.target(host, port, addrs)
	var last error
	for _, p := range c.order() {
		if ctx.Err() != nil {
			break
		}
		conn, err := c.dial(ctx, p)
		if err == nil {
			conn, err = c.handshake(ctx, conn, p, target)
		}
		switch {
		case err == nil:
			c.markUp(p)
			c.observe(p, ResultOK)
			return conn, nil
		case errors.Is(err, ErrRefused):
			c.markUp(p) // it answered
			c.observe(p, ResultRefused)
			return nil, err
		}
		c.markDown(p)
		c.observe(p, ResultUnreachable)
		last = err
	}
	return nil, allFailed(last)
}

// maxAnswer bounds a parent's answer to CONNECT.
const maxAnswer = 64 << 10

// handshake sends CONNECT target on conn and reads the parent's answer
// within ctx's deadline.
func (c *Chain) handshake(ctx context.Context, conn net.Conn, p *Parent, target string) (net.Conn, error) {
	if d, ok := ctx.Deadline(); ok {
		conn.SetDeadline(d)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	req := "CONNECT " + target + " HTTP/1.1\r\nHost: " + target + "\r\n"
	if p.auth != "" {
		req += "Proxy-Authorization: " + p.auth + "\r\n"
	}
	req += "\r\n"
	fail := func(err error) (net.Conn, error) {
		conn.Close()
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", err, ctx.Err())
		}
		return nil, &unreachableError{p.addr, err}
	}
	if _, err := io.WriteString(conn, req); err != nil {
		return fail(err)
	}
	br := bufio.NewReader(io.LimitReader(conn, maxAnswer))
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		return fail(fmt.Errorf("reading the answer to CONNECT: %w", err))
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		conn.Close()
		return nil, fmt.Errorf("parent %s answered CONNECT with %s: %w", p.addr, resp.Status, ErrRefused)
	}
	if !stop() {
		conn.Close()
		return nil, &unreachableError{p.addr, ctx.Err()}
	}
	conn.SetDeadline(time.Time{})
	if n := br.Buffered(); n > 0 {
		// The parent sent tunnel bytes with its answer: keep them.
		b, _ := br.Peek(n)
		return &bufferedConn{Conn: conn, pending: append([]byte(nil), b...)}, nil
	}
	return conn, nil
}

// bufferedConn serves the bytes a parent sent behind its answer, then the
// connection.
type bufferedConn struct {
	net.Conn
	pending []byte
}

func (b *bufferedConn) Read(p []byte) (int, error) {
	if len(b.pending) > 0 {
		n := copy(p, b.pending)
		b.pending = b.pending[n:]
		return n, nil
	}
	return b.Conn.Read(p)
}

// RoundTrip sends a plain-HTTP request in absolute form through the first
// parent that can be connected to. The caller has checked the addresses of
// r's host; the request names the host, never the address, whatever
// SendName says: in absolute form the URI's authority is the Host a parent
// sends on (RFC 9112 §3.2.2), and an origin must see its name. A parent's
// 407, 403 or 5xx is ErrRefused (issue 19's contract: a 407 is addressed
// to the gateway, and in absolute form a parent's own 403 or 5xx cannot be
// told from an origin's, so every one is reported as the parent's, 502
// parent-refused); any other answer is the response. A request is retried on the next
// parent only when the parent could not be connected to and nothing of its
// body was read.
func (c *Chain) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	var body *replayBody
	if r.Body != nil && r.Body != http.NoBody {
		body = &replayBody{rc: r.Body}
		r.Body = body
		defer body.release()
	}
	var last error
	for _, p := range c.order() {
		if r.Context().Err() != nil || (body != nil && body.touched()) {
			break
		}
		resp, err := c.tr.RoundTrip(r.WithContext(context.WithValue(r.Context(), parentKey{}, p)))
		var ue *unreachableError
		switch {
		case err == nil && refusal(resp.StatusCode):
			resp.Body.Close()
			c.markUp(p)
			c.observe(p, ResultRefused)
			return nil, fmt.Errorf("parent %s answered %s: %w", p.addr, resp.Status, ErrRefused)
		case err == nil:
			c.markUp(p)
			c.observe(p, ResultOK)
			return resp, nil
		case errors.As(err, &ue):
			c.markDown(p)
			c.observe(p, ResultUnreachable)
			last = ue
			continue
		}
		// Connected, then failed: the parent's answer did not come (in
		// time); the body may be gone, and the request is not retried.
		c.observe(p, ResultUnreachable)
		return nil, err
	}
	return nil, allFailed(last)
}

// replayBody lets a request body survive a parent that could not be
// connected to: http.Transport closes the body of a failed request, and the
// next parent needs it unread.
type replayBody struct {
	mu   sync.Mutex
	rc   io.ReadCloser
	read bool
}

func (b *replayBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	b.read = true
	b.mu.Unlock()
	return b.rc.Read(p)
}

// Close closes the body once it has been read; an unread body stays open
// for the next attempt (release closes it).
func (b *replayBody) Close() error {
	if b.touched() {
		return b.rc.Close()
	}
	return nil
}

func (b *replayBody) touched() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.read
}

func (b *replayBody) release() { b.rc.Close() }

// refusal reports a plain-HTTP status that is taken as the parent's own
// refusal: 407 (addressed to the gateway), 403 (its ACLs) and 5xx (it
// could not reach the origin).
func refusal(status int) bool {
	return status == http.StatusProxyAuthRequired || status == http.StatusForbidden || status >= 500
}
