package nbd

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
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

// transmit serves requests until the client disconnects or ctx ends.
//
// One reader goroutine (this one) reads requests. A request the backend
// can serve without waiting for a device (an inliner says which: a cached
// read, a whole-page write into the page cache) the reader serves itself
// and replies to: no goroutine hand-off, which on a loaded 2-core machine
// costs more CPU than the copy of a 1 MiB payload. Any other request goes
// to one of QueueDepth workers, which serves it and writes its reply
// itself (under writeMu): no separate writer goroutine, so one hand-off
// per request, and a slow request never holds up the reader.
// Replies go out in the order they finish, which the protocol allows;
// they never interleave because each is appended whole under writeMu. A
// worker flushes unless another finished reply waits for writeMu (that
// worker flushes then), and the reader does not flush while the next
// request is already in its buffer (it serves that one next, or flushes
// before handing it to a worker), so replies that finish together share
// one write system call. (Workers taking turns reading, as nbdkit's threads do,
// cost more CPU per request here: every turn wakes a parked goroutine.)
func (c *conn) transmit(ctx context.Context) {
	t := &transmitter{c: c, out: newReplyWriter(c.nc, c.nc == c.raw, c.sock)}
	c.inline, _ = c.exp.Backend.(inliner)
	if err := c.bw.Flush(); err != nil { // the handshake flushes; be sure
		c.log.Info("nbd: write failed", "err", err)
		return
	}
	// On shutdown, stop reading new requests; what is in flight is drained.
	stop := context.AfterFunc(ctx, func() { c.raw.SetReadDeadline(time.Now()) })
	defer stop()

	work := make(chan *request)
	// sem bounds requests in flight, from reading its header to sending
	// its reply, to QueueDepth (so also the write payloads held).
	sem := make(chan struct{}, c.s.depth)
	var workers sync.WaitGroup
	for i := 0; i < c.s.depth; i++ {
		workers.Add(1)
		go func() {
			defer workers.Done()
			var rep reply
			for r := range work {
				c.handle(r, &rep, &t.dirty, false)
				t.send(&rep, true)
				<-sem
			}
		}()
	}
	var rep reply      // for requests the reader serves itself
	unflushed := false // the reader left replies in t.out for a later flush
	for {
		r := new(request)
		sem <- struct{}{}
		if !c.readRequest(r) {
			<-sem
			break
		}
		if c.inline != nil && c.handle(r, &rep, &t.dirty, true) {
			// While the next request is already buffered the reader goes on
			// to serve it without blocking, so its reply can wait and share
			// this one's system call.
			unflushed = c.requestBuffered()
			t.send(&rep, !unflushed)
			<-sem
			continue
		}
		if unflushed {
			// A worker may take long; what the reader served goes out now.
			t.flush()
			unflushed = false
		}
		work <- r
	}
	close(work)
	workers.Wait()
	t.flush()
	t.out.release()
	if t.dirty.Load() {
		if err := c.exp.Backend.Flush(); err != nil {
			c.log.Error("nbd: flush at disconnect failed", "err", err)
		}
	}
	c.log.Info("nbd: disconnected")
}

// transmitter is the transmission-phase state shared by a connection's
// workers.
type transmitter struct {
	c     *conn
	dirty atomic.Bool // a write was done since the last flush

	waiting atomic.Int32 // finished replies waiting for (or holding) writeMu
	writeMu sync.Mutex
	out     *replyWriter // under writeMu
	werr    error        // under writeMu: the connection failed
}

