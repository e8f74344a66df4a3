package nbd_test

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dataembassy/embassy/storage/nbd"
)

// Wire constants, restated from the spec so the tests check the server
// against the document rather than against its own definitions.
const (
	optExportName      = 1
	optAbort           = 2
	optList            = 3
	optStartTLS        = 5
	optInfo            = 6
	optGo              = 7
	optStructuredReply = 8
	optListMetaContext = 9
	optSetMetaContext  = 10

	repAck         = 1
	repServer      = 2
	repInfo        = 3
	repMetaContext = 4
	repErrUnsup    = 1<<31 + 1
	repErrPolicy   = 1<<31 + 2
	repErrInvalid  = 1<<31 + 3
	repErrTLSReqd  = 1<<31 + 5
	repErrUnknown  = 1<<31 + 6

	cmdRead        = 0
	cmdWrite       = 1
	cmdDisc        = 2
	cmdFlush       = 3
	cmdTrim        = 4
	cmdCache       = 5
	cmdWriteZeroes = 6
	cmdBlockStatus = 7

	flagFUA    = 1
	flagDF     = 4
	flagReqOne = 8

	eperm  = 1
	eio    = 5
	einval = 22
	enospc = 28

	tflagReadOnly = 1 << 1
)

// memBackend is an in-memory Backend that can inject integrity errors and
// delays and records concurrency and flushes.
type memBackend struct {
	mu      sync.Mutex
	data    []byte
	badOff  map[int64]bool // reads covering these offsets fail with ErrIntegrity
	delay   map[int64]time.Duration
	flushes atomic.Int64
	active  atomic.Int64
	maxAct  atomic.Int64
	writes  atomic.Int64
}

func newMem(size int) *memBackend {
	return &memBackend{data: make([]byte, size), badOff: map[int64]bool{}, delay: map[int64]time.Duration{}}
}

func (m *memBackend) enter(off int64) func() {
	n := m.active.Add(1)
	for {
		old := m.maxAct.Load()
		if n <= old || m.maxAct.CompareAndSwap(old, n) {
			break
		}
	}
	m.mu.Lock()
	d := m.delay[off]
	m.mu.Unlock()
	if d > 0 {
		time.Sleep(d)
	}
	return func() { m.active.Add(-1) }
}

func (m *memBackend) ReadAt(p []byte, off int64) (int, error) {
	defer m.enter(off)()
	m.mu.Lock()
	defer m.mu.Unlock()
	for bad := range m.badOff {
		if bad >= off && bad < off+int64(len(p)) {
			return 0, &integrityErr{off: bad}
		}
	}
	return copy(p, m.data[off:]), nil
}

type integrityErr struct{ off int64 }

func (e *integrityErr) Error() string { return fmt.Sprintf("block at %d: tag mismatch", e.off) }
func (e *integrityErr) Unwrap() error { return nbd.ErrIntegrity }

func (m *memBackend) WriteAt(p []byte, off int64) (int, error) {
	defer m.enter(off)()
	m.writes.Add(1)
	m.mu.Lock()
	defer m.mu.Unlock()
	return copy(m.data[off:], p), nil
}

func (m *memBackend) Flush() error { m.flushes.Add(1); return nil }

func (m *memBackend) Trim(off, n int64) error { return m.WriteZeroes(off, n) }

func (m *memBackend) WriteZeroes(off, n int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.data[off : off+n])
	return nil
}

func (m *memBackend) BlockStatus(off, n int64) ([]nbd.Extent, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []nbd.Extent
	for pos := off; pos < off+n; {
		k := min(4096-pos%4096, off+n-pos)
		zero := bytes.Count(m.data[pos:pos+k], []byte{0}) == int(k)
		if l := len(out); l > 0 && out[l-1].Zero == zero {
			out[l-1].Length += k
		} else {
			out = append(out, nbd.Extent{Offset: pos, Length: k, Zero: zero})
		}
		pos += k
	}
	return out, nil
}

func (m *memBackend) Size() int64 { return int64(len(m.data)) }

// client is a minimal NBD client for protocol tests.
type client struct {
	t          testing.TB
	nc         net.Conn
	br         *bufio.Reader
	structured bool
	size       uint64
	tflags     uint16
	lens       map[uint64]uint32 // read lengths by cookie, for simple replies
	offs       map[uint64]uint64 // read offsets by cookie
}

