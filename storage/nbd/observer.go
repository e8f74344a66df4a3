package nbd

import "time"

// Observer is told of every transmission request a Server has served, for
// metrics (the nbd package itself keeps only the totals of Stats). It is
// called on the connections' goroutines, concurrently and on the request
// path: it must be cheap and must not block. A nil ServerOptions.Observer
// costs the request path one comparison.
type Observer interface {
	// Request reports one request served on export. command is "read",
	// "write", "flush", "trim", "cache", "write_zeroes", "block_status"
	// or, for a command the server does not know, "unknown". bytes is the
	// payload it moved: the data read or written, 0 for other commands and
	// for a failed request. d runs from the request's last byte read off
	// the connection to its reply being ready: waiting for a worker
	// included, sending the reply not. err is nil on success, else what
	// the request was answered with: a refusal (bad range, read-only
	// export, ...) or the backend's error (errors.Is(err, ErrIntegrity)
	// for an integrity failure).
	Request(export, command string, bytes int, d time.Duration, err error)
}

// commandNames names the commands a request can carry (cmdDisc never
// reaches a handler).
var commandNames = [...]string{
	cmdRead:        "read",
	cmdWrite:       "write",
	cmdFlush:       "flush",
	cmdTrim:        "trim",
	cmdCache:       "cache",
	cmdWriteZeroes: "write_zeroes",
	cmdBlockStatus: "block_status",
}

// commandName is the Observer's name for command typ.
func commandName(typ uint16) string {
	if int(typ) < len(commandNames) && commandNames[typ] != "" {
		return commandNames[typ]
	}
	return "unknown"
}

// observe reports a served request to the server's observer.
func (c *conn) observe(r *request, err error) {
	var n int
	if err == nil && (r.typ == cmdRead || r.typ == cmdWrite) {
		n = int(r.length)
	}
	c.s.obs.Request(c.exp.Name, commandName(r.typ), n, time.Since(r.start), err)
}
