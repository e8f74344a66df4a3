package nbd_test

import (
	"bytes"
	"encoding/binary"
	"math/rand"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dataembassy/embassy/storage/nbd"
)

// evict writes path's pages back and drops them from the page cache, so
// the server's next reads of it must wait for the disk.
func evict(t *testing.T, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
}

// TestFileInlineAndWorkers mixes requests the reader serves itself (cached
// reads, whole-page writes) with ones it hands to workers (uncached reads,
// sub-page writes, FUA writes, flushes), many in flight, and checks every
// reply against a model of the disk.
func TestFileInlineAndWorkers(t *testing.T) {
	const size = 8 << 20
	disk, path := tempFile(t, size)
	srv := startServer(t, nbd.ServerOptions{
		Exports:    []nbd.Export{{Name: "disk", Backend: disk}},
		Grants:     []nbd.Grant{{Identity: nbd.AnyIdentity, Export: "disk", Access: nbd.ReadWrite}},
		Plaintext:  true,
		QueueDepth: 8,
		MaxPayload: 1 << 20,
	})
	rng := rand.New(rand.NewSource(1))
	model := make([]byte, size)
	rng.Read(model)
	for _, structured := range []bool{false, true} {
		c := dialExport(t, srv.addr, "disk", structured)
		// Fill the disk with whole-page writes, many in flight.
		const chunk = 1 << 20
		for i := 0; i < size/chunk; i++ {
			c.send(cmdWrite, 0, uint64(i), uint64(i*chunk), chunk, model[i*chunk:(i+1)*chunk])
		}
		for cookie, r := range c.recvAll(size / chunk) {
			if r.errno != 0 {
				t.Fatalf("write %d: errno %d", cookie, r.errno)
			}
		}
		evict(t, path)
		// Reads (uncached at first, then cached) interleaved with sub-page,
		// FUA and whole-page writes to other ranges, then a flush.
		type req struct {
			typ, flags uint16
			off        uint64
			n          uint32
		}
		var reqs []req
		for i := 0; i < 64; i++ {
			off := uint64(rng.Intn(size/2/4096)) * 4096
			reqs = append(reqs, req{cmdRead, 0, off, uint32(4096 * (1 + rng.Intn(64)))})
		}
		for i := 0; i < 32; i++ {
			off := size/2 + uint64(rng.Intn(size/2-8192))
			switch i % 3 {
			case 0: // sub-page, unaligned
				reqs = append(reqs, req{cmdWrite, 0, off, uint32(1 + rng.Intn(4000))})
			case 1: // FUA
				reqs = append(reqs, req{cmdWrite, flagFUA, off &^ 4095, 4096})
			default:
				reqs = append(reqs, req{cmdWrite, 0, off &^ 4095, 8192})
			}
		}
		rng.Shuffle(len(reqs), func(i, j int) { reqs[i], reqs[j] = reqs[j], reqs[i] })
		for round := 0; round < 2; round++ {
			sent := 0
			check := func(got map[uint64]result) {
				t.Helper()
				for cookie, r := range got {
					q := reqs[cookie]
					if r.errno != 0 {
						t.Fatalf("request %+v: errno %d", q, r.errno)
					}
					if q.typ == cmdRead && !bytes.Equal(r.data, model[q.off:q.off+uint64(q.n)]) {
						t.Fatalf("structured=%v round %d: read %+v returned wrong data", structured, round, q)
					}
				}
			}
			// Writes only touch the upper half and reads the lower, so
			// requests in flight together do not overlap.
			for i, q := range reqs {
				var data []byte
				if q.typ == cmdWrite {
					data = make([]byte, q.n)
					rng.Read(data)
					copy(model[q.off:], data)
				}
				c.send(q.typ, q.flags, uint64(i), q.off, q.n, data)
				sent++
				if sent == 8 {
					check(c.recvAll(sent))
					sent = 0
				}
			}
			check(c.recvAll(sent))
		}
		if r := c.do(cmdFlush, 0, 0, 0, nil); r.errno != 0 {
			t.Fatalf("flush: errno %d", r.errno)
		}
		// Everything written is in the file, whichever goroutine wrote it.
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, model) {
			t.Fatalf("structured=%v: file differs from what was written", structured)
		}
		c.nc.Close()
	}
}

// TestInlineRepliesShareWrites sends a burst of requests the reader serves
// itself in one write: their replies must all arrive without the client
// sending anything more, and share system calls rather than take one
// each. A request for a worker in the middle of a burst must not hold up
// the replies before it.
func TestInlineRepliesShareWrites(t *testing.T) {
	const size = 1 << 20
	disk, _ := tempFile(t, size)
	var counting *countingListener
	srv := startServerWrapped(t, nbd.ServerOptions{
		Exports:   []nbd.Export{{Name: "disk", Backend: disk}},
		Grants:    []nbd.Grant{{Identity: nbd.AnyIdentity, Export: "disk", Access: nbd.ReadWrite}},
		Plaintext: true,
	}, func(l net.Listener) net.Listener {
		counting = &countingListener{Listener: l}
		return counting
	})
	data := make([]byte, size)
	rand.New(rand.NewSource(2)).Read(data)
	c := dialExport(t, srv.addr, "disk", true)
	c.nc.SetDeadline(time.Now().Add(10 * time.Second)) // a held-back reply fails, not hangs
	// Whole-page writes put the data in the page cache, so the reads
	// below are served inline too.
	if r := c.do(cmdWrite, 0, 0, size, data); r.errno != 0 {
		t.Fatalf("write: errno %d", r.errno)
	}

	burst := func(typs []uint16) map[uint64]result {
		t.Helper()
		var b []byte
		for i, typ := range typs {
			h := make([]byte, 28)
			binary.BigEndian.PutUint32(h[0:], 0x25609513)
			binary.BigEndian.PutUint16(h[6:], typ)
			binary.BigEndian.PutUint64(h[8:], uint64(i))
			if typ != cmdFlush {
				binary.BigEndian.PutUint64(h[16:], uint64(i)*4096)
				binary.BigEndian.PutUint32(h[24:], 4096)
			}
			switch typ {
			case cmdRead:
				c.lens[uint64(i)], c.offs[uint64(i)] = 4096, uint64(i)*4096
			case cmdWrite: // a whole page of what is there already
				h = append(h, data[i*4096:(i+1)*4096]...)
			}
			b = append(b, h...)
		}
		c.write(b)
		got := c.recvAll(len(typs))
		for i, typ := range typs {
			r := got[uint64(i)]
			if r.errno != 0 {
				t.Fatalf("request %d: errno %d", i, r.errno)
			}
			if typ == cmdRead && !bytes.Equal(r.data, data[i*4096:(i+1)*4096]) {
				t.Fatalf("read %d returned wrong data", i)
			}
		}
		return got
	}

	const n = 64
	typs := make([]uint16, n)
	for i := range typs {
		typs[i] = cmdRead
		if i%4 == 3 {
			typs[i] = cmdWrite
		}
	}
	sc := counting.conn(0)
	before := sc.writes.Load()
	burst(typs)
	if w := sc.writes.Load() - before; w > n/4 {
		t.Errorf("%d replies took %d writes; want them to share writes (at most %d)", n, w, n/4)
	}
	// A flush (served by a worker) after inline requests, then a last read.
	burst([]uint16{cmdRead, cmdWrite, cmdRead, cmdFlush, cmdRead})
}
