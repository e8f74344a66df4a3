package nbd

import (
	"bytes"
	"encoding/binary"
)

// This file encodes transmission replies: simple replies, and structured
// replies' data, hole, block status and error chunks.

// reply kinds.
const (
	kindPlain = iota
	kindRead
	kindStatus
)

// reply is what the single writer goroutine sends for one request.
type reply struct {
	cookie uint64
	errno  uint32
	msg    string
	kind   int
	off    uint64
	data   []byte   // read data, from getBuf
	descs  []uint32 // block status (length, flags) pairs
	df     bool     // read must be one chunk
}

// writeReply appends rep to w.
func (c *conn) writeReply(w *replyWriter, rep *reply) {
	var h [20]byte
	if !c.structured || (rep.kind == kindPlain) {
		binary.BigEndian.PutUint32(h[0:], magicSimple)
		binary.BigEndian.PutUint32(h[4:], rep.errno)
		binary.BigEndian.PutUint64(h[8:], rep.cookie)
		w.copy(h[:16])
		if rep.errno == 0 && rep.data != nil {
			w.ref(rep.data)
		}
		return
	}
	chunk := func(flags, typ uint16, length int) {
		binary.BigEndian.PutUint32(h[0:], magicStruct)
		binary.BigEndian.PutUint16(h[4:], flags)
		binary.BigEndian.PutUint16(h[6:], typ)
		binary.BigEndian.PutUint64(h[8:], rep.cookie)
		binary.BigEndian.PutUint32(h[16:], uint32(length))
		w.copy(h[:])
	}
	if rep.errno != 0 {
		msg := rep.msg
		chunk(replyFlagDone, chunkError, 6+len(msg))
		var b [6]byte
		binary.BigEndian.PutUint32(b[0:], rep.errno)
		binary.BigEndian.PutUint16(b[4:], uint16(len(msg)))
		w.copy(b[:])
		w.copy([]byte(msg))
		return
	}
	if rep.kind == kindStatus {
		chunk(replyFlagDone, chunkBlockStatus, 4+4*len(rep.descs))
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], metaAllocationID)
		w.copy(b[:])
		for _, d := range rep.descs {
			binary.BigEndian.PutUint32(b[:], d)
			w.copy(b[:])
		}
		return
	}
	// A read: data and hole chunks, the last one flagged done.
	if len(rep.data) == 0 {
		chunk(replyFlagDone, chunkNone, 0)
		return
	}
	var segs [][2]int // [start, end) with sign of hole encoded by next slice
	var holes []bool
	if rep.df {
		segs, holes = [][2]int{{0, len(rep.data)}}, []bool{false}
	} else {
		segs, holes = splitHoles(rep.data, rep.off)
	}
	for i, sg := range segs {
		var fl uint16
		if i == len(segs)-1 {
			fl = replyFlagDone
		}
		var b [12]byte
		binary.BigEndian.PutUint64(b[:], rep.off+uint64(sg[0]))
		if holes[i] {
			chunk(fl, chunkOffsetHole, 12)
			binary.BigEndian.PutUint32(b[8:], uint32(sg[1]-sg[0]))
			w.copy(b[:12])
			continue
		}
		chunk(fl, chunkOffsetData, 8+sg[1]-sg[0])
		w.copy(b[:8])
		w.ref(rep.data[sg[0]:sg[1]])
	}
}

// splitHoles cuts a read buffer into data and hole segments. Only whole
// 4 KiB blocks (aligned in the export) of zeros become holes.
func splitHoles(data []byte, off uint64) ([][2]int, []bool) {
	var segs [][2]int
	var holes []bool
	add := func(s, e int, hole bool) {
		if s == e {
			return
		}
		if l := len(segs); l > 0 && holes[l-1] == hole {
			segs[l-1][1] = e
			return
		}
		segs = append(segs, [2]int{s, e})
		holes = append(holes, hole)
	}
	pos := 0
	// The unaligned head is data.
	if a := int((preferredBlock - off%preferredBlock) % preferredBlock); a > 0 {
		a = min(a, len(data))
		add(0, a, false)
		pos = a
	}
	for pos+preferredBlock <= len(data) {
		blk := data[pos : pos+preferredBlock]
		add(pos, pos+preferredBlock, bytes.Equal(blk, zeroMiB[:preferredBlock]))
		pos += preferredBlock
	}
	add(pos, len(data), false)
	return segs, holes
}
