package nbd_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dataembassy/embassy/storage/nbd"
)

// plainServer serves mem as "mem" (rw for everyone) and "ro" (read-only)
// without TLS.
func plainServer(t testing.TB, mem *memBackend, depth int) *runningServer {
	t.Helper()
	return startServer(t, nbd.ServerOptions{
		Exports: []nbd.Export{
			{Name: "mem", Backend: mem},
			{Name: "ro", Backend: newMem(1 << 20), ReadOnly: true},
			{Name: "hidden", Backend: newMem(4096)},
		},
		Grants: []nbd.Grant{
			{Identity: nbd.AnyIdentity, Export: "mem", Access: nbd.ReadWrite},
			{Identity: nbd.AnyIdentity, Export: "ro", Access: nbd.ReadWrite},
			{Identity: nbd.AnyIdentity, Export: "missing", Access: nbd.ReadOnly},
		},
		Plaintext:  true,
		QueueDepth: depth,
		MaxPayload: 1 << 20,
	})
}

func TestNewServerValidates(t *testing.T) {
	mem := newMem(4096)
	cases := []struct {
		name string
		opts nbd.ServerOptions
	}{
		{"no TLS and not plaintext", nbd.ServerOptions{}},
		{"export without backend", nbd.ServerOptions{Plaintext: true, Exports: []nbd.Export{{Name: "a"}}}},
		{"duplicate export", nbd.ServerOptions{Plaintext: true, Exports: []nbd.Export{{Name: "a", Backend: mem}, {Name: "a", Backend: mem}}}},
		{"grant without access", nbd.ServerOptions{Plaintext: true, Grants: []nbd.Grant{{Identity: "x", Export: "a"}}}},
		{"grant without identity", nbd.ServerOptions{Plaintext: true, Grants: []nbd.Grant{{Export: "a", Access: nbd.ReadOnly}}}},
		{"tiny max payload", nbd.ServerOptions{Plaintext: true, MaxPayload: 512}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := nbd.NewServer(tc.opts); err == nil {
				t.Fatal("NewServer accepted bad options")
			}
		})
	}
}

func TestOptionHaggling(t *testing.T) {
	srv := plainServer(t, newMem(1<<20), 4)
	c := dialRaw(t, srv.addr)

	c.sendOpt(4242, []byte("whatever"))
	c.expectOpt(4242, repErrUnsup)
	c.sendOpt(optList, []byte("x"))
	c.expectOpt(optList, repErrInvalid)
	c.sendOpt(optList, nil)
	var names []string
	for {
		typ, d := c.optReply(optList)
		if typ == repAck {
			break
		}
		if typ != repServer {
			t.Fatalf("LIST reply %#x", typ)
		}
		n := binary.BigEndian.Uint32(d)
		names = append(names, string(d[4:4+n]))
	}
	if strings.Join(names, ",") != "mem,ro" {
		t.Errorf("LIST = %v, want [mem ro] (hidden has no grant, missing does not exist)", names)
	}
	c.sendOpt(optStartTLS, nil)
	c.expectOpt(optStartTLS, repErrUnsup)
	c.sendOpt(optSetMetaContext, metaData("mem", "base:allocation"))
	c.expectOpt(optSetMetaContext, repErrInvalid) // structured replies first
	c.sendOpt(optInfo, infoData("hidden"))
	c.expectOpt(optInfo, repErrPolicy)
	c.sendOpt(optInfo, infoData("nothing-at-all"))
	c.expectOpt(optInfo, repErrPolicy) // ungranted names are not revealed
	c.sendOpt(optInfo, infoData("missing"))
	c.expectOpt(optInfo, repErrUnknown)
	c.sendOpt(optInfo, []byte{0, 0, 0, 9, 'm'})
	c.expectOpt(optInfo, repErrInvalid)
	c.sendOpt(optStructuredReply, nil)
	c.expectOpt(optStructuredReply, repAck)
	c.sendOpt(optListMetaContext, metaData("mem"))
	if d := c.expectOpt(optListMetaContext, repMetaContext); string(d[4:]) != "base:allocation" {
		t.Errorf("LIST_META_CONTEXT gave %q", d[4:])
	}
	c.expectOpt(optListMetaContext, repAck)
	c.sendOpt(optSetMetaContext, metaData("mem", "qemu:dirty-bitmap:x"))
	c.expectOpt(optSetMetaContext, repAck) // nothing selected
	// INFO with name and description requests, then GO.
	c.sendOpt(optInfo, infoData("ro", 1, 2, 3))
	var sawName, sawBlock bool
	for {
		typ, d := c.optReply(optInfo)
		if typ == repAck {
			break
		}
		switch binary.BigEndian.Uint16(d) {
		case 0:
			if binary.BigEndian.Uint16(d[10:])&tflagReadOnly == 0 {
				t.Error("read-only export not flagged read-only")
			}
		case 1:
			sawName = string(d[2:]) == "ro"
		case 3:
			sawBlock = binary.BigEndian.Uint32(d[2:]) == 1 && binary.BigEndian.Uint32(d[6:]) == 4096 && binary.BigEndian.Uint32(d[10:]) == 1<<20
		}
	}
	if !sawName || !sawBlock {
		t.Errorf("INFO: name %v, block size %v", sawName, sawBlock)
	}
	c.goExport("mem")
	if c.size != 1<<20 {
		t.Fatalf("size %d", c.size)
	}
	// No meta context was selected for "mem": block status is refused.
	if r := c.do(cmdBlockStatus, 0, 0, 4096, nil); r.errno != einval {
		t.Errorf("block status without context: errno %d", r.errno)
	}
	if r := c.do(cmdRead, 0, 0, 10, nil); r.errno != 0 || len(r.data) != 10 {
		t.Errorf("read after haggling: %+v", r)
	}
}

