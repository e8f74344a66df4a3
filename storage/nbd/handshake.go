package nbd

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"
)

// This file holds the fixed-newstyle handshake: the greeting, the option
// loop and the options that need no more than a line or two. STARTTLS is
// in starttls.go, INFO/GO in info.go, the meta context options in
// metacontext.go.

// maxOptionLen bounds an option's data. Real options are a few hundred
// bytes; a longer one is discarded and refused, a huge one disconnects.
const (
	maxOptionLen     = 64 << 10
	maxDiscardOption = 16 << 20
	maxMetaQueries   = 128
)

// errHangup ends the handshake without entering transmission.
var errHangup = errors.New("nbd: handshake ended")

// handshake greets the client and answers its options until one of them
// starts transmission (nil) or the handshake ends (an error).
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

// replyErr queues an option error reply with msg for the client.
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
		return c.exportName(string(data))
	case optAbort:
		c.reply(opt, repAck, nil)
		c.bw.Flush()
		return false, errHangup
	case optList:
		return false, c.list(data)
	case optStartTLS:
		return false, c.negotiateTLS(ctx, data)
	case optInfo, optGo:
		return c.infoGo(opt, data)
	case optStructuredReply:
		if len(data) != 0 {
			return false, c.replyErr(opt, repErrInvalid, "STRUCTURED_REPLY takes no data")
		}
		c.structured = true
		return false, c.reply(opt, repAck, nil)
	case optListMetaContext, optSetMetaContext:
		return false, c.metaContext(opt, data)
	}
	return false, c.replyErr(opt, repErrUnsup, "option not supported")
}

// exportName answers the old NBD_OPT_EXPORT_NAME, which has no error
// reply: a refused export ends the connection.
func (c *conn) exportName(name string) (done bool, err error) {
	exp, access, code, msg := c.lookup(name)
	if code != 0 {
		c.log.Warn("nbd: EXPORT_NAME refused", "export", name, "reason", msg)
		return false, errHangup
	}
	c.enter(exp, access, name)
	var b [8 + 2 + 124]byte
	binary.BigEndian.PutUint64(b[0:], uint64(c.size))
	binary.BigEndian.PutUint16(b[8:], c.transmissionFlags())
	out := b[:]
	if c.noZeroes {
		out = b[:10]
	}
	_, err = c.bw.Write(out)
	return true, err
}

// list answers NBD_OPT_LIST with the exports the client has a grant for.
func (c *conn) list(data []byte) error {
	if len(data) != 0 {
		return c.replyErr(optList, repErrInvalid, "LIST takes no data")
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
		if err := c.reply(optList, repServer, b); err != nil {
			return err
		}
	}
	return c.reply(optList, repAck, nil)
}
