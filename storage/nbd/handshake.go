package nbd

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sort"
	"time"
)

// maxOptionLen bounds an option's data. Real options are a few hundred
// bytes; a longer one is discarded and refused, a huge one disconnects.
const (
	maxOptionLen     = 64 << 10
	maxDiscardOption = 16 << 20
	maxMetaQueries   = 128
)

// errHangup ends the handshake without entering transmission.
var errHangup = errors.New("nbd: handshake ended")

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
	inline   inliner // the backend, if it is one: see transmit
}

func newConn(s *Server, nc net.Conn) *conn {
	nc = newRawSocket(nc)
	c := &conn{s: s, raw: nc, nc: nc}
	c.log = s.log.With("remote", nc.RemoteAddr().String())
	c.br = bufio.NewReaderSize(nc, 64<<10)
	c.bw = bufio.NewWriterSize(nc, 256<<10)
	return c
}

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

func (c *conn) handshake(ctx context.Context) error {
	var hdr [18]byte
	binary.BigEndian.PutUint64(hdr[0:], magicNBD)
	binary.BigEndian.PutUint64(hdr[8:], magicIHaveOpt)
	binary.BigEndian.PutUint16(hdr[16:], flagFixedNewstyle|flagNoZeroes)
	if _, err := c.bw.Write(hdr[:]); err != nil {
		return err
	}
	if err := c.bw.Flush(); err != nil {
		return err
	}
	var cf [4]byte
	if _, err := io.ReadFull(c.br, cf[:]); err != nil {
		return err
	}
	flags := binary.BigEndian.Uint32(cf[:])
	if flags&^(cflagFixedNewstyle|cflagNoZeroes) != 0 || flags&cflagFixedNewstyle == 0 {
		return fmt.Errorf("nbd: unsupported client flags %#x", flags)
	}
	c.noZeroes = flags&cflagNoZeroes != 0

	for {
		var oh [16]byte
		if _, err := io.ReadFull(c.br, oh[:]); err != nil {
			return err
		}
		if binary.BigEndian.Uint64(oh[0:]) != magicIHaveOpt {
			return errors.New("nbd: bad option magic")
		}
		opt := binary.BigEndian.Uint32(oh[8:])
		n := binary.BigEndian.Uint32(oh[12:])
		if n > maxOptionLen {
			if n > maxDiscardOption {
				return fmt.Errorf("nbd: option %d of %d bytes", opt, n)
			}
			if _, err := io.CopyN(io.Discard, c.br, int64(n)); err != nil {
				return err
			}
			if err := c.reply(opt, repErrTooBig, []byte("option too long")); err != nil {
				return err
			}
			continue
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(c.br, data); err != nil {
			return err
		}
		done, err := c.option(ctx, opt, data)
		if err != nil || done {
			if err == nil {
				err = c.bw.Flush()
			}
			return err
		}
		if err := c.bw.Flush(); err != nil {
			return err
		}
	}
}

// reply queues one option reply.
func (c *conn) reply(opt, typ uint32, data []byte) error {
	var h [20]byte
	binary.BigEndian.PutUint64(h[0:], magicOptReply)
	binary.BigEndian.PutUint32(h[8:], opt)
	binary.BigEndian.PutUint32(h[12:], typ)
	binary.BigEndian.PutUint32(h[16:], uint32(len(data)))
	if _, err := c.bw.Write(h[:]); err != nil {
		return err
	}
	_, err := c.bw.Write(data)
	return err
}

func (c *conn) replyErr(opt, typ uint32, msg string) error {
	return c.reply(opt, typ, []byte(msg))
}

// option handles one option; done reports that transmission starts.
func (c *conn) option(ctx context.Context, opt uint32, data []byte) (done bool, err error) {
	if c.s.tlsConfig != nil && !c.tlsDone {
		switch opt {
		case optStartTLS, optAbort:
		case optExportName:
			c.refuse("EXPORT_NAME before TLS")
			return false, errHangup
		default:
			c.refuse("option before TLS", "option", opt)
			return false, c.replyErr(opt, repErrTLSReqd, "TLS required")
		}
	}
	switch opt {
	case optExportName:
		exp, access, code, msg := c.lookup(string(data))
		if code != 0 {
			c.log.Warn("nbd: EXPORT_NAME refused", "export", string(data), "reason", msg)
			return false, errHangup
		}
		c.enter(exp, access, string(data))
		var b [8 + 2 + 124]byte
		binary.BigEndian.PutUint64(b[0:], uint64(c.size))
		binary.BigEndian.PutUint16(b[8:], c.transmissionFlags())
		out := b[:]
		if c.noZeroes {
			out = b[:10]
		}
		_, err := c.bw.Write(out)
		return true, err

	case optAbort:
		c.reply(opt, repAck, nil)
		c.bw.Flush()
		return false, errHangup

	case optList:
		if len(data) != 0 {
			return false, c.replyErr(opt, repErrInvalid, "LIST takes no data")
		}
		names := make([]string, 0, len(c.s.exports))
		for name := range c.s.exports {
			if c.s.access(c.ids, name) != 0 {
				names = append(names, name)
			}
		}
		sort.Strings(names)
		for _, name := range names {
			e := c.s.exports[name]
			b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
			b = append(b, name...)
			b = append(b, e.Description...)
			if err := c.reply(opt, repServer, b); err != nil {
				return false, err
			}
		}
		return false, c.reply(opt, repAck, nil)

	case optStartTLS:
		if len(data) != 0 {
			return false, c.replyErr(opt, repErrInvalid, "STARTTLS takes no data")
		}
		if c.s.tlsConfig == nil {
			return false, c.replyErr(opt, repErrUnsup, "TLS not configured")
		}
		if c.tlsDone {
			return false, c.replyErr(opt, repErrInvalid, "TLS already negotiated")
		}
		return false, c.startTLS(ctx)

	case optInfo, optGo:
		name, reqs, ok := parseInfo(data)
		if !ok {
			return false, c.replyErr(opt, repErrInvalid, "malformed INFO/GO request")
		}
		exp, access, code, msg := c.lookup(name)
		if code != 0 {
			return false, c.replyErr(opt, code, msg)
		}
		size := exp.Backend.Size()
		flags := c.flagsFor(exp, access)
		var b []byte
		b = binary.BigEndian.AppendUint16(b, infoExport)
		b = binary.BigEndian.AppendUint64(b, uint64(size))
		b = binary.BigEndian.AppendUint16(b, flags)
		if err := c.reply(opt, repInfo, b); err != nil {
			return false, err
		}
		for _, r := range reqs {
			switch r {
			case infoName:
				b = binary.BigEndian.AppendUint16(b[:0], infoName)
				b = append(b, name...)
			case infoDescription:
				if exp.Description == "" {
					continue
				}
				b = binary.BigEndian.AppendUint16(b[:0], infoDescription)
				b = append(b, exp.Description...)
			default:
				continue
			}
			if err := c.reply(opt, repInfo, b); err != nil {
				return false, err
			}
		}
		// Block sizes are sent whether asked or not: they tell the client
		// our maximum payload.
		b = binary.BigEndian.AppendUint16(b[:0], infoBlockSize)
		b = binary.BigEndian.AppendUint32(b, 1)
		b = binary.BigEndian.AppendUint32(b, preferredBlock)
		b = binary.BigEndian.AppendUint32(b, c.s.maxPay)
		if err := c.reply(opt, repInfo, b); err != nil {
			return false, err
		}
		if err := c.reply(opt, repAck, nil); err != nil {
			return false, err
		}
		if opt == optInfo {
			return false, nil
		}
		c.enter(exp, access, name)
		return true, nil

	case optStructuredReply:
		if len(data) != 0 {
			return false, c.replyErr(opt, repErrInvalid, "STRUCTURED_REPLY takes no data")
		}
		c.structured = true
		return false, c.reply(opt, repAck, nil)

	case optListMetaContext, optSetMetaContext:
		set := opt == optSetMetaContext
		if set {
			c.metaExport, c.metaAlloc = "", false
		}
		if !c.structured {
			return false, c.replyErr(opt, repErrInvalid, "structured replies not negotiated")
		}
		name, queries, ok := parseMeta(data)
		if !ok {
			return false, c.replyErr(opt, repErrInvalid, "malformed meta context request")
		}
		if len(queries) > maxMetaQueries {
			return false, c.replyErr(opt, repErrTooBig, "too many queries")
		}
		if _, _, code, msg := c.lookup(name); code != 0 {
			return false, c.replyErr(opt, code, msg)
		}
		match := false
		for _, q := range queries {
			if q == metaAllocation || (!set && q == "base:") {
				match = true
			}
		}
		if !set && len(queries) == 0 {
			match = true
		}
		if match {
			id := uint32(0)
			if set {
				id = metaAllocationID
				c.metaExport, c.metaAlloc = name, true
			}
			b := binary.BigEndian.AppendUint32(nil, id)
			b = append(b, metaAllocation...)
			if err := c.reply(opt, repMetaContext, b); err != nil {
				return false, err
			}
		}
		return false, c.reply(opt, repAck, nil)
	}
	return false, c.replyErr(opt, repErrUnsup, "option not supported")
}

// lookup authorizes access to the named export. A client without a grant
// gets ERR_POLICY whether or not the export exists, so names it may not
// use are not revealed.
func (c *conn) lookup(name string) (*Export, Access, uint32, string) {
	access := c.s.access(c.ids, name)
	if access == 0 {
		c.refuse("no grant for export", "export", name)
		return nil, 0, repErrPolicy, "no grant for this export"
	}
	exp, ok := c.s.exports[name]
	if !ok {
		return nil, 0, repErrUnknown, "no such export"
	}
	if exp.ReadOnly {
		access = ReadOnly
	}
	return exp, access, 0, ""
}

func (c *conn) flagsFor(exp *Export, access Access) uint16 {
	f := uint16(tflagHasFlags | tflagSendFlush | tflagSendFUA | tflagSendTrim |
		tflagSendWriteZeroes | tflagSendCache | tflagSendFastZero)
	if c.structured {
		f |= tflagSendDF
	}
	if access != ReadWrite || exp.ReadOnly {
		f |= tflagReadOnly
	}
	if exp.MultiConn {
		f |= tflagCanMultiConn
	}
	return f
}

func (c *conn) transmissionFlags() uint16 {
	a := ReadWrite
	if c.readOnly {
		a = ReadOnly
	}
	return c.flagsFor(c.exp, a)
}

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

func (c *conn) startTLS(ctx context.Context) error {
	if err := c.reply(optStartTLS, repAck, nil); err != nil {
		return err
	}
	if err := c.bw.Flush(); err != nil {
		return err
	}
	if c.br.Buffered() != 0 {
		// The client sent bytes before seeing our ACK: they were not
		// protected by TLS, so we cannot use them.
		c.refuse("data sent before TLS handshake")
		return errHangup
	}
	sock := newTLSSocket(c.raw)
	tc := tls.Server(sock, c.s.tlsConfig)
	if err := tc.HandshakeContext(ctx); err != nil {
		c.refuse("TLS handshake failed", "err", err)
		return errHangup
	}
	st := tc.ConnectionState()
	if len(st.PeerCertificates) == 0 {
		c.refuse("no client certificate")
		return errHangup
	}
	leaf := st.PeerCertificates[0]
	c.ids = c.ids[:0]
	if leaf.Subject.CommonName != "" {
		c.ids = append(c.ids, leaf.Subject.CommonName)
	}
	for _, u := range leaf.URIs {
		c.ids = append(c.ids, u.String())
	}
	c.tlsDone = true
	// Nothing negotiated before TLS carries over.
	c.structured, c.metaExport, c.metaAlloc = false, "", false
	c.nc, c.sock = tc, sock
	c.br = bufio.NewReaderSize(tc, 64<<10)
	c.bw = bufio.NewWriterSize(tc, 256<<10)
	c.log.Info("nbd: TLS established", "identity", c.ids)
	return nil
}

// parseInfo parses NBD_OPT_INFO/GO data.
func parseInfo(d []byte) (name string, reqs []uint16, ok bool) {
	if len(d) < 4 {
		return "", nil, false
	}
	n := binary.BigEndian.Uint32(d)
	d = d[4:]
	if uint64(n)+2 > uint64(len(d)) {
		return "", nil, false
	}
	name, d = string(d[:n]), d[n:]
	nr := int(binary.BigEndian.Uint16(d))
	d = d[2:]
	if len(d) != 2*nr {
		return "", nil, false
	}
	for i := 0; i < nr; i++ {
		reqs = append(reqs, binary.BigEndian.Uint16(d[2*i:]))
	}
	return name, reqs, true
}

// parseMeta parses NBD_OPT_LIST/SET_META_CONTEXT data.
func parseMeta(d []byte) (name string, queries []string, ok bool) {
	if len(d) < 4 {
		return "", nil, false
	}
	n := binary.BigEndian.Uint32(d)
	d = d[4:]
	if uint64(n)+4 > uint64(len(d)) {
		return "", nil, false
	}
	name, d = string(d[:n]), d[n:]
	nq := binary.BigEndian.Uint32(d)
	d = d[4:]
	for i := uint32(0); i < nq; i++ {
		if len(d) < 4 {
			return "", nil, false
		}
		l := binary.BigEndian.Uint32(d)
		d = d[4:]
		if uint64(l) > uint64(len(d)) {
			return "", nil, false
		}
		queries = append(queries, string(d[:l]))
		d = d[l:]
	}
	if len(d) != 0 {
		return "", nil, false
	}
	return name, queries, true
}
