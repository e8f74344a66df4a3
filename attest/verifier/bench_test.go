package verifier_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/dataembassy/embassy/attest/protocol"
	"github.com/dataembassy/embassy/attest/verifier"
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func benchPurpose() protocol.Purpose {
	if p := protocol.Purpose(os.Getenv("EMBASSY_BENCH_PURPOSE")); p != "" {
		return p
	}
	return protocol.PurposeUnlock
}

// prepareAttestations starts a verifier with nApp enrolled swtpm appliances
// and makes n attestation request bodies ahead (round-robin over the
// appliances), each over its own single-use nonce.
func prepareAttestations(b *testing.B, nApp, n int, purpose protocol.Purpose) (*fixture, [][]byte) {
	b.Helper()
	f := newFixtureAt(b, newDSN(b, "EMBASSY_BENCH_DB"))
	f.opts.NonceTTL = time.Hour
	f.restart()
	c := f.raw()
	apps := make([]*appliance, nApp)
	for i := range apps {
		apps[i] = f.enrolled(fmt.Sprintf("rack%d", i))
	}
	bodies := make([][]byte, n)
	start := time.Now()
	for i := range bodies {
		ap := apps[i%nApp]
		bodies[i], _ = json.Marshal(quote(b, ap, c.nonce(ap.id), purpose, 0))
	}
	b.Logf("prepared %d quotes on %d swtpm in %s", n, nApp, time.Since(start).Round(time.Millisecond))
	return f, bodies
}

// BenchmarkVerifierLoad is the verifier's load test: quotes are made ahead
// on several swtpm instances (one per appliance, each over its own
// single-use nonce), then many concurrent clients present them over HTTPS
// (TLS 1.3, keep-alive) and every decision is written to the audit log.
// It ignores b.N; run it with -benchtime=1x. Reported: attestations/s and
// p50/p99 latency per request.
//
// With EMBASSY_BENCH_SERVERS=2, two verifier servers, each with a
// connection pool of its own, share the database (as two verifier
// processes would; both in this process, on its CPUs) and the clients
// spread their requests over both.
//
//	EMBASSY_BENCH_APPLIANCES (default 4), EMBASSY_BENCH_ATTESTATIONS (2000),
//	EMBASSY_BENCH_CLIENTS (32), EMBASSY_BENCH_PURPOSE (unlock|heartbeat),
//	EMBASSY_BENCH_DB (sqlite|postgres), EMBASSY_BENCH_SERVERS (1|2)
func BenchmarkVerifierLoad(b *testing.B) {
	nApp := envInt("EMBASSY_BENCH_APPLIANCES", 4)
	total := envInt("EMBASSY_BENCH_ATTESTATIONS", 2000)
	clients := envInt("EMBASSY_BENCH_CLIENTS", 32)
	nSrv := envInt("EMBASSY_BENCH_SERVERS", 1)
	purpose := benchPurpose()
	f, bodies := prepareAttestations(b, nApp, total, purpose)
	urls := []string{f.srv.URL}
	for len(urls) < nSrv {
		urls = append(urls, f.twin().srv.URL)
	}

	tr := f.srv.Client().Transport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = clients
	hc := &http.Client{Transport: tr}
	lat := make([]time.Duration, total)
	var next atomic.Int64
	var failed atomic.Int64
	var wg sync.WaitGroup
	var ru0, ru1 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	b.ResetTimer()
	t0 := time.Now()
	for w := 0; w < clients; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= total {
					return
				}
				s := time.Now()
				res, err := hc.Post(urls[i%len(urls)]+protocol.PathAttest, "application/json", bytes.NewReader(bodies[i]))
				if err != nil {
					failed.Add(1)
					continue
				}
				var resp protocol.AttestResponse
				if res.StatusCode != http.StatusOK || json.NewDecoder(res.Body).Decode(&resp) != nil || resp.AuditSeq == 0 {
					if failed.Add(1) == 1 {
						b.Logf("first failure: HTTP %d", res.StatusCode)
					}
				}
				res.Body.Close()
				lat[i] = time.Since(s)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(t0)
	b.StopTimer()
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	cpu := time.Duration(ru1.Utime.Nano()+ru1.Stime.Nano()-ru0.Utime.Nano()-ru0.Stime.Nano()) / time.Duration(total)
	if n := failed.Load(); n > 0 {
		b.Fatalf("%d of %d attestations failed", n, total)
	}
	slices.Sort(lat)
	rate := float64(total) / elapsed.Seconds()
	p50, p99 := lat[total/2], lat[total*99/100]
	b.ReportMetric(rate, "attest/s")
	b.ReportMetric(float64(p50.Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(p99.Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(cpu.Microseconds())/1000, "cpu-ms/attest")
	b.ReportMetric(0, "ns/op")
	b.Logf("%s x%d, %s: %d attestations, %d appliances, %d clients: %.0f/s, p50 %s, p99 %s, process CPU %s per attestation (server and load clients)",
		backend("EMBASSY_BENCH_DB"), nSrv, purpose, total, nApp, clients, rate, p50, p99, cpu)
	// Every decision is in the audit log and the chain is intact.
	rep, err := f.db.VerifyAudit(context.Background(), 0, "")
	if err != nil || len(rep.Problems) != 0 {
		b.Fatalf("audit: %v %+v", err, rep)
	}
	recs, _ := f.db.AuditRecords(context.Background(), verifier.AuditFilter{})
	ok := 0
	for _, r := range recs {
		if r.Action == "attest-"+string(purpose) && r.Outcome == "ok" {
			ok++
		}
	}
	if ok != total {
		b.Fatalf("%d audit records of successful attestations, want %d", ok, total)
	}
}

// BenchmarkAttestHandler is the server's own share of one full verification
// (the same checks and write transaction as BenchmarkVerifierLoad, without
// TLS, the HTTP transport or the load clients): quotes made ahead (not
// timed) are presented one at a time to the server's http.Handler. Quotes
// are single-use, so b.N of them are made: run with -benchtime=Nx.
// Reported: wall time and process CPU time per attestation.
func BenchmarkAttestHandler(b *testing.B) {
	f, bodies := prepareAttestations(b, 2, b.N, benchPurpose())
	h := f.srv.Config.Handler
	var ru0, ru1 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	b.ResetTimer()
	for i := range b.N {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, protocol.PathAttest, bytes.NewReader(bodies[i])))
		if rec.Code != http.StatusOK {
			b.Fatalf("attestation %d: HTTP %d: %s", i, rec.Code, rec.Body)
		}
	}
	b.StopTimer()
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	cpu := time.Duration(ru1.Utime.Nano()+ru1.Stime.Nano()-ru0.Utime.Nano()-ru0.Stime.Nano()) / time.Duration(b.N)
	b.ReportMetric(float64(cpu.Microseconds())/1000, "cpu-ms/attest")
}
