package nbd

import (
	"bufio"
	"net"
	"sync"
)

// tlsSocket is the TCP connection under a TLS connection. crypto/tls reads
// a record or less per system call and writes each record (16 KiB at most)
// with its own system call; on a loaded machine those calls, and the
// goroutine wake-ups between partial reads, cost more than the
// cryptography. So reads go through a large buffer (one system call brings
// in many records), and while corked, writes are gathered and go out in
// one system call when uncorked, or as soon as tlsFlushAt bytes are
// gathered.
type tlsSocket struct {
	net.Conn
	r *bufio.Reader

	mu     sync.Mutex // writes may come from the reader (TLS alerts, key updates) as well
	corked bool
	wbuf   []byte
}

// tlsReadBuffer is the read buffer's size: 16 records.
const tlsReadBuffer = 256 << 10

// tlsFlushAt is how much a corked socket gathers before it writes anyway.
// A large reply's records then leave while the next ones are being
// encrypted rather than in one burst at the end: a burst of a megabyte
// is more than the congestion window takes at once, and the rest was
// sent as acknowledgements came in, which over loopback is on the
// client's CPU (fio's sequential reads, where fio's TLS is the
// bottleneck). 256 KiB keeps that (4 writes per MiB) at less CPU than
// 64 KiB (16 writes): 5-22 % less server CPU per 1 MiB read, side by
// side, and throughput within the noise; a 1 MiB flush did no better.
// It also bounds the buffer, whatever the reply's size.
const tlsFlushAt = 256 << 10

func newTLSSocket(nc net.Conn) *tlsSocket {
	return &tlsSocket{Conn: nc, r: bufio.NewReaderSize(nc, tlsReadBuffer)}
}

// Read reads through the buffer.
func (s *tlsSocket) Read(p []byte) (int, error) { return s.r.Read(p) }

// Write writes p, or while corked appends it to what uncork writes.
func (s *tlsSocket) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.corked {
		s.wbuf = append(s.wbuf, p...)
		if len(s.wbuf) >= tlsFlushAt {
			if err := s.writeGathered(); err != nil {
				return 0, err
			}
		}
		return len(p), nil
	}
	return s.Conn.Write(p)
}

// cork starts gathering writes.
func (s *tlsSocket) cork() {
	s.mu.Lock()
	s.corked = true
	s.mu.Unlock()
}

// uncork writes what was gathered and stops gathering.
func (s *tlsSocket) uncork() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.corked = false
	if len(s.wbuf) == 0 {
		return nil
	}
	return s.writeGathered()
}

// writeGathered writes what was gathered; s.mu is held.
func (s *tlsSocket) writeGathered() error {
	_, err := s.Conn.Write(s.wbuf)
	s.wbuf = s.wbuf[:0]
	return err
}
