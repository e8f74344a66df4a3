package nbd

import "encoding/binary"

// This file answers NBD_OPT_INFO and NBD_OPT_GO, and decides which export
// a client may open with what access and transmission flags.

// infoGo answers NBD_OPT_INFO and NBD_OPT_GO; done reports that GO
// started transmission.
func (c *conn) infoGo(opt uint32, data []byte) (done bool, err error) {
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

// flagsFor is the transmission flags of exp for a client with access.
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

// transmissionFlags is the flags of the export entered.
func (c *conn) transmissionFlags() uint16 {
	a := ReadWrite
	if c.readOnly {
		a = ReadOnly
	}
	return c.flagsFor(c.exp, a)
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
