package nbd_test

import (
	"bytes"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"

	"github.com/dataembassy/embassy/appliance/wiring"
	"github.com/dataembassy/embassy/storage"
	"github.com/dataembassy/embassy/storage/nbd"
)

// newStore formats an authenticated store of size bytes in a temp file and
// returns it as the appliance serves it: through wiring's adapter.
func newStore(t testing.TB, size int64) (wiring.StoreBackend, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "store.img")
	dev, err := storage.CreateFileDevice(path, 2*size+size/16+16<<20)
	if err != nil {
		t.Fatal(err)
	}
	kek := make([]byte, storage.KEKSize)
	rand.Read(kek)
	st, err := storage.Format(dev, storage.FormatOptions{KEK: kek, Size: size})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		st.Close()
		dev.Close()
	})
	return wiring.StoreBackend{Store: st}, path
}

func TestStoreOverNBD(t *testing.T) {
	st, _ := newStore(t, 8<<20)
	srv := startServer(t, nbd.ServerOptions{
		Exports:   []nbd.Export{{Name: "s", Backend: st, MultiConn: true}},
		Grants:    []nbd.Grant{{Identity: nbd.AnyIdentity, Export: "s", Access: nbd.ReadWrite}},
		Plaintext: true,
	})
	c := dialExport(t, srv.addr, "s", true)
	if c.size != 8<<20 {
		t.Fatalf("size %d", c.size)
	}
	// Concurrent sub-block writes into the same 4 KiB blocks (RMW in the
	// store must not lose any of them).
	want := make([]byte, 64<<10)
	for i := uint64(0); i < 128; i++ {
		p := bytes.Repeat([]byte{byte(i + 1)}, 512)
		copy(want[i*512:], p)
		c.send(cmdWrite, 0, i, 4096+i*512, 512, p)
	}
	for _, r := range c.recvAll(128) {
		if r.errno != 0 {
			t.Fatalf("sub-block write errno %d", r.errno)
		}
	}
	if r := c.do(cmdFlush, 0, 0, 0, nil); r.errno != 0 {
		t.Fatal(r.errno)
	}
	r := c.do(cmdRead, 0, 4096, 64<<10, nil)
	if r.errno != 0 || !bytes.Equal(r.data, want) {
		t.Fatalf("read back after concurrent sub-block writes differs (errno %d)", r.errno)
	}
	// Unwritten space is a hole; trimmed space becomes one.
	r = c.do(cmdBlockStatus, 0, 1<<20, 1<<20, nil)
	if len(r.descs) == 0 || r.descs[0][1] != 3 {
		t.Errorf("unwritten range status %v, want hole", r.descs)
	}
	if r := c.do(cmdTrim, 0, 4096, 8192, nil); r.errno != 0 {
		t.Fatal(r.errno)
	}
	r = c.do(cmdBlockStatus, 0, 4096, 8192, nil)
	if len(r.descs) != 1 || r.descs[0] != [2]uint32{8192, 3} {
		t.Errorf("trimmed range status %v", r.descs)
	}
	if r := c.do(cmdWriteZeroes, 1<<4, 4096*4, 4096*2, nil); r.errno != 0 { // FAST_ZERO
		t.Errorf("fast zero on the store: errno %d", r.errno)
	}
	r = c.do(cmdRead, 0, 4096, 6*4096, nil)
	if r.errno != 0 {
		t.Fatal(r.errno)
	}
	if !bytes.Equal(r.data[:2*4096], make([]byte, 2*4096)) || !bytes.Equal(r.data[3*4096:5*4096], make([]byte, 2*4096)) ||
		!bytes.Equal(r.data[2*4096:3*4096], want[2*4096:3*4096]) {
		t.Error("trim/zero did not read back as zeros, or clobbered a neighbour")
	}
}

func TestStoreTamperingIsEIO(t *testing.T) {
	st, path := newStore(t, 4<<20)
	data := make([]byte, 1<<20)
	rand.Read(data)
	if _, err := st.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	if err := st.Flush(); err != nil {
		t.Fatal(err)
	}
	// Flip a byte in the last non-zero block of the device: a data or
	// metadata block written above (never a superblock, which come first).
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	last := -1
	for b := 2; b*4096 < len(raw); b++ {
		if !bytes.Equal(raw[b*4096:(b+1)*4096], make([]byte, 4096)) {
			last = b
		}
	}
	if last < 0 {
		t.Fatal("no written block found on the device")
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{raw[last*4096+100] ^ 0x40}, int64(last*4096+100)); err != nil {
		t.Fatal(err)
	}
	f.Close()

	srv := startServer(t, nbd.ServerOptions{
		Exports:   []nbd.Export{{Name: "s", Backend: st}},
		Grants:    []nbd.Grant{{Identity: nbd.AnyIdentity, Export: "s", Access: nbd.ReadOnly}},
		Plaintext: true,
	})
	for _, structured := range []bool{false, true} {
		c := dialExport(t, srv.addr, "s", structured)
		nEIO := 0
		for off := uint64(0); off < 1<<20; off += 4096 {
			r := c.do(cmdRead, 0, off, 4096, nil)
			switch {
			case r.errno == eio:
				nEIO++
			case r.errno != 0:
				t.Fatalf("read at %d: errno %d", off, r.errno)
			case !bytes.Equal(r.data, data[off:off+4096]):
				t.Fatalf("read at %d returned data that is not what was written", off)
			}
		}
		if nEIO == 0 {
			t.Fatalf("structured=%v: tampered device read back without any EIO", structured)
		}
		// The connection still works after the errors.
		if r := c.do(cmdRead, 0, 2<<20, 4096, nil); r.errno != 0 || !bytes.Equal(r.data, make([]byte, 4096)) {
			t.Fatalf("untouched range after integrity errors: errno %d", r.errno)
		}
	}
	if srv.Stats().IntegrityErrors == 0 {
		t.Error("integrity errors not counted")
	}
}