// readRequest reads one request header and any WRITE payload.
func (c *conn) readRequest(r *request) bool {
	var hdr [requestHeaderLen]byte
	if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
		if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !isTimeout(err) {
			c.log.Info("nbd: connection read failed", "err", err)
		}
		return false
	}
	if binary.BigEndian.Uint32(hdr[0:]) != magicRequest {
		c.log.Warn("nbd: bad request magic, disconnecting")
		return false
	}
	*r = request{
		flags:  binary.BigEndian.Uint16(hdr[4:]),
		typ:    binary.BigEndian.Uint16(hdr[6:]),
		cookie: binary.BigEndian.Uint64(hdr[8:]),
		off:    binary.BigEndian.Uint64(hdr[16:]),
		length: binary.BigEndian.Uint32(hdr[24:]),
	}
	if r.typ == cmdDisc {
		return false
	}
	if r.typ != cmdWrite {
		return true
	}
	if r.length > c.s.maxPay {
		// Consume the payload so the stream stays in step.
		if _, err := io.CopyN(io.Discard, c.br, int64(r.length)); err != nil {
			return false
		}
		r.errno = errInval
		return true
	}
	// Large payloads bypass c.br's buffer: bufio reads straight into
	// r.data once its buffer is empty.
	r.data = getBuf(int(r.length))
	if _, err := io.ReadFull(c.br, r.data); err != nil {
		putBuf(r.data)
		r.data = nil
		c.log.Info("nbd: connection lost in write payload", "err", err)
		return false
	}
	return true
}

// send appends rep to what goes out next. With flush it is written then
// unless another finished reply is about to be appended (whose sender
// flushes); without, the caller promises a later send or flush. The
// payload buffer goes back to its pool once it has been sent.
func (t *transmitter) send(rep *reply, flush bool) {
	t.waiting.Add(1)
	t.writeMu.Lock()
	others := t.waiting.Add(-1)
	if t.werr == nil {
		t.c.writeReply(t.out, rep)
		t.out.hold(rep.data)
		if (flush && others == 0) || t.out.size >= flushAt {
			t.flushLocked()
		}
	} else {
		putBuf(rep.data)
	}
	t.writeMu.Unlock()
	rep.data = nil
}

// flush writes what was appended.
func (t *transmitter) flush() {
	t.writeMu.Lock()
	if t.werr == nil && t.out.size > 0 {
		t.flushLocked()
	}
	t.writeMu.Unlock()
}

// flushLocked writes what was appended; on failure the connection is
// closed, which also stops the reader.
func (t *transmitter) flushLocked() {
	if err := t.out.flush(); err != nil {
		t.werr = err
		t.c.log.Info("nbd: write failed, closing", "err", err)
		t.c.raw.Close() // unblocks the reader; the rest is dropped unsent
		t.out.release()
	}
}

// requestBuffered reports whether the whole next request, header and any
// write payload, is already in the read buffer, so that reading it will
// not wait for the client.
func (c *conn) requestBuffered() bool {
	n := c.br.Buffered()
	if n < requestHeaderLen {
		return false
	}
	hdr, _ := c.br.Peek(requestHeaderLen)
	if binary.BigEndian.Uint16(hdr[6:]) != cmdWrite {
		return true
	}
	return n-requestHeaderLen >= int(binary.BigEndian.Uint32(hdr[24:]))
}

// flushAt bounds how much reply data is gathered before it is written
// even while more replies are queued.
const flushAt = 1 << 20

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// inliner is implemented by backends that can tell cheaply whether a read
// or write would be served without waiting for a device, so that the
// connection's reader goroutine may serve it itself (File). A backend
// whose requests cost much CPU (the store's cryptography) does not
// implement it: its requests then run in parallel on the workers.
type inliner interface {
	// readAtNoWait reads like ReadAt if it can do so without waiting for a
	// device, and otherwise reads nothing and returns errWouldBlock.
	readAtNoWait(p []byte, off int64) (int, error)
	// writeInline reports whether a write of n bytes at off is expected to
	// complete without waiting for a device.
	writeInline(off, n int64) bool
}

// errWouldBlock is returned by an inliner's readAtNoWait when the read
// would wait for a device.
var errWouldBlock = errors.New("nbd: would block")

// handle serves one request and fills rep. With inline it runs on the
// reader goroutine and serves only what c.inline says needs no device
// wait; it returns false, having done nothing, for a request that must go
// to a worker. Without inline it runs on a worker and always serves.
func (c *conn) handle(r *request, rep *reply, dirty *atomic.Bool, inline bool) bool {
	if inline {
		switch {
		case r.typ == cmdRead:
			// readAtNoWait decides below, before anything is done.
		case r.typ == cmdWrite && r.flags&cmdFlagFUA == 0 && r.errno == 0:
			if !c.inline.writeInline(int64(r.off), int64(r.length)) {
				return false
			}
		default:
			return false
		}
	}
	*rep = reply{cookie: r.cookie}
	served := c.serve1(r, rep, dirty, inline)
	if served {
		c.s.requests.Add(1)
	}
	return served
}

