package kernelclient

import (
	"encoding/binary"
	"fmt"
	"sync"
	"time"
)

// Transmission-phase wire constants the proxy's tracker reads.
const (
	requestMagic     = 0x25609513
	simpleReplyMagic = 0x67446698
	requestHeaderLen = 28
	replyHeaderLen   = 16

	cmdRead  = 0
	cmdWrite = 1
	cmdDisc  = 2
)

// Traffic is what the proxy relayed on one connection, in bytes and as
// NBD requests and replies. The kernel sends simple replies only, which
// is what the tracker follows.
type Traffic struct {
	// ToServer and ToKernel are the bytes relayed each way.
	ToServer, ToKernel int64
	// Requests counts requests relayed to the server (NBD_CMD_DISC, which
	// has no reply, excluded); Replies the replies relayed to the kernel.
	Requests, Replies int
	// Unanswered counts requests relayed whose reply has not been.
	Unanswered int
	// SlowestReply is the longest time from relaying a request to
	// relaying its reply.
	SlowestReply time.Duration
	// Malformed describes the first framing error (a bad magic, a reply
	// to no pending request); tracking stops there.
	Malformed string
}

// tracker follows one connection's transmission stream through the proxy.
// It is safe for the two directions to feed it concurrently.
type tracker struct {
	mu      sync.Mutex
	now     func() time.Time
	pending map[uint64]pending // by cookie
	up      framer             // requests: 28-byte header, write payload
	down    framer             // simple replies: 16-byte header, read payload
	t       Traffic
}

type pending struct {
	at      time.Time
	readLen uint32 // payload length of the reply, for a read
}

// framer cuts a stream into headers and the payloads that follow them.
type framer struct {
	hdr  []byte // the header so far
	skip int64  // payload bytes still to pass over
}

// next consumes p up to the end of the next complete header, which it
// returns (nil if p ended first), and the rest of p.
func (f *framer) next(p []byte, size int) (hdr, rest []byte) {
	if n := min(f.skip, int64(len(p))); n > 0 {
		f.skip -= n
		p = p[n:]
	}
	if len(p) == 0 {
		return nil, nil
	}
	n := min(size-len(f.hdr), len(p))
	f.hdr = append(f.hdr, p[:n]...)
	if len(f.hdr) < size {
		return nil, nil
	}
	hdr, f.hdr = f.hdr, f.hdr[:0:0]
	return hdr, p[n:]
}

func newTracker() *tracker {
	return &tracker{now: time.Now, pending: map[uint64]pending{}}
}

// toServer records bytes relayed from the kernel to the server.
func (k *tracker) toServer(p []byte) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.t.ToServer += int64(len(p))
	k.eachHeader(&k.up, p, requestHeaderLen, requestMagic, "request", func(h []byte) {
		typ := binary.BigEndian.Uint16(h[6:])
		length := binary.BigEndian.Uint32(h[24:])
		if typ == cmdDisc {
			return
		}
		if typ == cmdWrite {
			k.up.skip = int64(length)
		}
		r := pending{at: k.now()}
		if typ == cmdRead {
			r.readLen = length
		}
		k.pending[binary.BigEndian.Uint64(h[8:])] = r
		k.t.Requests++
	})
}

// toKernel records bytes relayed from the server to the kernel.
func (k *tracker) toKernel(p []byte) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.t.ToKernel += int64(len(p))
	k.eachHeader(&k.down, p, replyHeaderLen, simpleReplyMagic, "reply", func(h []byte) {
		cookie := binary.BigEndian.Uint64(h[8:])
		r, ok := k.pending[cookie]
		if !ok {
			k.t.Malformed = fmt.Sprintf("reply to cookie %#x, which no pending request has", cookie)
			return
		}
		delete(k.pending, cookie)
		if binary.BigEndian.Uint32(h[4:]) == 0 { // no error: a read's data follows
			k.down.skip = int64(r.readLen)
		}
		k.t.Replies++
		k.t.SlowestReply = max(k.t.SlowestReply, k.now().Sub(r.at))
	})
}

// eachHeader passes each complete header in p (after the payload still
// to skip) to each, once its magic is checked. A framing error stops the
// tracking for good.
func (k *tracker) eachHeader(f *framer, p []byte, size int, magic uint32, what string, each func(h []byte)) {
	for k.t.Malformed == "" {
		var h []byte
		if h, p = f.next(p, size); h == nil {
			return
		}
		if m := binary.BigEndian.Uint32(h); m != magic {
			k.t.Malformed = fmt.Sprintf("%s magic %#x", what, m)
			return
		}
		each(h)
	}
}

// traffic returns what was relayed so far.
func (k *tracker) traffic() Traffic {
	k.mu.Lock()
	defer k.mu.Unlock()
	t := k.t
	t.Unanswered = len(k.pending)
	return t
}
