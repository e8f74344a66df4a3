package verifier_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/dataembassy/embassy/attest/agent"
	"github.com/dataembassy/embassy/attest/tpm/swtpmtest"
)

// BenchmarkUnlockVerifiers is the threshold mode of the verifier benchmark:
// the wall time of agent.Unlock (every verifier's nonce, quote, checks and
// grant, the imports, the combination and the KEK) for one appliance
// against 1 verifier (1 of 1) and against 3 (2 of 3), in-process verifiers
// over HTTPS, each on its own database. The two are measured alternately
// in one run, so machine noise hits both alike; the reboots between unlocks
// (phase PCR reset) are not timed. It ignores b.N; run with -benchtime=1x.
// Reported: p50 and p99 of each and the p99 ratio (target <= 1.5).
//
//	EMBASSY_BENCH_UNLOCKS (default 40 of each)
func BenchmarkUnlockVerifiers(b *testing.B) {
	rounds := envInt("EMBASSY_BENCH_UNLOCKS", 40)
	type setup struct {
		name   string
		c      *cluster
		sw     *swtpmtest.TPM
		sealed *agent.Sealed
		lat    []time.Duration
	}
	setups := []*setup{{name: "n1"}, {name: "n3"}}
	for i, s := range setups {
		k, n := 1, 1
		if i == 1 {
			k, n = 2, 3
		}
		s.c = newCluster(b, k, n)
		s.sw = swtpmtest.Start(b)
		a := s.c.enroll("rack1", s.sw, nil)
		u, err := a.Unlock(context.Background(), 0, nil)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := a.Heartbeat(context.Background(), 1, nil); err != nil { // the store exists
			b.Fatal(err)
		}
		s.sealed = u.Sealed
	}
	ctx := context.Background()
	b.ResetTimer()
	for range rounds {
		for _, s := range setups {
			b.StopTimer()
			s.sw.Reboot()
			a := s.c.boot("rack1", s.sw)
			b.StartTimer()
			t0 := time.Now()
			if _, err := a.Unlock(ctx, 1, s.sealed); err != nil {
				b.Fatalf("%s: %v", s.name, err)
			}
			s.lat = append(s.lat, time.Since(t0))
		}
	}
	b.StopTimer()
	p := func(lat []time.Duration, q int) time.Duration {
		l := slices.Clone(lat)
		slices.Sort(l)
		return l[(len(l)-1)*q/100]
	}
	for _, s := range setups {
		b.ReportMetric(float64(p(s.lat, 50).Microseconds())/1000, s.name+"-p50-ms")
		b.ReportMetric(float64(p(s.lat, 99).Microseconds())/1000, s.name+"-p99-ms")
	}
	ratio := float64(p(setups[1].lat, 99)) / float64(p(setups[0].lat, 99))
	b.ReportMetric(ratio, "p99-ratio")
	b.ReportMetric(0, "ns/op")
	b.Logf("%d unlocks each: 1 of 1 p50 %s p99 %s; 2 of 3 p50 %s p99 %s; p99 ratio %.2f",
		rounds, p(setups[0].lat, 50), p(setups[0].lat, 99), p(setups[1].lat, 50), p(setups[1].lat, 99), ratio)
}
