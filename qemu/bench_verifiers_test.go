package qemu_test

import (
	"testing"
	"time"
)

// BenchmarkBootVerifiers boots, side by side in each iteration, the
// appliance against one verifier process (1 of 1) and against three (2 of
// 3), each on its own provisioned disk, and reports QEMU start to "serving
// NBD" for both: serving-n1-s, serving-n3-s, and their ratio
// n3-over-n1. The agent attests to every verifier concurrently with one
// quote covering all their nonces, so the extra verifiers cost one more
// share import (TPM commands are serialised) and CPU, not two more
// attestations. One reference
// boot per chain before the timed iterations publishes the release (PCR 4
// from the boot) and provisions the store. Run with:
//
//	go test -run '^$' -bench BenchmarkBootVerifiers -benchtime 1x ./qemu
func BenchmarkBootVerifiers(b *testing.B) {
	one := newClusterChain(b, verifierNames[:1], 1, 0)
	three := newClusterChain(b, verifierNames, 2, 0)
	for _, c := range []*chain{one, three} {
		ref := c.boot(b, "")
		c.publish(b, ref)
		if _, err := ref.WaitForLine(servingRe, bootWithin); err != nil {
			b.Fatal(err)
		}
		ref.Close()
	}
	var n1, n3 time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, run := range []struct {
			c   *chain
			sum *time.Duration
		}{{one, &n1}, {three, &n3}} {
			m := run.c.boot(b, "")
			l, err := m.WaitForLine(servingRe, bootWithin)
			if err != nil {
				b.Fatal(err)
			}
			*run.sum += l.At
			m.Close()
		}
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(n1.Seconds()/n, "serving-n1-s")
	b.ReportMetric(n3.Seconds()/n, "serving-n3-s")
	b.ReportMetric(n3.Seconds()/n1.Seconds(), "n3-over-n1")
}
