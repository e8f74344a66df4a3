package nbd_test

import (
	"bytes"
	"math/rand"
	"os"
	"testing"

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
