package kernelclient

import (
	"encoding/binary"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

func request(typ uint16, cookie uint64, length uint32) []byte {
	h := make([]byte, requestHeaderLen)
	binary.BigEndian.PutUint32(h, requestMagic)
	binary.BigEndian.PutUint16(h[6:], typ)
	binary.BigEndian.PutUint64(h[8:], cookie)
	binary.BigEndian.PutUint32(h[24:], length)
	if typ == cmdWrite {
		h = append(h, make([]byte, length)...)
	}
	return h
}

func simpleReply(errno uint32, cookie uint64, payload int) []byte {
	h := make([]byte, replyHeaderLen)
	binary.BigEndian.PutUint32(h, simpleReplyMagic)
	binary.BigEndian.PutUint32(h[4:], errno)
	binary.BigEndian.PutUint64(h[8:], cookie)
	return append(h, make([]byte, payload)...)
}

// feed passes p to f in random pieces.
func feed(r *rand.Rand, f func([]byte), p []byte) {
	for len(p) > 0 {
		n := min(1+r.IntN(40), len(p))
		f(p[:n])
		p = p[n:]
	}
}

func TestTracker(t *testing.T) {
	for seed := range uint64(20) {
		r := rand.New(rand.NewPCG(seed, 2))
		clock := time.Unix(0, 0)
		k := newTracker()
		k.now = func() time.Time { return clock }

		var up []byte
		up = append(up, request(cmdRead, 1, 4096)...)
		up = append(up, request(cmdWrite, 2, 512)...)
		up = append(up, request(3, 3, 0)...) // flush
		up = append(up, request(cmdRead, 4, 8192)...)
		feed(r, k.toServer, up)

		clock = clock.Add(5 * time.Millisecond)
		var down []byte
		down = append(down, simpleReply(0, 2, 0)...)
		down = append(down, simpleReply(0, 1, 4096)...) // out of order, with its data
		feed(r, k.toKernel, down)
		clock = clock.Add(2 * time.Second)
		feed(r, k.toKernel, simpleReply(5, 4, 0)) // EIO: no payload follows
		feed(r, k.toServer, request(cmdDisc, 5, 0))

		got := k.traffic()
		want := Traffic{
			ToServer: int64(len(up) + requestHeaderLen), ToKernel: int64(len(down) + replyHeaderLen),
			Requests: 4, Replies: 3, Unanswered: 1, SlowestReply: 2*time.Second + 5*time.Millisecond,
		}
		if got != want {
			t.Fatalf("seed %d: traffic %+v, want %+v", seed, got, want)
		}
	}
}

func TestTrackerMalformed(t *testing.T) {
	k := newTracker()
	k.toServer(request(cmdRead, 1, 512))
	k.toKernel(simpleReply(0, 9, 0))
	if got := k.traffic().Malformed; !strings.Contains(got, "cookie 0x9") {
		t.Errorf("reply to an unknown cookie: Malformed = %q", got)
	}

	k = newTracker()
	bad := request(cmdRead, 1, 512)
	bad[0] ^= 0xff
	k.toServer(bad)
	k.toServer(request(cmdRead, 2, 512)) // ignored: the stream is lost
	if got := k.traffic(); !strings.Contains(got.Malformed, "request magic") || got.Requests != 0 {
		t.Errorf("bad request magic: %+v", got)
	}
}

// FuzzTracker feeds arbitrary bytes both ways: the tracker must not panic
// and must count every byte.
func FuzzTracker(f *testing.F) {
	f.Add(request(cmdWrite, 1, 16), simpleReply(0, 1, 0))
	f.Add(request(cmdRead, 7, 100), simpleReply(0, 7, 100))
	f.Add([]byte{0x25, 0x60}, []byte{0x67, 0x44, 0x66})
	f.Fuzz(func(t *testing.T, up, down []byte) {
		k := newTracker()
		k.toServer(up)
		k.toKernel(down)
		got := k.traffic()
		if got.ToServer != int64(len(up)) || got.ToKernel != int64(len(down)) {
			t.Fatalf("counted %d and %d bytes, fed %d and %d", got.ToServer, got.ToKernel, len(up), len(down))
		}
		if got.Unanswered != got.Requests-got.Replies {
			t.Fatalf("%+v: unanswered is not requests minus replies", got)
		}
	})
}