func TestExportNameNoZeroes(t *testing.T) {
	srv := plainServer(t, newMem(1<<20), 4)
	c := dialRaw(t, srv.addr)
	c.sendOpt(optExportName, []byte("mem"))
	var b [10]byte
	c.read(b[:])
	if binary.BigEndian.Uint64(b[:]) != 1<<20 {
		t.Fatalf("size %d", binary.BigEndian.Uint64(b[:]))
	}
	// With NO_ZEROES the next bytes are our replies, not 124 zeros.
	if r := c.do(cmdWrite, 0, 0, 3, []byte("abc")); r.errno != 0 {
		t.Fatalf("write errno %d", r.errno)
	}
	// EXPORT_NAME with an unknown export closes the connection.
	c2 := dialRaw(t, srv.addr)
	c2.sendOpt(optExportName, []byte("hidden"))
	c2.expectClosed()
}

func TestBadOptionMagicDisconnects(t *testing.T) {
	srv := plainServer(t, newMem(1<<20), 4)
	c := dialRaw(t, srv.addr)
	c.write(bytes.Repeat([]byte{0xee}, 16))
	c.expectClosed()
	// The server keeps serving others.
	dialExport(t, srv.addr, "mem", false)
}

// aliceServer serves a 1 MiB memory export "d" over TLS, granted to
// "alice" with access.
func aliceServer(t *testing.T, p *testPKI, access nbd.Access) *runningServer {
	t.Helper()
	return startServer(t, nbd.ServerOptions{
		Exports:   []nbd.Export{{Name: "d", Backend: newMem(1 << 20)}},
		Grants:    []nbd.Grant{{Identity: "alice", Export: "d", Access: access}},
		TLSConfig: p.serverTLS,
	})
}

func TestTLSOptionRules(t *testing.T) {
	p := newPKI(t)
	srv := aliceServer(t, p, nbd.ReadOnly)
	c := dialRaw(t, srv.addr)
	for _, opt := range []uint32{optList, optInfo, optGo, optStructuredReply, 4242} {
		c.sendOpt(opt, nil)
		c.expectOpt(opt, repErrTLSReqd)
	}
	c.startTLS(p.clientTLS(t, p.ca, "alice"))
	c.sendOpt(optStartTLS, nil)
	c.expectOpt(optStartTLS, repErrInvalid)
	c.goExport("d")
	if c.tflags&tflagReadOnly == 0 {
		t.Error("read-only grant gave a writable export")
	}
	if r := c.do(cmdWrite, 0, 0, 4, []byte("evil")); r.errno != eperm {
		t.Errorf("write with read-only grant: errno %d, want EPERM", r.errno)
	}

	// EXPORT_NAME before TLS cannot be refused politely: disconnect.
	c2 := dialRaw(t, srv.addr)
	c2.sendOpt(optExportName, []byte("d"))
	c2.expectClosed()
	if !strings.Contains(srv.logs.String(), "refused: EXPORT_NAME before TLS") {
		t.Error("refusal not logged")
	}
}

