package kernelclient_test

import (
	"bytes"
	"testing"

	"github.com/dataembassy/embassy/storage/nbd/internal/kernelclient"
)

func TestPlan(t *testing.T) {
	if _, err := kernelclient.Plan(kernelclient.MinSize - 1); err == nil {
		t.Error("Plan accepted an export below MinSize")
	}
	steps, err := kernelclient.Plan(kernelclient.MinSize)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[kernelclient.Kind]int{}
	for _, s := range steps {
		kinds[s.Kind]++
		if s.Off+s.Len > kernelclient.MinSize {
			t.Errorf("step %s ends at %d, beyond MinSize", s.Name, s.Off+s.Len)
		}
		if s.Kind != kernelclient.DirectWrite && s.Kind != kernelclient.BufferedWrite {
			continue
		}
		// Each write step's requests cover its range exactly once.
		covered := make([]int, s.Len)
		for _, r := range s.Requests() {
			if s.Kind == kernelclient.DirectWrite && (r[0]%512 != 0 || r[1]%512 != 0) {
				t.Errorf("step %s: O_DIRECT request %d@%d not sector aligned", s.Name, r[1], r[0])
			}
			for i := r[0]; i < r[0]+r[1]; i++ {
				covered[i-s.Off]++
			}
		}
		for i, n := range covered {
			if n != 1 {
				t.Fatalf("step %s: byte %d written %d times", s.Name, s.Off+int64(i), n)
			}
		}
	}
	for _, k := range []kernelclient.Kind{kernelclient.DirectWrite, kernelclient.BufferedWrite, kernelclient.Sync, kernelclient.Discard} {
		if kinds[k] == 0 {
			t.Errorf("plan has no step of kind %d", k)
		}
	}
	// The 512-byte step interleaves: its second request is not adjacent
	// to its first.
	r := steps[0].Requests()
	if steps[0].IO != 512 || r[1][0]-r[0][0] == 512 {
		t.Errorf("first step %+v does not interleave 512-byte requests: %v", steps[0], r[:2])
	}
}

func TestExpected(t *testing.T) {
	seed := kernelclient.Seed("x")
	if seed == kernelclient.Seed("y") {
		t.Fatal("seeds of different exports collide")
	}
	img, err := kernelclient.Expected(seed, kernelclient.MinSize)
	if err != nil {
		t.Fatal(err)
	}
	steps, _ := kernelclient.Plan(kernelclient.MinSize)
	var discard kernelclient.Step
	for _, s := range steps {
		if s.Kind == kernelclient.Discard {
			discard = s
		}
	}
	if !bytes.Equal(img[discard.Off:discard.Off+discard.Len], make([]byte, discard.Len)) {
		t.Error("discarded range is not zero")
	}
	// Written bytes around the discard keep the pattern.
	want := make([]byte, 4096)
	kernelclient.Pattern(seed, discard.Off-4096, want)
	if !bytes.Equal(img[discard.Off-4096:discard.Off], want) {
		t.Error("bytes before the discard lost the pattern")
	}
	// Every sector of the pattern differs from its neighbour.
	a, b := make([]byte, 512), make([]byte, 512)
	kernelclient.Pattern(seed, 0, a)
	kernelclient.Pattern(seed, 512, b)
	if bytes.Equal(a, b) {
		t.Error("pattern repeats every sector")
	}
	// Never written: zero.
	if !bytes.Equal(img[7<<20:], make([]byte, kernelclient.MinSize-7<<20)) {
		t.Error("unwritten tail is not zero")
	}
}