func dialRaw(t testing.TB, addr string) *client {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	c := &client{t: t, nc: nc, br: bufio.NewReader(nc), lens: map[uint64]uint32{}, offs: map[uint64]uint64{}}
	var hello [18]byte
	c.read(hello[:])
	if binary.BigEndian.Uint64(hello[:]) != 0x4e42444d41474943 || binary.BigEndian.Uint64(hello[8:]) != 0x49484156454F5054 {
		t.Fatalf("bad server hello %x", hello)
	}
	if binary.BigEndian.Uint16(hello[16:])&1 == 0 {
		t.Fatal("server does not offer fixed newstyle")
	}
	c.write(binary.BigEndian.AppendUint32(nil, 3)) // FIXED_NEWSTYLE | NO_ZEROES
	return c
}

func (c *client) read(p []byte) {
	c.t.Helper()
	if _, err := io.ReadFull(c.br, p); err != nil {
		c.t.Fatalf("read: %v", err)
	}
}

func (c *client) write(p []byte) {
	c.t.Helper()
	if _, err := c.nc.Write(p); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func (c *client) sendOpt(opt uint32, data []byte) {
	c.t.Helper()
	b := binary.BigEndian.AppendUint64(nil, 0x49484156454F5054)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	if len(data) == 0 {
		c.write(b)
		return
	}
	bufs := net.Buffers{b, data} // writev: no copy of the payload
	if _, err := bufs.WriteTo(c.nc); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// optReply reads one option reply.
func (c *client) optReply(opt uint32) (uint32, []byte) {
	c.t.Helper()
	var h [20]byte
	c.read(h[:])
	if binary.BigEndian.Uint64(h[:]) != 0x3e889045565a9 {
		c.t.Fatalf("bad option reply magic %x", h[:8])
	}
	if got := binary.BigEndian.Uint32(h[8:]); got != opt {
		c.t.Fatalf("reply for option %d, want %d", got, opt)
	}
	d := make([]byte, binary.BigEndian.Uint32(h[16:]))
	c.read(d)
	return binary.BigEndian.Uint32(h[12:]), d
}

func (c *client) expectOpt(opt, want uint32) []byte {
	c.t.Helper()
	typ, d := c.optReply(opt)
	if typ != want {
		c.t.Fatalf("option %d: reply %#x (%q), want %#x", opt, typ, d, want)
	}
	return d
}

func (c *client) startTLS(cfg *tls.Config) {
	c.t.Helper()
	c.sendOpt(optStartTLS, nil)
	c.expectOpt(optStartTLS, repAck)
	tc := tls.Client(c.nc, cfg)
	if err := tc.Handshake(); err != nil {
		c.t.Fatalf("TLS handshake: %v", err)
	}
	c.nc = tc
	c.br = bufio.NewReader(tc)
}

func infoData(name string, reqs ...uint16) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(reqs)))
	for _, r := range reqs {
		b = binary.BigEndian.AppendUint16(b, r)
	}
	return b
}

func metaData(name string, queries ...string) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(queries)))
	for _, q := range queries {
		b = binary.BigEndian.AppendUint32(b, uint32(len(q)))
		b = append(b, q...)
	}
	return b
}

// structuredMeta negotiates structured replies and base:allocation.
func (c *client) structuredMeta(export string) {
	c.t.Helper()
	c.sendOpt(optStructuredReply, nil)
	c.expectOpt(optStructuredReply, repAck)
	c.structured = true
	c.sendOpt(optSetMetaContext, metaData(export, "base:allocation"))
	d := c.expectOpt(optSetMetaContext, repMetaContext)
	if string(d[4:]) != "base:allocation" {
		c.t.Fatalf("meta context %q", d)
	}
	c.expectOpt(optSetMetaContext, repAck)
}

// goExport sends NBD_OPT_GO and reads the replies up to the ACK.
func (c *client) goExport(name string) {
	c.t.Helper()
	c.sendOpt(optGo, infoData(name))
	for {
		typ, d := c.optReply(optGo)
		switch typ {
		case repAck:
			return
		case repInfo:
			if binary.BigEndian.Uint16(d) == 0 {
				c.size = binary.BigEndian.Uint64(d[2:])
				c.tflags = binary.BigEndian.Uint16(d[10:])
			}
		default:
			c.t.Fatalf("GO %q: reply %#x %q", name, typ, d)
		}
	}
}

// dialExport connects to a plaintext server and enters transmission.
func dialExport(t testing.TB, addr, export string, structured bool) *client {
	t.Helper()
	c := dialRaw(t, addr)
	if structured {
		c.structuredMeta(export)
	}
	c.goExport(export)
	return c
}

