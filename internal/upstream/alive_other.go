//go:build !unix

package upstream

// alive cannot look at an idle socket without reading from it here; a
// connection the origin has closed is found when the request fails, and
// idempotent requests are retried.
func (pc *conn) alive() bool { return true }
