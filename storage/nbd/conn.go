package nbd

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"time"
)

// conn is one client connection.
type conn struct {
	s    *Server
	raw  net.Conn   // the TCP connection
	nc   net.Conn   // raw, or the TLS connection on top of it
	sock *tlsSocket // under nc when it is TLS, else nil
	br   *bufio.Reader
	bw   *bufio.Writer
	log  *slog.Logger

	tlsDone    bool
	ids        []string // client identities from its certificate
	noZeroes   bool
	structured bool
	metaExport string // export named by the last SET_META_CONTEXT
	metaAlloc  bool   // base:allocation selected by it

	exp      *Export
	readOnly bool
	size     int64
	inline   inliner     // the backend, if it is one: see transmit
	dirty    atomic.Bool // a write was done since the last flush
}

// newConn wraps nc, a connection accepted by s, for the handshake.
func newConn(s *Server, nc net.Conn) *conn {
	nc = newRawSocket(nc)
	c := &conn{s: s, raw: nc, nc: nc}
	c.log = s.log.With("remote", nc.RemoteAddr().String())
	c.br = bufio.NewReaderSize(nc, 64<<10)
	c.bw = bufio.NewWriterSize(nc, 256<<10)
	return c
}

// serve runs the handshake and then, if it chose an export, transmission.
func (c *conn) serve(ctx context.Context) {
	defer c.close()
	c.raw.SetDeadline(time.Now().Add(c.s.hsTimeout))
	stop := context.AfterFunc(ctx, func() { c.raw.SetDeadline(time.Now()) })
	err := c.handshake(ctx)
	stopped := stop()
	if err != nil {
		if !errors.Is(err, errHangup) && !errors.Is(err, io.EOF) {
			c.log.Debug("nbd: handshake ended", "err", err)
		}
		return
	}
	if !stopped || ctx.Err() != nil {
		return
	}
	c.raw.SetDeadline(time.Time{})
	c.transmit(ctx)
}

// close ends the connection. Over TLS it first ends the TLS session
// (close_notify), which the spec requires after NBD_CMD_DISC and asks for
// before any disconnect; crypto/tls gives that write 5 seconds, and none
// after a failed write.
func (c *conn) close() {
	if c.sock != nil {
		c.nc.Close()
		return
	}
	c.raw.Close()
}

// refuse counts and logs an access refusal.
func (c *conn) refuse(reason string, args ...any) {
	c.s.refused.Add(1)
	c.log.Warn("nbd: refused: "+reason, append(args, "identity", c.ids)...)
}

// enter starts transmission on exp with access, sizing the socket's
// buffers for it.
func (c *conn) enter(exp *Export, access Access, name string) {
	c.exp = exp
	c.readOnly = access != ReadWrite || exp.ReadOnly
	c.size = exp.Backend.Size()
	if c.metaExport != name {
		c.metaAlloc = false
	}
	c.log = c.log.With("export", name)
	minRTT, sndbuf, err := sizeSendBuffer(c.raw)
	if err != nil {
		c.log.Warn("nbd: send buffer left to the kernel", "err", err)
	}
	var unsent int
	if c.sock != nil {
		if unsent, err = limitUnsent(c.raw); err != nil {
			c.log.Warn("nbd: unsent data left unlimited", "err", err)
		}
	}
	c.log.Info("nbd: transmission", "identity", c.ids, "readonly", c.readOnly, "structured", c.structured,
		"min_rtt", minRTT, "send_buffer", sndbuf, "unsent_limit", unsent)
}