func (c *client) send(typ, flags uint16, cookie, off uint64, length uint32, data []byte) {
	c.t.Helper()
	b := make([]byte, 28)
	binary.BigEndian.PutUint32(b[0:], 0x25609513)
	binary.BigEndian.PutUint16(b[4:], flags)
	binary.BigEndian.PutUint16(b[6:], typ)
	binary.BigEndian.PutUint64(b[8:], cookie)
	binary.BigEndian.PutUint64(b[16:], off)
	binary.BigEndian.PutUint32(b[24:], length)
	if typ == cmdRead {
		c.lens[cookie] = length
		c.offs[cookie] = off
	}
	if len(data) == 0 {
		c.write(b)
		return
	}
	bufs := net.Buffers{b, data} // writev: no copy of the payload
	if _, err := bufs.WriteTo(c.nc); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// result is one complete reply.
type result struct {
	cookie uint64
	errno  uint32
	data   []byte      // read data, holes filled with zeros
	holes  int         // hole chunks seen
	descs  [][2]uint32 // block status descriptors
}

// recv reads one complete reply (all chunks, for structured replies to one
// request, which our server never interleaves).
func (c *client) recv() result {
	c.t.Helper()
	var m [4]byte
	c.read(m[:])
	switch binary.BigEndian.Uint32(m[:]) {
	case 0x67446698:
		var h [12]byte
		c.read(h[:])
		r := result{errno: binary.BigEndian.Uint32(h[:]), cookie: binary.BigEndian.Uint64(h[4:])}
		if n, ok := c.lens[r.cookie]; ok && r.errno == 0 {
			r.data = make([]byte, n)
			c.read(r.data)
		}
		delete(c.lens, r.cookie)
		delete(c.offs, r.cookie)
		return r
	case 0x668e33ef:
	default:
		c.t.Fatalf("bad reply magic %x", m)
	}
	var r result
	first := true
	for {
		if !first {
			c.read(m[:])
			if binary.BigEndian.Uint32(m[:]) != 0x668e33ef {
				c.t.Fatalf("bad chunk magic %x", m)
			}
		}
		var h [16]byte
		c.read(h[:])
		flags, typ := binary.BigEndian.Uint16(h[0:]), binary.BigEndian.Uint16(h[2:])
		cookie := binary.BigEndian.Uint64(h[4:])
		if !first && cookie != r.cookie {
			c.t.Fatalf("chunks of two replies interleaved")
		}
		first = false
		r.cookie = cookie
		if r.data == nil {
			if n, ok := c.lens[cookie]; ok {
				r.data = make([]byte, n)
			}
		}
		p := make([]byte, binary.BigEndian.Uint32(h[12:]))
		c.read(p)
		switch typ {
		case 0: // none
		case 1: // offset data
			off := binary.BigEndian.Uint64(p)
			copy(r.data[off-c.offs[cookie]:], p[8:])
		case 2: // offset hole
			r.holes++
		case 5:
			for i := 4; i+8 <= len(p); i += 8 {
				r.descs = append(r.descs, [2]uint32{binary.BigEndian.Uint32(p[i:]), binary.BigEndian.Uint32(p[i+4:])})
			}
		case 1<<15 + 1:
			r.errno = binary.BigEndian.Uint32(p)
		default:
			c.t.Fatalf("unexpected chunk type %d", typ)
		}
		if flags&1 != 0 {
			delete(c.lens, cookie)
			delete(c.offs, cookie)
			if r.errno != 0 {
				r.data = nil
			}
			return r
		}
	}
}

// recvAll reads n replies and returns them by cookie.
func (c *client) recvAll(n int) map[uint64]result {
	c.t.Helper()
	out := map[uint64]result{}
	for i := 0; i < n; i++ {
		r := c.recv()
		if _, dup := out[r.cookie]; dup {
			c.t.Fatalf("two replies for cookie %d", r.cookie)
		}
		out[r.cookie] = r
	}
	return out
}

// do sends one request and waits for its reply.
func (c *client) do(typ, flags uint16, off uint64, length uint32, data []byte) result {
	c.t.Helper()
	c.send(typ, flags, 7777, off, length, data)
	r := c.recv()
	if r.cookie != 7777 {
		c.t.Fatalf("reply for cookie %d, want 7777", r.cookie)
	}
	return r
}

// expectClosed checks that the server closed the connection.
func (c *client) expectClosed() {
	c.t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := c.br.ReadByte()
	if err == nil {
		c.t.Fatal("connection still open, want closed by server")
	}
	if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			c.t.Fatal("connection still open (timeout), want closed by server")
		}
	}
}