func TestOutOfOrderReplies(t *testing.T) {
	mem := newMem(1 << 20)
	mem.delay[0] = 300 * time.Millisecond
	srv := plainServer(t, mem, 8)
	c := dialExport(t, srv.addr, "mem", true)
	c.send(cmdRead, 0, 1, 0, 4096, nil)
	c.send(cmdRead, 0, 2, 8192, 4096, nil)
	if r := c.recv(); r.cookie != 2 {
		t.Fatalf("first reply for cookie %d, want the fast request 2", r.cookie)
	}
	if r := c.recv(); r.cookie != 1 {
		t.Fatalf("second reply for cookie %d, want 1", r.cookie)
	}
}

func TestQueueDepthBound(t *testing.T) {
	const depth = 4
	mem := newMem(1 << 20)
	for i := int64(0); i < 64; i++ {
		mem.delay[i*4096] = 10 * time.Millisecond
	}
	srv := plainServer(t, mem, depth)
	c := dialExport(t, srv.addr, "mem", false)
	for i := uint64(0); i < 64; i++ {
		c.send(cmdWrite, 0, i, i*4096, 4096, bytes.Repeat([]byte{byte(i)}, 4096))
	}
	got := c.recvAll(64)
	for i := uint64(0); i < 64; i++ {
		if got[i].errno != 0 {
			t.Fatalf("write %d: errno %d", i, got[i].errno)
		}
	}
	if m := mem.maxAct.Load(); m > depth || m < 2 {
		t.Errorf("max concurrent backend calls %d, want 2..%d", m, depth)
	}
	for i := 0; i < 64; i++ {
		if mem.data[i*4096] != byte(i) || mem.data[i*4096+4095] != byte(i) {
			t.Fatalf("block %d not written", i)
		}
	}
}

func TestIntegrityErrorIsEIOForThatRequestOnly(t *testing.T) {
	for _, structured := range []bool{false, true} {
		mem := newMem(1 << 20)
		copy(mem.data[8192:], "hello")
		mem.badOff[4096*3] = true
		srv := plainServer(t, mem, 4)
		c := dialExport(t, srv.addr, "mem", structured)
		c.send(cmdRead, 0, 1, 4096*2, 8192, nil) // covers the bad block
		c.send(cmdRead, 0, 2, 8192, 5, nil)
		got := c.recvAll(2)
		if got[1].errno != eio || got[1].data != nil {
			t.Errorf("structured=%v: bad read: errno %d, data %d bytes; want EIO and no data", structured, got[1].errno, len(got[1].data))
		}
		if got[2].errno != 0 || string(got[2].data) != "hello" {
			t.Errorf("structured=%v: good read after it: %+v", structured, got[2])
		}
		if n := srv.Stats().IntegrityErrors; n != 1 {
			t.Errorf("IntegrityErrors = %d, want 1", n)
		}
		if !strings.Contains(srv.logs.String(), "integrity error") {
			t.Error("integrity error not logged")
		}
	}
}

