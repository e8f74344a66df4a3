package nbd

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"context"

	"github.com/dataembassy/embassy/storage"
)

// request is one transmission-phase request being served.
type request struct {
	cookie uint64
	off    uint64
	length uint32
	typ    uint16
	flags  uint16
	data   []byte // WRITE payload, from getBuf
	errno  uint32 // set by the reader when the request is refused up front
}

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

// Known command flags per command; anything else is EINVAL.
var allowedFlags = map[uint16]uint16{
	cmdRead:        cmdFlagDF,
	cmdWrite:       cmdFlagFUA,
	cmdFlush:       0,
	cmdTrim:        cmdFlagFUA,
	cmdCache:       0,
	cmdWriteZeroes: cmdFlagFUA | cmdFlagNoHole | cmdFlagFastZero,
	cmdBlockStatus: cmdFlagReqOne,
}

// noHoleZeroer is implemented by backends whose WriteZeroes deallocates
// but that can also zero keeping the range allocated (NBD_CMD_FLAG_NO_HOLE).
type noHoleZeroer interface {
	WriteZeroesNoHole(off, length int64) error
}

// cacher is implemented by backends that can prefetch (NBD_CMD_CACHE).
type cacher interface {
	Cache(off, length int64) error
}

func (c *conn) transmit(ctx context.Context) {
	depth := c.s.depth
	work := make(chan *request)
	replies := make(chan *reply, depth)
	sem := make(chan struct{}, depth)
	var dirty atomic.Bool

	var workers sync.WaitGroup
	for i := 0; i < depth; i++ {
		workers.Add(1)
		go func() {
			defer workers.Done()
			for r := range work {
				replies <- c.handle(r, &dirty)
			}
		}()
	}
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		c.writeLoop(replies, sem)
	}()

	// On shutdown, stop reading new requests; what is in flight is drained.
	stop := context.AfterFunc(ctx, func() { c.raw.SetReadDeadline(time.Now()) })
	defer stop()

	var hdr [requestHeaderLen]byte
	for {
		if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !isTimeout(err) {
				c.log.Info("nbd: connection read failed", "err", err)
			}
			break
		}
		if binary.BigEndian.Uint32(hdr[0:]) != magicRequest {
			c.log.Warn("nbd: bad request magic, disconnecting")
			break
		}
		r := &request{
			flags:  binary.BigEndian.Uint16(hdr[4:]),
			typ:    binary.BigEndian.Uint16(hdr[6:]),
			cookie: binary.BigEndian.Uint64(hdr[8:]),
			off:    binary.BigEndian.Uint64(hdr[16:]),
			length: binary.BigEndian.Uint32(hdr[24:]),
		}
		if r.typ == cmdDisc {
			break
		}
		sem <- struct{}{}
		if r.typ == cmdWrite {
			if r.length > c.s.maxPay {
				// Consume the payload so the stream stays in step.
				if _, err := io.CopyN(io.Discard, c.br, int64(r.length)); err != nil {
					<-sem
					break
				}
				r.errno = errInval
			} else {
				r.data = getBuf(int(r.length))
				if _, err := io.ReadFull(c.br, r.data); err != nil {
					putBuf(r.data)
					<-sem
					c.log.Info("nbd: connection lost in write payload", "err", err)
					break
				}
			}
		}
		work <- r
	}
	close(work)
	workers.Wait()
	close(replies)
	<-writerDone
	if dirty.Load() {
		if err := c.exp.Backend.Flush(); err != nil {
			c.log.Error("nbd: flush at disconnect failed", "err", err)
		}
	}
	c.log.Info("nbd: disconnected")
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// handle serves one request; it runs on a worker goroutine.
func (c *conn) handle(r *request, dirty *atomic.Bool) *reply {
	c.s.requests.Add(1)
	rep := &reply{cookie: r.cookie}
	if r.typ == cmdRead || r.typ == cmdBlockStatus {
		rep.kind = kindRead // errors on these go in an error chunk
	}
	fail := func(errno uint32, msg string) *reply {
		putBuf(r.data)
		rep.errno, rep.msg = errno, msg
		return rep
	}
	allowed, known := allowedFlags[r.typ]
	if !known {
		return fail(errInval, "unknown command")
	}
	if r.flags&^allowed != 0 {
		return fail(errInval, "unsupported command flags")
	}
	if r.flags&cmdFlagDF != 0 && !c.structured {
		return fail(errInval, "DF without structured replies")
	}
	if r.errno != 0 {
		return fail(r.errno, "request too large")
	}
	if r.typ == cmdRead && r.length > c.s.maxPay {
		if r.flags&cmdFlagDF != 0 {
			return fail(errOverflow, "read too large for one chunk")
		}
		return fail(errInval, "read larger than maximum payload")
	}
	end := r.off + uint64(r.length)
	inRange := end >= r.off && end <= uint64(c.size)
	writes := r.typ == cmdWrite || r.typ == cmdTrim || r.typ == cmdWriteZeroes
	if writes && c.readOnly {
		return fail(errPerm, "export is read-only")
	}
	if !inRange {
		if r.typ == cmdWrite || r.typ == cmdWriteZeroes {
			return fail(errNoSpc, "beyond end of export")
		}
		return fail(errInval, "beyond end of export")
	}
	off, n := int64(r.off), int64(r.length)
	be := c.exp.Backend
	var err error
	switch r.typ {
	case cmdRead:
		rep.off = r.off
		rep.df = r.flags&cmdFlagDF != 0
		if n == 0 {
			return rep
		}
		buf := getBuf(int(n))
		var got int
		got, err = be.ReadAt(buf, off)
		// Only io.EOF with a full buffer is success: any other error voids
		// the data, whatever count came with it.
		if err == io.EOF && got == len(buf) {
			err = nil
		} else if err == nil && got != len(buf) {
			err = io.ErrUnexpectedEOF
		}
		if err != nil {
			putBuf(buf)
			break
		}
		rep.data = buf
		return rep
	case cmdWrite:
		_, err = be.WriteAt(r.data, off)
		putBuf(r.data)
		r.data = nil
		dirty.Store(true)
	case cmdFlush:
		if !c.readOnly {
			err = be.Flush()
		}
	case cmdTrim:
		if n > 0 {
			err = be.Trim(off, n)
			dirty.Store(true)
		}
	case cmdWriteZeroes:
		if n > 0 {
			if nh, ok := be.(noHoleZeroer); ok && r.flags&cmdFlagNoHole != 0 {
				err = nh.WriteZeroesNoHole(off, n)
			} else {
				err = be.WriteZeroes(off, n)
			}
			if errors.Is(err, errors.ErrUnsupported) {
				if r.flags&cmdFlagFastZero != 0 {
					return fail(errNotSup, "cannot zero quickly")
				}
				err = writeZeros(be, off, n)
			}
			dirty.Store(true)
		}
	case cmdCache:
		if ca, ok := be.(cacher); ok && n > 0 {
			err = ca.Cache(off, n)
		}
	case cmdBlockStatus:
		if !c.structured || !c.metaAlloc {
			return fail(errInval, "no metadata context negotiated")
		}
		if n == 0 {
			return fail(errInval, "zero-length block status")
		}
		var ext []storage.Extent
		ext, err = be.BlockStatus(off, n)
		if err == nil {
			rep.kind = kindStatus
			rep.descs = descriptors(ext, off, n, r.flags&cmdFlagReqOne != 0)
			return rep
		}
	}
	if err == nil && r.flags&cmdFlagFUA != 0 {
		err = be.Flush()
	}
	if err != nil {
		errno := c.errno(err, r)
		return fail(errno, "")
	}
	return rep
}

