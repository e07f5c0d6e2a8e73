// Package pactest runs the gateway's generated PAC files in a JavaScript
// engine (goja), as browsers and WinHTTP do. It lives in the deploy module
// so that the gateway's own module does not require the engine: it has no
// code of its own, only tests.
package pactest