func TestMalformedRequests(t *testing.T) {
	mem := newMem(1 << 20)
	srv := plainServer(t, mem, 4)
	c := dialExport(t, srv.addr, "mem", true)
	size := uint64(1 << 20)
	cases := []struct {
		name   string
		typ    uint16
		flags  uint16
		off    uint64
		length uint32
		data   []byte
		errno  uint32
	}{
		{"read past end", cmdRead, 0, size - 10, 20, nil, einval},
		{"read offset wraps", cmdRead, 0, 1<<64 - 4096, 8192, nil, einval},
		{"write past end", cmdWrite, 0, size - 2, 4, []byte("abcd"), enospc},
		{"trim past end", cmdTrim, 0, size, 1, nil, einval},
		{"zero past end", cmdWriteZeroes, 0, size, 1, nil, enospc},
		{"cache past end", cmdCache, 0, size, 1, nil, einval},
		{"block status past end", cmdBlockStatus, 0, size, 1, nil, einval},
		{"read beyond max payload", cmdRead, 0, 0, 1<<20 + 1, nil, einval},
		{"DF read beyond max payload", cmdRead, flagDF, 0, 1<<20 + 1, nil, 75},
		{"write beyond max payload", cmdWrite, 0, 0, 1<<20 + 1, make([]byte, 1<<20+1), einval},
		{"unknown command", 99, 0, 0, 0, nil, einval},
		{"unknown flag", cmdRead, 1 << 9, 0, 10, nil, einval},
		{"FUA on read", cmdRead, flagFUA, 0, 10, nil, einval},
		{"zero-length block status", cmdBlockStatus, 0, 0, 0, nil, einval},
	}
	for _, tc := range cases {
		r := c.do(tc.typ, tc.flags, tc.off, tc.length, tc.data)
		if r.errno != tc.errno {
			t.Errorf("%s: errno %d, want %d", tc.name, r.errno, tc.errno)
		}
		// The stream is still in step: a normal request works.
		if r := c.do(cmdWrite, flagFUA, 100, 3, []byte("xyz")); r.errno != 0 {
			t.Fatalf("after %s: write errno %d", tc.name, r.errno)
		}
	}
	if mem.data[size-1] != 0 {
		t.Error("out-of-range write changed data")
	}
	// A garbage request header cannot be resynchronised: disconnect.
	c.write(bytes.Repeat([]byte{0x42}, 28))
	c.expectClosed()
}

func TestStructuredReadsAndBlockStatus(t *testing.T) {
	mem := newMem(1 << 20)
	for i := 4096; i < 3*4096; i++ {
		mem.data[i] = byte(i)
	}
	copy(mem.data[3*4096+5:], "tail")
	srv := plainServer(t, mem, 4)
	c := dialExport(t, srv.addr, "mem", true)
	r := c.do(cmdRead, 0, 100, 5*4096, nil)
	if r.errno != 0 || !bytes.Equal(r.data, mem.data[100:100+5*4096]) {
		t.Fatalf("structured read differs (errno %d)", r.errno)
	}
	if r.holes == 0 {
		t.Error("zero blocks were not sent as holes")
	}
	r = c.do(cmdRead, flagDF, 0, 5*4096, nil)
	if r.errno != 0 || r.holes != 0 || !bytes.Equal(r.data, mem.data[:5*4096]) {
		t.Fatalf("DF read: errno %d, holes %d", r.errno, r.holes)
	}
	r = c.do(cmdBlockStatus, 0, 0, 5*4096, nil)
	want := [][2]uint32{{4096, 3}, {3 * 4096, 0}, {4096, 3}}
	if len(r.descs) != len(want) {
		t.Fatalf("block status %v, want %v", r.descs, want)
	}
	for i := range want {
		if r.descs[i] != want[i] {
			t.Fatalf("block status %v, want %v", r.descs, want)
		}
	}
	r = c.do(cmdBlockStatus, flagReqOne, 4096, 5*4096, nil)
	if len(r.descs) != 1 || r.descs[0] != [2]uint32{3 * 4096, 0} {
		t.Fatalf("REQ_ONE block status %v", r.descs)
	}
	// Trim, then the range is a hole.
	if r := c.do(cmdTrim, 0, 4096, 8192, nil); r.errno != 0 {
		t.Fatal(r.errno)
	}
	r = c.do(cmdBlockStatus, 0, 0, 4*4096, nil)
	if len(r.descs) != 2 || r.descs[0] != [2]uint32{3 * 4096, 3} || r.descs[1] != [2]uint32{4096, 0} {
		t.Fatalf("block status after trim %v", r.descs)
	}
	if r := c.do(cmdRead, 0, 0, 0, nil); r.errno != 0 {
		t.Fatalf("zero-length read errno %d", r.errno)
	}
}

