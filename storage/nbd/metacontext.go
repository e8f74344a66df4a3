package nbd

import "encoding/binary"

// This file answers NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT:
// base:allocation is the one context served.

// metaContext answers LIST_META_CONTEXT and SET_META_CONTEXT.
func (c *conn) metaContext(opt uint32, data []byte) error {
	set := opt == optSetMetaContext
	if set {
		c.metaExport, c.metaAlloc = "", false
	}
	if !c.structured {
		return c.replyErr(opt, repErrInvalid, "structured replies not negotiated")
	}
	name, queries, ok := parseMeta(data)
	if !ok {
		return c.replyErr(opt, repErrInvalid, "malformed meta context request")
	}
	if len(queries) > maxMetaQueries {
		return c.replyErr(opt, repErrTooBig, "too many queries")
	}
	if _, _, code, msg := c.lookup(name); code != 0 {
		return c.replyErr(opt, code, msg)
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
			return err
		}
	}
	return c.reply(opt, repAck, nil)
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
