package nbd

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"testing"
	"time"
)

// rawPair returns a loopback TCP connection, with small socket buffers,
// whose first end is a rawSocket. Under the race detector newRawSocket
// declines, so the test builds one itself: rawSocket's logic is tested
// there too.
func rawPair(t *testing.T) (*rawSocket, net.Conn) {
	t.Helper()
	a, b := tcpPair(t)
	// Small buffers, so that writes wait (EAGAIN) and end part-way.
	a.(*net.TCPConn).SetWriteBuffer(32 << 10)
	b.(*net.TCPConn).SetReadBuffer(32 << 10)
	rc, err := a.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	return &rawSocket{Conn: a, rc: rc}, b
}

// pattern returns n reproducible bytes.
func pattern(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(r.Uint32())
	}
	return p
}

// slowReader reads everything from c in small pieces with pauses, so the
// writer's socket fills and its writes wait (EAGAIN) and end part-way.
func slowReader(c net.Conn, want int) <-chan []byte {
	got := make(chan []byte, 1)
	go func() {
		var buf bytes.Buffer
		p := make([]byte, 7000)
		for buf.Len() < want {
			n, err := c.Read(p)
			buf.Write(p[:n])
			if err != nil {
				break
			}
			if buf.Len()%5 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
		got <- buf.Bytes()
	}()
	return got
}

func TestNewRawSocket(t *testing.T) {
	a, _ := tcpPair(t)
	_, isRaw := newRawSocket(a).(*rawSocket)
	if isRaw != !raceEnabled {
		t.Errorf("TCP connection made raw: %v, want %v", isRaw, !raceEnabled)
	}
	p, q := net.Pipe()
	defer q.Close()
	if got := newRawSocket(p); got != p {
		t.Errorf("net.Pipe became %T, want it unchanged", got)
	}
}

func TestRawSocketWriteAndRead(t *testing.T) {
	s, peer := rawPair(t)
	want := pattern(16<<20, 1) // far more than the socket buffers hold
	got := slowReader(peer, len(want))
	if n, err := s.Write(want); err != nil || n != len(want) {
		t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(want))
	}
	if g := <-got; !bytes.Equal(g, want) {
		t.Fatalf("peer read %d bytes, differing from what was written", len(g))
	}

	// And the other way, through Read.
	go func() { peer.Write(want[:1<<20]); peer.Close() }()
	all, err := io.ReadAll(s)
	if err != nil {
		t.Fatalf("ReadAll: %v", err)
	}
	if !bytes.Equal(all, want[:1<<20]) {
		t.Fatalf("read %d bytes, differing from what the peer wrote", len(all))
	}
	if n, err := s.Read(make([]byte, 10)); n != 0 || err != io.EOF {
		t.Errorf("Read after the peer closed = %d, %v; want 0, EOF", n, err)
	}
}

func TestRawSocketWriteBuffers(t *testing.T) {
	s, peer := rawPair(t)
	// More buffers than one writev takes, of mixed sizes (some empty), so
	// writes end inside buffers and past maxIovecs.
	var bufs [][]byte
	var want []byte
	for i := range 3*maxIovecs + 17 {
		b := pattern(i%97*13+(i%5)*(i%400)*5, uint64(i))
		bufs = append(bufs, b)
		want = append(want, b...)
	}
	got := slowReader(peer, len(want))
	if err := s.writeBuffers(bufs); err != nil {
		t.Fatalf("writeBuffers: %v", err)
	}
	if g := <-got; !bytes.Equal(g, want) {
		t.Fatalf("peer read %d of %d bytes, differing from the buffers", len(g), len(want))
	}
	for i, v := range s.iov[:cap(s.iov)] {
		if v.Base != nil {
			t.Fatalf("iovec %d still references a buffer", i)
		}
	}
}

func TestRawSocketErrors(t *testing.T) {
	s, peer := rawPair(t)

	// A read deadline ends a waiting Read with a timeout.
	s.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, err := s.Read(make([]byte, 10)); !isTimeout(err) {
		t.Errorf("Read past its deadline: %v, want a timeout", err)
	}
	s.SetReadDeadline(time.Time{})

	// A reset connection fails the write, it does not hang.
	peer.(*net.TCPConn).SetLinger(0)
	peer.Close()
	time.Sleep(20 * time.Millisecond)
	var err error
	for range 100 { // the first writes may still be accepted
		if _, err = s.Write(make([]byte, 64<<10)); err != nil {
			break
		}
	}
	var op *net.OpError
	if !errors.As(err, &op) || op.Op != "write" {
		t.Errorf("Write to a reset connection: %v, want a *net.OpError from write", err)
	}

	// After Close: net.ErrClosed.
	s.Close()
	if _, err := s.Read(make([]byte, 10)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Read after Close: %v, want net.ErrClosed", err)
	}
	if err := s.writeBuffers([][]byte{[]byte("x")}); !errors.Is(err, net.ErrClosed) {
		t.Errorf("writeBuffers after Close: %v, want net.ErrClosed", err)
	}
}
