package nbd_test

import (
	"bytes"
	"strings"
	"sync"
	"testing"
	"time"
)

// Tests of transmission: request handling, replies, errors and limits.

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
