package nbd

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (a, b net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	a, err = net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b, err = l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

func TestTLSSocketCork(t *testing.T) {
	a, b := tcpPair(t)
	s := newTLSSocket(a)

	// Uncorked, a write goes out at once.
	if _, err := s.Write([]byte("now")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 3)
	b.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(b, got); err != nil || string(got) != "now" {
		t.Fatalf("uncorked write: %q, %v", got, err)
	}

	// Corked, writes are held back until uncork, then arrive in order.
	s.cork()
	want := []byte{}
	for _, p := range []string{"first ", "second ", "third"} {
		if n, err := s.Write([]byte(p)); err != nil || n != len(p) {
			t.Fatalf("corked write: %d, %v", n, err)
		}
		want = append(want, p...)
	}
	b.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if n, err := b.Read(got); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read while corked: %d bytes, %v; want nothing sent yet", n, err)
	}
	if err := s.uncork(); err != nil {
		t.Fatal(err)
	}
	got = make([]byte, len(want))
	b.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(b, got); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("after uncork: %q, %v; want %q", got, err, want)
	}
	if err := s.uncork(); err != nil { // nothing gathered: no-op
		t.Fatal(err)
	}

	// Corked, a write that brings the gathered bytes to tlsFlushAt goes
	// out at once, with what was gathered before it; the rest waits.
	s.cork()
	head := bytes.Repeat([]byte{'h'}, tlsFlushAt-10)
	tail := []byte("tail")
	for _, p := range [][]byte{head, []byte("0123456789"), tail} {
		if n, err := s.Write(p); err != nil || n != len(p) {
			t.Fatalf("corked write: %d, %v", n, err)
		}
	}
	got = make([]byte, tlsFlushAt)
	b.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(b, got); err != nil || !bytes.Equal(got, append(head, "0123456789"...)) {
		t.Fatalf("corked, at tlsFlushAt: %v, first bytes %q", err, got[:8])
	}
	b.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if n, err := b.Read(got); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read after the flush while corked: %d bytes, %v; want the tail held back", n, err)
	}
	if err := s.uncork(); err != nil {
		t.Fatal(err)
	}
	got = make([]byte, len(tail))
	b.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(b, got); err != nil || !bytes.Equal(got, tail) {
		t.Fatalf("after uncork: %q, %v; want %q", got, err, tail)
	}

	// Reads go through the buffer and keep the byte order.
	msg := bytes.Repeat([]byte("0123456789"), 100_000)
	go b.Write(msg)
	in := make([]byte, len(msg))
	if _, err := io.ReadFull(s, in); err != nil || !bytes.Equal(in, msg) {
		t.Fatalf("buffered read: %v, equal %v", err, bytes.Equal(in, msg))
	}
}
