package nbd

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// This file holds the transmission phase's request loop: reading requests,
// handing them to workers and sending their replies. dispatch.go decides
// what a request does, reply.go encodes the answer.

// request is one transmission-phase request being served.
type request struct {
	cookie uint64
	off    uint64
	length uint32
	typ    uint16
	flags  uint16
	data   []byte // WRITE payload, from getBuf
	// tooLarge is set by the reader when it discarded a write payload
	// over MaxPayload: the request is refused with EINVAL.
	tooLarge bool
	// start is when the request was read, set only for an Observer.
	start time.Time
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
				c.handle(r, &rep, false)
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
		if c.s.obs != nil {
			r.start = time.Now()
		}
		if c.inline != nil && c.handle(r, &rep, true) {
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
	if c.dirty.Load() {
		if err := c.exp.Backend.Flush(); err != nil {
			c.log.Error("nbd: flush at disconnect failed", "err", err)
		}
	}
	c.log.Info("nbd: disconnected")
}

// transmitter is the transmission-phase state shared by a connection's
// workers.
type transmitter struct {
	c *conn

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
		r.tooLarge = true
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