func TestReadOnlyExportRefusesWrites(t *testing.T) {
	srv := plainServer(t, newMem(1<<20), 4)
	c := dialExport(t, srv.addr, "ro", false)
	if c.tflags&tflagReadOnly == 0 {
		t.Fatal("read-only flag missing")
	}
	for _, typ := range []uint16{cmdWrite, cmdTrim, cmdWriteZeroes} {
		var data []byte
		if typ == cmdWrite {
			data = []byte("x")
		}
		if r := c.do(typ, 0, 0, 1, data); r.errno != eperm {
			t.Errorf("command %d on read-only export: errno %d, want EPERM", typ, r.errno)
		}
	}
	if r := c.do(cmdFlush, 0, 0, 0, nil); r.errno != 0 {
		t.Errorf("flush on read-only export: errno %d", r.errno)
	}
}

func TestDisconnectDrainsAndFlushes(t *testing.T) {
	mem := newMem(1 << 20)
	mem.delay[0] = 200 * time.Millisecond
	srv := plainServer(t, mem, 4)
	c := dialExport(t, srv.addr, "mem", false)
	c.send(cmdWrite, 0, 1, 0, 4, []byte("slow"))
	c.send(cmdDisc, 0, 2, 0, 0, nil)
	if r := c.recv(); r.cookie != 1 || r.errno != 0 {
		t.Fatalf("in-flight write before DISC: %+v", r)
	}
	c.expectClosed()
	if string(mem.data[:4]) != "slow" || mem.flushes.Load() == 0 {
		t.Errorf("data %q, flushes %d: DISC must drain and flush", mem.data[:4], mem.flushes.Load())
	}
}

// TestDisconnectEndsTLSSession checks that the server closes the TLS
// session (close_notify) before the TCP connection: the spec's MUST after
// NBD_CMD_DISC, and what a client checks to tell an orderly end from a
// truncated stream.
func TestDisconnectEndsTLSSession(t *testing.T) {
	p := newPKI(t)
	srv := aliceServer(t, p, nbd.ReadWrite)
	for _, tc := range []struct {
		name string
		end  func(c *client)
	}{
		{"NBD_CMD_DISC", func(c *client) {
			c.goExport("d")
			c.send(cmdDisc, 0, 1, 0, 0, nil)
		}},
		{"NBD_OPT_ABORT", func(c *client) {
			c.sendOpt(optAbort, nil)
			c.expectOpt(optAbort, repAck)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialRaw(t, srv.addr)
			rec := &inboundRecorder{Conn: c.nc}
			c.nc = rec
			cfg := p.clientTLS(t, p.ca, "alice")
			cfg.MaxVersion = tls.VersionTLS12 // TLS 1.3 hides record types
			c.startTLS(cfg)
			tc.end(c)
			c.expectClosed()
			types := tlsRecordTypes(t, rec.in)
			if len(types) == 0 || types[len(types)-1] != recordAlert {
				t.Fatalf("TLS record types from the server %v: want the last to be an alert (close_notify)", types)
			}
		})
	}
}

// inboundRecorder keeps a copy of what is read through it.
type inboundRecorder struct {
	net.Conn
	in []byte
}

func (r *inboundRecorder) Read(p []byte) (int, error) {
	n, err := r.Conn.Read(p)
	r.in = append(r.in, p[:n]...)
	return n, err
}

// recordAlert is the TLS record content type of alerts.
const recordAlert = 21

// tlsRecordTypes splits a TLS byte stream into records and returns their
// content types.
func tlsRecordTypes(t *testing.T, b []byte) []byte {
	t.Helper()
	var types []byte
	for len(b) > 0 {
		if len(b) < 5 {
			t.Fatalf("truncated TLS record header (%d bytes left)", len(b))
		}
		end := 5 + int(binary.BigEndian.Uint16(b[3:5]))
		if len(b) < end {
			t.Fatalf("truncated TLS record (%d of %d bytes)", len(b), end)
		}
		types = append(types, b[0])
		b = b[end:]
	}
	return types
}

