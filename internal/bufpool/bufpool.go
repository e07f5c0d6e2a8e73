// Package bufpool is the gateway's one pool of 32 KiB copy buffers, shared
// by the tunnel relay (tlsbypass) and the plain-HTTP forwarder (proxy), so
// that a buffer freed by one serves the other.
package bufpool

import "sync"

// Size is the length of every buffer: large enough that a read on a
// flowing transfer fills it (the relay's cue to splice), small enough that
// thousands of tunnels moving at once stay affordable.
const Size = 32 << 10

var pool = sync.Pool{New: func() any { b := make([]byte, Size); return &b }}

// Get returns a buffer of Size bytes; give it back with Put.
func Get() *[]byte { return pool.Get().(*[]byte) }

// Put returns a buffer from Get. The caller must not use it afterwards.
func Put(b *[]byte) { pool.Put(b) }