// serve1 does the work of handle.
func (c *conn) serve1(r *request, rep *reply, dirty *atomic.Bool, inline bool) bool {
	if r.typ == cmdRead || r.typ == cmdBlockStatus {
		rep.kind = kindRead // errors on these go in an error chunk
	}
	fail := func(errno uint32, msg string) bool {
		putBuf(r.data)
		r.data = nil
		rep.errno, rep.msg = errno, msg
		return true
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
			return true
		}
		buf := getBuf(int(n))
		var got int
		if inline {
			got, err = c.inline.readAtNoWait(buf, off)
			if errors.Is(err, errWouldBlock) {
				putBuf(buf)
				return false
			}
		} else {
			got, err = be.ReadAt(buf, off)
		}
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
		return true
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
			return true
		}
	}
	if err == nil && r.flags&cmdFlagFUA != 0 {
		err = be.Flush()
	}
	if err != nil {
		errno := c.errno(err, r)
		return fail(errno, "")
	}
	return true
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

// replyWriter gathers replies and writes them with as few system calls
// as it can: on a plain TCP connection one writev per flush, large read
// payloads referenced rather than copied. Over TLS, whose records are
// encrypted copies anyway, it copies all but large payloads into one
// buffer so small replies share records.
type replyWriter struct {
	w       io.Writer
	refMin  int         // payloads at least this long are referenced
	small   []byte      // headers and copied payloads
	mark    int         // small[:mark] is already in bufs
	bufs    net.Buffers // what the next flush writes, in order
	held    [][]byte    // payload buffers to return to their pool after the flush
	size    int         // bytes gathered
	scratch net.Buffers
	sock    *tlsSocket // under w when w is TLS: corked during a flush
}

func newReplyWriter(w io.Writer, plainTCP bool, sock *tlsSocket) *replyWriter {
	rw := &replyWriter{w: w, sock: sock, refMin: 64 << 10, small: make([]byte, 0, 256<<10)}
	if plainTCP {
		rw.refMin = 16 << 10
	}
	return rw
}

// copy appends a copy of b.
func (w *replyWriter) copy(b []byte) {
	w.small = append(w.small, b...)
	w.size += len(b)
}

// ref appends b, by reference if it is large; b must stay unchanged
// until the next flush (hold its buffer).
func (w *replyWriter) ref(b []byte) {
	if len(b) < w.refMin {
		w.copy(b)
		return
	}
	if len(w.small) > w.mark {
		w.bufs = append(w.bufs, w.small[w.mark:len(w.small):len(w.small)])
		w.mark = len(w.small)
	}
	w.bufs = append(w.bufs, b)
	w.size += len(b)
}

// hold keeps the pooled buffer b until the next flush.
func (w *replyWriter) hold(b []byte) {
	if b != nil {
		w.held = append(w.held, b)
	}
}

// flush writes what was gathered and returns held buffers to their pool.
func (w *replyWriter) flush() (err error) {
	if w.sock != nil {
		// Gather the records of this flush into few system calls.
		w.sock.cork()
		defer func() {
			if uerr := w.sock.uncork(); err == nil {
				err = uerr
			}
		}()
	}
	switch {
	case len(w.bufs) == 0:
		if len(w.small) > 0 {
			_, err = w.w.Write(w.small)
		}
	default:
		if len(w.small) > w.mark {
			w.bufs = append(w.bufs, w.small[w.mark:])
		}
		if rs, ok := w.w.(*rawSocket); ok {
			err = rs.writeBuffers(w.bufs)
			break
		}
		// WriteTo consumes its receiver; keep w.bufs' backing array.
		w.scratch = w.bufs
		_, err = w.scratch.WriteTo(w.w)
	}
	clear(w.bufs)
	w.bufs = w.bufs[:0]
	w.small = w.small[:0]
	w.mark, w.size = 0, 0
	w.release()
	return err
}

// release returns held buffers to their pool.
func (w *replyWriter) release() {
	for i, b := range w.held {
		putBuf(b)
		w.held[i] = nil
	}
	w.held = w.held[:0]
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
