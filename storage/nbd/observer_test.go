package nbd_test

import (
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dataembassy/embassy/storage/nbd"
)

// observed is one Observer.Request call.
type observed struct {
	export, command string
	bytes           int
	failed          bool
	integrity       bool
}

// recorder is an Observer that keeps every call.
type recorder struct {
	mu    sync.Mutex
	calls []observed
}

func (r *recorder) Request(export, command string, bytes int, d time.Duration, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, observed{export, command, bytes, err != nil, errors.Is(err, nbd.ErrIntegrity)})
}

func TestObserverSeesEveryRequest(t *testing.T) {
	mem := newMem(1 << 20)
	mem.badOff[64<<10] = true
	rec := &recorder{}
	srv := startServer(t, nbd.ServerOptions{
		Exports:   []nbd.Export{{Name: "mem", Backend: mem}},
		Grants:    []nbd.Grant{{Identity: nbd.AnyIdentity, Export: "mem", Access: nbd.ReadWrite}},
		Plaintext: true,
		Observer:  rec,
	})
	c := dialExport(t, srv.addr, "mem", true)
	steps := []struct {
		typ, flags uint16
		off        uint64
		length     uint32
		data       []byte
		want       observed
		errno      bool
	}{
		{typ: cmdWrite, off: 0, length: 8192, data: make([]byte, 8192), want: observed{"mem", "write", 8192, false, false}},
		{typ: cmdWrite, flags: flagFUA, off: 8192, length: 4096, data: make([]byte, 4096), want: observed{"mem", "write", 4096, false, false}},
		{typ: cmdRead, off: 0, length: 4096, want: observed{"mem", "read", 4096, false, false}},
		{typ: cmdFlush, want: observed{"mem", "flush", 0, false, false}},
		{typ: cmdTrim, off: 0, length: 4096, want: observed{"mem", "trim", 0, false, false}},
		{typ: cmdWriteZeroes, off: 0, length: 4096, want: observed{"mem", "write_zeroes", 0, false, false}},
		{typ: cmdCache, off: 0, length: 4096, want: observed{"mem", "cache", 0, false, false}},
		{typ: cmdBlockStatus, off: 0, length: 4096, want: observed{"mem", "block_status", 0, false, false}},
		{typ: cmdRead, off: 1 << 20, length: 4096, want: observed{"mem", "read", 0, true, false}, errno: true},
		{typ: cmdRead, off: 64 << 10, length: 4096, want: observed{"mem", "read", 0, true, true}, errno: true},
		{typ: 99, want: observed{"mem", "unknown", 0, true, false}, errno: true},
	}
	for i, s := range steps {
		r := c.do(s.typ, s.flags, s.off, s.length, s.data)
		if (r.errno != 0) != s.errno {
			t.Fatalf("step %d (%s): errno %d", i, s.want.command, r.errno)
		}
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	var want []observed
	for _, s := range steps {
		want = append(want, s.want)
	}
	if !slices.Equal(rec.calls, want) {
		t.Fatalf("observed\n%v\nwant\n%v", rec.calls, want)
	}
	if st := srv.Stats(); st.Requests != uint64(len(steps)) {
		t.Fatalf("Stats.Requests %d, want %d", st.Requests, len(steps))
	}
}

// countObserver is the cheapest useful Observer, for the benchmarks: what
// they measure is the hook's own cost.
type countObserver struct{ n, bytes atomic.Int64 }

func (o *countObserver) Request(_, _ string, bytes int, _ time.Duration, _ error) {
	o.n.Add(1)
	o.bytes.Add(int64(bytes))
}
