// The race detector drops sync.Pool entries at random, so allocation counts
// mean nothing under it: this file is built into make test's plain pass
// only, not its -race pass.

//go:build !race

package wiring_test

import (
	"crypto/rand"
	"testing"
)

// TestStoreBackendAllocations checks that the adapter adds no allocation
// to reads, writes and block status.
func TestStoreBackendAllocations(t *testing.T) {
	be, st := newBackend(t)
	buf := make([]byte, 64<<10)
	rand.Read(buf)
	if _, err := st.WriteAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name            string
		adapter, direct func()
	}{
		{"ReadAt", func() { be.ReadAt(buf, 0) }, func() { st.ReadAt(buf, 0) }},
		{"WriteAt", func() { be.WriteAt(buf, 0) }, func() { st.WriteAt(buf, 0) }},
		{"BlockStatus", func() { be.BlockStatus(0, 1<<20) }, func() { st.BlockStatus(0, 1<<20) }},
	} {
		c.direct() // warm pools and caches
		direct := testing.AllocsPerRun(50, c.direct)
		adapter := testing.AllocsPerRun(50, c.adapter)
		if adapter > direct {
			t.Errorf("%s: %.1f allocations through the adapter, %.1f directly", c.name, adapter, direct)
		}
	}
}
