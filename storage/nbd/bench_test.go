package nbd_test

import (
	"testing"
	"time"

	"github.com/dataembassy/embassy/storage/nbd"
)

// benchQD keeps depth requests in flight over loopback against an
// in-memory backend and reports the server's per-request cost (client
// included: both run in this process).
func benchQD(b *testing.B, typ uint16, size uint32, depth int, structured bool) {
	srv := plainServer(b, newMem(64<<20), 32)
	benchConn(b, dialExport(b, srv.addr, "mem", structured), typ, size, depth)
}

// benchObservedQD is benchQD with an Observer set: beside benchQD it
// shows the cost of the observer hook itself (clock reads, the call).
func benchObservedQD(b *testing.B, typ uint16, size uint32, depth int) {
	obs := &countObserver{}
	srv := startServer(b, nbd.ServerOptions{
		Exports:    []nbd.Export{{Name: "mem", Backend: newMem(64 << 20)}},
		Grants:     []nbd.Grant{{Identity: nbd.AnyIdentity, Export: "mem", Access: nbd.ReadWrite}},
		Plaintext:  true,
		QueueDepth: 32,
		MaxPayload: 1 << 20,
		Observer:   obs,
	})
	benchConn(b, dialExport(b, srv.addr, "mem", false), typ, size, depth)
	if obs.n.Load() < int64(b.N) {
		b.Fatalf("observer saw %d requests of %d", obs.n.Load(), b.N)
	}
}

// benchFileQD is benchQD against a plain file (whose cached reads and
// whole-page writes the connection's reader serves itself).
func benchFileQD(b *testing.B, typ uint16, size uint32, depth int) {
	disk, _ := tempFile(b, 64<<20)
	srv := startServer(b, nbd.ServerOptions{
		Exports:    []nbd.Export{{Name: "disk", Backend: disk}},
		Grants:     []nbd.Grant{{Identity: nbd.AnyIdentity, Export: "disk", Access: nbd.ReadWrite}},
		Plaintext:  true,
		MaxPayload: 1 << 20,
	})
	c := dialExport(b, srv.addr, "disk", true)
	if typ == cmdRead {
		fill(b, c) // allocate and cache the whole file first
	}
	benchConn(b, c, typ, size, depth)
}

// fill writes the whole 64 MiB export.
func fill(b *testing.B, c *client) {
	buf := make([]byte, 1<<20)
	for off := uint64(0); off < 64<<20; off += 1 << 20 {
		if r := c.do(cmdWrite, 0, off, 1<<20, buf); r.errno != 0 {
			b.Fatalf("fill: errno %d", r.errno)
		}
	}
}

func benchConn(b *testing.B, c *client, typ uint16, size uint32, depth int) {
	c.nc.SetDeadline(time.Time{})
	var payload []byte
	if typ == cmdWrite {
		payload = make([]byte, size)
	}
	blocks := uint64(64<<20) / uint64(size)
	next := uint64(0)
	send := func() {
		off := (next * 7919 % blocks) * uint64(size)
		c.send(typ, 0, next, off, size, payload)
		next++
	}
	b.SetBytes(int64(size))
	b.ResetTimer()
	for i := 0; i < depth && i < b.N; i++ {
		send()
	}
	for i := 0; i < b.N; i++ {
		if r := c.recv(); r.errno != 0 {
			b.Fatalf("errno %d", r.errno)
		}
		if int(next) < b.N {
			send()
		}
	}
}

func BenchmarkRead4KQD32(b *testing.B)       { benchQD(b, cmdRead, 4096, 32, false) }
func BenchmarkRead4KQD32Struct(b *testing.B) { benchQD(b, cmdRead, 4096, 32, true) }
func BenchmarkWrite4KQD32(b *testing.B)      { benchQD(b, cmdWrite, 4096, 32, false) }
func BenchmarkRead1MQD8Struct(b *testing.B)  { benchQD(b, cmdRead, 1<<20, 8, true) }
func BenchmarkWrite1MQD8(b *testing.B)       { benchQD(b, cmdWrite, 1<<20, 8, false) }

func BenchmarkRead4KQD32Observed(b *testing.B)  { benchObservedQD(b, cmdRead, 4096, 32) }
func BenchmarkWrite4KQD32Observed(b *testing.B) { benchObservedQD(b, cmdWrite, 4096, 32) }

func BenchmarkFileRead1MQD8(b *testing.B)  { benchFileQD(b, cmdRead, 1<<20, 8) }
func BenchmarkFileWrite1MQD8(b *testing.B) { benchFileQD(b, cmdWrite, 1<<20, 8) }

// benchStoreQD is benchQD against the authenticated store, as the
// appliance serves it (through appliance/wiring's adapter).
func benchStoreQD(b *testing.B, typ uint16, size uint32, depth int) {
	st, _ := newStore(b, 64<<20)
	srv := startServer(b, nbd.ServerOptions{
		Exports:   []nbd.Export{{Name: "store", Backend: st}},
		Grants:    []nbd.Grant{{Identity: nbd.AnyIdentity, Export: "store", Access: nbd.ReadWrite}},
		Plaintext: true,
	})
	c := dialExport(b, srv.addr, "store", true)
	if typ == cmdRead {
		fill(b, c) // reads then decrypt every block
	}
	benchConn(b, c, typ, size, depth)
}

func BenchmarkStoreRead4KQD32(b *testing.B)  { benchStoreQD(b, cmdRead, 4096, 32) }
func BenchmarkStoreWrite4KQD32(b *testing.B) { benchStoreQD(b, cmdWrite, 4096, 32) }
func BenchmarkStoreRead1MQD8(b *testing.B)   { benchStoreQD(b, cmdRead, 1<<20, 8) }
func BenchmarkStoreWrite1MQD8(b *testing.B)  { benchStoreQD(b, cmdWrite, 1<<20, 8) }
