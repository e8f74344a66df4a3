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
	expectRead(t, b, []byte("now"), "uncorked write")

	// Corked, writes are held back until uncork, then arrive in order.
	s.cork()
	want := []byte{}
	for _, p := range []string{"first ", "second ", "third"} {
		if n, err := s.Write([]byte(p)); err != nil || n != len(p) {
			t.Fatalf("corked write: %d, %v", n, err)
		}
		want = append(want, p...)
	}
	expectNothing(t, b, "while corked")
	if err := s.uncork(); err != nil {
		t.Fatal(err)
	}
	expectRead(t, b, want, "after uncork")
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
	expectRead(t, b, append(head, "0123456789"...), "corked, at tlsFlushAt")
	expectNothing(t, b, "after the flush while corked (the tail)")
	if err := s.uncork(); err != nil {
		t.Fatal(err)
	}
	expectRead(t, b, tail, "after uncork")

	// Reads go through the buffer and keep the byte order.
	msg := bytes.Repeat([]byte("0123456789"), 100_000)
	go b.Write(msg)
	in := make([]byte, len(msg))
	if _, err := io.ReadFull(s, in); err != nil || !bytes.Equal(in, msg) {
		t.Fatalf("buffered read: %v, equal %v", err, bytes.Equal(in, msg))
	}
}

// expectRead reads len(want) bytes from c and fails unless they are want.
func expectRead(t *testing.T, c net.Conn, want []byte, what string) {
	t.Helper()
	got := make([]byte, len(want))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("%s: %v; got %q..., want %q...", what, err, got[:min(len(got), 16)], want[:min(len(want), 16)])
	}
}

// expectNothing fails if c has anything to read within 50 ms.
func expectNothing(t *testing.T, c net.Conn, what string) {
	t.Helper()
	var one [1]byte
	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if n, err := c.Read(one[:]); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("%s: read %d bytes, %v; want nothing sent yet", what, n, err)
	}
}
