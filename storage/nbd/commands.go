package nbd

import (
	"errors"
	"io"
)

// This file runs the data commands against the backend once dispatch has
// checked them; block status is in blockstatus.go.

// serveRead reads into a pooled buffer that rep then carries. With inline
// it reads only what needs no device wait, and reports wouldBlock, having
// done nothing, otherwise.
func (c *conn) serveRead(r *request, rep *reply, inline bool) (wouldBlock bool, err error) {
	rep.off = r.off
	rep.df = r.flags&cmdFlagDF != 0
	if r.length == 0 {
		return false, nil
	}
	buf := getBuf(int(r.length))
	var got int
	if inline {
		got, err = c.inline.readAtNoWait(buf, int64(r.off))
		if errors.Is(err, errWouldBlock) {
			putBuf(buf)
			return true, nil
		}
	} else {
		got, err = c.exp.Backend.ReadAt(buf, int64(r.off))
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
		return false, err
	}
	rep.data = buf
	return false, nil
}

// serveWrite writes the request's payload and returns it to its pool.
func (c *conn) serveWrite(r *request) error {
	_, err := c.exp.Backend.WriteAt(r.data, int64(r.off))
	putBuf(r.data)
	r.data = nil
	c.dirty.Store(true)
	return err
}

// serveFlush flushes the backend; on a read-only connection there is
// nothing of this client's to make durable.
func (c *conn) serveFlush() error {
	if c.readOnly {
		return nil
	}
	return c.exp.Backend.Flush()
}

// serveTrim discards the range.
func (c *conn) serveTrim(r *request) error {
	if r.length == 0 {
		return nil
	}
	err := c.exp.Backend.Trim(int64(r.off), int64(r.length))
	c.dirty.Store(true)
	return err
}

// serveWriteZeroes zeroes the range: quickly if the backend can (keeping
// it allocated with NO_HOLE when it knows how), else by writing zeros,
// unless the client asked for FAST_ZERO.
func (c *conn) serveWriteZeroes(r *request) error {
	if r.length == 0 {
		return nil
	}
	be := c.exp.Backend
	off, n := int64(r.off), int64(r.length)
	var err error
	if nh, ok := be.(noHoleZeroer); ok && r.flags&cmdFlagNoHole != 0 {
		err = nh.WriteZeroesNoHole(off, n)
	} else {
		err = be.WriteZeroes(off, n)
	}
	if errors.Is(err, errors.ErrUnsupported) {
		if r.flags&cmdFlagFastZero != 0 {
			return refuseSlowZero
		}
		err = writeZeros(be, off, n)
	}
	c.dirty.Store(true)
	return err
}

// zeroMiB is 1 MiB of zeros: what writeZeros writes from, and what
// splitHoles compares blocks with.
var zeroMiB [1 << 20]byte

// writeZeros writes zeros for a backend that cannot zero quickly.
func writeZeros(be Backend, off, n int64) error {
	for n > 0 {
		k := min(n, int64(len(zeroMiB)))
		if _, err := be.WriteAt(zeroMiB[:k], off); err != nil {
			return err
		}
		off += k
		n -= k
	}
	return nil
}

// serveCache asks a backend that can prefetch to do so.
func (c *conn) serveCache(r *request) error {
	if ca, ok := c.exp.Backend.(cacher); ok && r.length > 0 {
		return ca.Cache(int64(r.off), int64(r.length))
	}
	return nil
}
