package nbd

import (
	"io"
	"net"
)

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
