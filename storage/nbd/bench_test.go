package nbd_test

import (
	"testing"
	"time"
)

// benchQD keeps depth requests in flight over loopback against an
// in-memory backend and reports the server's per-request cost (client
// included: both run in this process).
func benchQD(b *testing.B, typ uint16, size uint32, depth int, structured bool) {
	mem := newMem(64 << 20)
	srv := plainServer(b, mem, 32)
	c := dialExport(b, srv.addr, "mem", structured)
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