var zeroPage [1 << 20]byte

// writeZeros writes zeros for a backend that cannot zero quickly.
func writeZeros(be Backend, off, n int64) error {
	for n > 0 {
		k := min(n, int64(len(zeroPage)))
		if _, err := be.WriteAt(zeroPage[:k], off); err != nil {
			return err
		}
		off += k
		n -= k
	}
	return nil
}

// errno maps a backend error to an NBD error, counting and logging
// integrity failures.
func (c *conn) errno(err error, r *request) uint32 {
	switch {
	case errors.Is(err, storage.ErrIntegrity):
		c.s.integrity.Add(1)
		c.log.Error("nbd: integrity error", "cmd", r.typ, "offset", r.off, "length", r.length, "err", err)
		return errIO
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT), errors.Is(err, syscall.EFBIG):
		return errNoSpc
	case errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EROFS):
		return errPerm
	case errors.Is(err, syscall.ENOMEM):
		return errNoMem
	}
	c.log.Error("nbd: request failed", "cmd", r.typ, "offset", r.off, "length", r.length, "err", err)
	return errIO
}

// descriptors turns backend extents into base:allocation descriptors that
// start at off, cover at most n bytes, and merge equal neighbours. Gaps or
// overlaps in what the backend returned are reported as data (status 0),
// which is always safe.
func descriptors(ext []storage.Extent, off, n int64, one bool) []uint32 {
	var out []uint32
	pos, end := off, off+n
	add := func(length int64, status uint32) {
		for length > 0 {
			k := min(length, 1<<32-4096)
			if l := len(out); l >= 2 && out[l-1] == status && int64(out[l-2])+k < 1<<32 {
				out[l-2] += uint32(k)
			} else {
				out = append(out, uint32(k), status)
			}
			length -= k
		}
	}
	for _, e := range ext {
		if pos >= end || len(out) >= 2<<16 {
			break
		}
		eEnd := e.Offset + e.Length
		if e.Length <= 0 || eEnd <= pos {
			continue
		}
		if e.Offset > pos {
			add(min(e.Offset, end)-pos, 0)
			pos = min(e.Offset, end)
			if pos >= end {
				break
			}
		}
		var st uint32
		if e.Zero {
			st = stateHole | stateZero
		}
		k := min(eEnd, end) - pos
		add(k, st)
		pos += k
	}
	if len(out) == 0 {
		add(n, 0)
	}
	if one {
		out = out[:2]
	}
	return out
}