func TestGracefulShutdown(t *testing.T) {
	mem := newMem(1 << 20)
	for i := int64(0); i < 8; i++ {
		mem.delay[i*4096] = 200 * time.Millisecond
	}
	srv, err := nbd.NewServer(nbd.ServerOptions{
		Exports:   []nbd.Export{{Name: "mem", Backend: mem}},
		Grants:    []nbd.Grant{{Identity: nbd.AnyIdentity, Export: "mem", Access: nbd.ReadWrite}},
		Plaintext: true,
		Logger:    slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l) }()
	c := dialExport(t, l.Addr().String(), "mem", false)
	for i := uint64(0); i < 8; i++ {
		c.send(cmdWrite, 0, i, i*4096, 4096, bytes.Repeat([]byte{0xcc}, 4096))
	}
	// Wait until the writes are in the backend, then shut down.
	deadline := time.Now().Add(10 * time.Second)
	for mem.writes.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	cancel()
	got := c.recvAll(8)
	for i := uint64(0); i < 8; i++ {
		if got[i].errno != 0 {
			t.Errorf("write %d errno %d", i, got[i].errno)
		}
	}
	c.expectClosed()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return")
	}
	if mem.flushes.Load() == 0 {
		t.Error("no flush at shutdown")
	}
	if _, err := net.DialTimeout("tcp", l.Addr().String(), time.Second); err == nil {
		t.Error("listener still accepting after shutdown")
	}
}

func TestConcurrentClientsRace(t *testing.T) {
	mem := newMem(4 << 20)
	srv := plainServer(t, mem, 16)
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := dialExport(t, srv.addr, "mem", w%2 == 0)
			base := uint64(w) << 20
			for i := uint64(0); i < 32; i++ {
				c.send(cmdWrite, 0, i, base+i*1000, 1000, bytes.Repeat([]byte{byte(w + 1)}, 1000))
			}
			for _, r := range c.recvAll(32) {
				if r.errno != 0 {
					t.Errorf("write errno %d", r.errno)
				}
			}
			for i := uint64(0); i < 32; i++ {
				c.send(cmdRead, 0, 100+i, base+i*1000, 1000, nil)
			}
			for _, r := range c.recvAll(32) {
				if r.errno != 0 || !bytes.Equal(r.data, bytes.Repeat([]byte{byte(w + 1)}, 1000)) {
					t.Errorf("read back wrong (errno %d)", r.errno)
				}
			}
		}()
	}
	wg.Wait()
}

// TestPipelinedMixedReads keeps many reads of mixed sizes in flight, so
// replies are gathered into shared writes with large payloads referenced
// and small ones copied, and checks every reply's data.
func TestPipelinedMixedReads(t *testing.T) {
	const size = 4 << 20
	sizes := []uint32{1, 512, 4096, 16<<10 - 1, 16 << 10, 20000, 64 << 10, 300 << 10, 1 << 20}
	for _, structured := range []bool{false, true} {
		mem := newMem(size)
		for i := range mem.data {
			mem.data[i] = byte(i*7 + i>>12)
		}
		clear(mem.data[1<<20 : 1<<20+64<<10]) // hole chunks for structured reads
		srv := plainServer(t, mem, 8)
		c := dialExport(t, srv.addr, "mem", structured)
		type want struct{ off, n uint64 }
		wants := map[uint64]want{}
		for i := uint64(0); i < 120; i++ {
			n := uint64(sizes[i%uint64(len(sizes))])
			off := (i * 40961) % (size - n)
			if i%5 == 0 {
				off = 1<<20 - 4096 // straddles the zeroed range
			}
			wants[i] = want{off, n}
			c.send(cmdRead, 0, i, off, uint32(n), nil)
		}
		got := c.recvAll(len(wants))
		for cookie, w := range wants {
			r := got[cookie]
			if r.errno != 0 {
				t.Fatalf("structured=%v read %d: errno %d", structured, cookie, r.errno)
			}
			if !bytes.Equal(r.data, mem.data[w.off:w.off+w.n]) {
				t.Fatalf("structured=%v read %d (%d bytes at %d): wrong data", structured, cookie, w.n, w.off)
			}
		}
	}
}