// writeLoop is the connection's single writer: it sends replies in the
// order workers finish them and flushes when no more are queued.
func (c *conn) writeLoop(replies <-chan *reply, sem <-chan struct{}) {
	var werr error
	for rep := range replies {
		if werr == nil {
			werr = c.writeReply(rep)
			if werr == nil && len(replies) == 0 {
				// Let workers about to finish queue their replies, so
				// they share one write system call.
				runtime.Gosched()
				if len(replies) == 0 {
					werr = c.bw.Flush()
				}
			}
			if werr != nil {
				c.log.Info("nbd: write failed, closing", "err", werr)
				c.raw.Close() // unblocks the reader; the rest is drained unsent
			}
		}
		putBuf(rep.data)
		<-sem
	}
}

func (c *conn) writeReply(rep *reply) error {
	var h [20]byte
	if !c.structured || (rep.kind == kindPlain) {
		binary.BigEndian.PutUint32(h[0:], magicSimple)
		binary.BigEndian.PutUint32(h[4:], rep.errno)
		binary.BigEndian.PutUint64(h[8:], rep.cookie)
		if _, err := c.bw.Write(h[:16]); err != nil {
			return err
		}
		if rep.errno == 0 && rep.data != nil {
			_, err := c.bw.Write(rep.data)
			return err
		}
		return nil
	}
	chunk := func(flags, typ uint16, length int) error {
		binary.BigEndian.PutUint32(h[0:], magicStruct)
		binary.BigEndian.PutUint16(h[4:], flags)
		binary.BigEndian.PutUint16(h[6:], typ)
		binary.BigEndian.PutUint64(h[8:], rep.cookie)
		binary.BigEndian.PutUint32(h[16:], uint32(length))
		_, err := c.bw.Write(h[:])
		return err
	}
	if rep.errno != 0 {
		msg := rep.msg
		if err := chunk(replyFlagDone, chunkError, 6+len(msg)); err != nil {
			return err
		}
		var b [6]byte
		binary.BigEndian.PutUint32(b[0:], rep.errno)
		binary.BigEndian.PutUint16(b[4:], uint16(len(msg)))
		c.bw.Write(b[:])
		_, err := c.bw.WriteString(msg)
		return err
	}
	if rep.kind == kindStatus {
		if err := chunk(replyFlagDone, chunkBlockStatus, 4+4*len(rep.descs)); err != nil {
			return err
		}
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], metaAllocationID)
		c.bw.Write(b[:])
		for _, d := range rep.descs {
			binary.BigEndian.PutUint32(b[:], d)
			if _, err := c.bw.Write(b[:]); err != nil {
				return err
			}
		}
		return nil
	}
	// A read: data and hole chunks, the last one flagged done.
	if len(rep.data) == 0 {
		return chunk(replyFlagDone, chunkNone, 0)
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
			if err := chunk(fl, chunkOffsetHole, 12); err != nil {
				return err
			}
			binary.BigEndian.PutUint32(b[8:], uint32(sg[1]-sg[0]))
			if _, err := c.bw.Write(b[:12]); err != nil {
				return err
			}
			continue
		}
		if err := chunk(fl, chunkOffsetData, 8+sg[1]-sg[0]); err != nil {
			return err
		}
		c.bw.Write(b[:8])
		if _, err := c.bw.Write(rep.data[sg[0]:sg[1]]); err != nil {
			return err
		}
	}
	return nil
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
		add(pos, pos+preferredBlock, bytes.Equal(blk, zeroPage[:preferredBlock]))
		pos += preferredBlock
	}
	add(pos, len(data), false)
	return segs, holes
}
