package verifier_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
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

// prepareAttestations starts an in-process verifier on dsn with nApp
// enrolled swtpm appliances and makes n attestation request bodies ahead
// (round-robin over the appliances), each over its own single-use nonce.
func prepareAttestations(b *testing.B, dsn string, nApp, n int, purpose protocol.Purpose) (*fixture, [][]byte) {
	b.Helper()
	f := newFixtureAt(b, dsn)
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

// loadConfig is one configuration of BenchmarkVerifierLoad.
type loadConfig struct {
	name  string // sqlite, or postgres-xN
	procs int    // verifier processes on PostgreSQL; 0: in-process on SQLite
}

// loadConfigs parses EMBASSY_BENCH_CONFIGS, a comma-separated list of
// "sqlite" and "postgres:N".
func loadConfigs(b *testing.B) []loadConfig {
	b.Helper()
	spec := os.Getenv("EMBASSY_BENCH_CONFIGS")
	if spec == "" {
		spec = "sqlite,postgres:1,postgres:2"
	}
	var cs []loadConfig
	for _, c := range strings.Split(spec, ",") {
		db, n, _ := strings.Cut(c, ":")
		k, err := strconv.Atoi(n)
		switch {
		case db == "sqlite" && n == "":
			cs = append(cs, loadConfig{name: "sqlite"})
		case db == "postgres" && err == nil && k > 0:
			cs = append(cs, loadConfig{name: fmt.Sprintf("postgres-x%d", k), procs: k})
		default:
			b.Fatalf("EMBASSY_BENCH_CONFIGS: %q: want sqlite or postgres:N (N verifier processes)", c)
		}
	}
	return cs
}

// loadResult is what one configuration of BenchmarkVerifierLoad measured.
type loadResult struct {
	rate     float64 // attestations per second
	p50, p99 time.Duration
}

// BenchmarkVerifierLoad is the verifier's load test: quotes are made ahead
// on several swtpm instances (one per appliance, each over its own
// single-use nonce), then many concurrent clients present them over HTTPS
// (TLS 1.3, keep-alive) and every decision is written to the audit log.
// It ignores b.N; run it with -benchtime=1x. Each configuration is a
// sub-benchmark:
//
//   - sqlite: a verifier.Server in this process on a SQLite file;
//   - postgres-xN: N real embassy-verifier processes (built from
//     cmd/embassy-verifier) on one PostgreSQL database of the test
//     binary's cluster (internal/pgtest); quote i is made over a nonce of
//     process i mod N and presented to it.
//
// Reported: attestations/s and p50/p99 latency per request, and CPU time
// per attestation: on SQLite of this process (server and load clients);
// on PostgreSQL of the verifier processes, of the PostgreSQL server's
// processes and of this process (the load clients), each also printed in
// seconds. postgres-xN after postgres-x1 also reports its throughput as a
// multiple of postgres-x1's (x-vs-x1).
//
//	EMBASSY_BENCH_APPLIANCES (default 4), EMBASSY_BENCH_ATTESTATIONS (2000),
//	EMBASSY_BENCH_CLIENTS (32), EMBASSY_BENCH_PURPOSE (unlock|heartbeat),
//	EMBASSY_BENCH_CONFIGS (sqlite,postgres:1,postgres:2)
func BenchmarkVerifierLoad(b *testing.B) {
	results := map[int]loadResult{} // by verifier processes
	for _, c := range loadConfigs(b) {
		b.Run(c.name, func(b *testing.B) {
			if c.procs == 0 {
				benchSQLiteLoad(b)
				return
			}
			r := benchProcessLoad(b, c.procs)
			results[c.procs] = r
			if one, ok := results[1]; ok && c.procs > 1 {
				b.ReportMetric(r.rate/one.rate, "x-vs-x1")
				b.Logf("postgres, %d processes against 1 in this run: %.2fx the attestations/s (%.0f/s against %.0f/s)",
					c.procs, r.rate/one.rate, r.rate, one.rate)
			}
		})
	}
}

// benchSQLiteLoad is BenchmarkVerifierLoad's sqlite configuration.
func benchSQLiteLoad(b *testing.B) {
	nApp, total, clients, purpose := loadKnobs()
	f, bodies := prepareAttestations(b, filepath.Join(b.TempDir(), "verifier.db"), nApp, total, purpose)
	tr := f.srv.Client().Transport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = clients
	hc := &http.Client{Transport: tr}
	var ru0, ru1 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	r := runLoad(b, clients, total, func(i int) (*http.Response, error) {
		return hc.Post(f.srv.URL+protocol.PathAttest, "application/json", bytes.NewReader(bodies[i]))
	})
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	cpu := rusageCPU(ru1) - rusageCPU(ru0)
	b.ReportMetric(perAttestation(cpu, total), "cpu-ms/attest")
	b.Logf("sqlite, in-process, %s: %d attestations, %d appliances, %d clients: %.0f/s, p50 %s, p99 %s, process CPU %s per attestation (server and load clients)",
		purpose, total, nApp, clients, r.rate, r.p50, r.p99, cpu/time.Duration(total))
	checkAudit(b, f, total, purpose)
}

// benchProcessLoad is BenchmarkVerifierLoad's postgres-xN configuration.
func benchProcessLoad(b *testing.B, nProc int) loadResult {
	nApp, total, clients, purpose := loadKnobs()
	f, procs, apps := sharedPostgres(b, nApp, nProc)
	start := time.Now()
	qs := quotes(b, procs, apps, total, purpose)
	bodies := make([][]byte, total)
	for i, q := range qs {
		bodies[i], _ = json.Marshal(q)
	}
	b.Logf("prepared %d quotes on %d swtpm in %s", total, nApp, time.Since(start).Round(time.Millisecond))
	for _, p := range procs {
		warmUp(b, p, clients, apps[0].id)
	}
	verifiers := func() []time.Duration {
		d := make([]time.Duration, nProc)
		for i, p := range procs {
			d[i] = processCPU(b, p.cmd.Process.Pid)
		}
		return d
	}
	var ru0, ru1 syscall.Rusage
	v0, pg0, m0 := verifiers(), postgresCPU(b), readMachineTimes(b)
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	r := runLoad(b, clients, total, func(i int) (*http.Response, error) {
		p := procs[i%nProc]
		return p.hc.Post(p.url+protocol.PathAttest, "application/json", bytes.NewReader(bodies[i]))
	})
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	v1, pg1, m1 := verifiers(), postgresCPU(b), readMachineTimes(b)
	idle, steal := m1.idleSteal(m0)
	clientCPU, pgCPU := rusageCPU(ru1)-rusageCPU(ru0), pg1-pg0
	var verCPU time.Duration
	each := make([]string, nProc)
	for i := range v1 {
		verCPU += v1[i] - v0[i]
		each[i] = (v1[i] - v0[i]).String()
	}
	wall := time.Duration(float64(total) / r.rate * float64(time.Second))
	all := verCPU + pgCPU + clientCPU
	b.ReportMetric(perAttestation(verCPU, total), "verifier-cpu-ms/attest")
	b.ReportMetric(perAttestation(pgCPU, total), "pg-cpu-ms/attest")
	b.ReportMetric(perAttestation(clientCPU, total), "client-cpu-ms/attest")
	b.ReportMetric(perAttestation(all, total), "cpu-ms/attest")
	b.Logf("postgres-x%d (verifier processes), %s: %d attestations, %d appliances, %d clients: %.0f/s, p50 %s, p99 %s",
		nProc, purpose, total, nApp, clients, r.rate, r.p50, r.p99)
	b.Logf("postgres-x%d, %s: CPU over the %d attestations (%s wall, %d cores): verifier processes %s (%s), PostgreSQL server %s, load clients %s; %s in all, %.0f%% of the cores; machine %.0f%% idle, %.0f%% steal",
		nProc, purpose, total, wall.Round(time.Millisecond), runtime.NumCPU(), verCPU, strings.Join(each, " + "), pgCPU, clientCPU, all,
		100*all.Seconds()/(wall.Seconds()*float64(runtime.NumCPU())), idle, steal)
	checkAudit(b, f, total, purpose)
	return r
}

// warmUp opens clients connections to p, as the load will, and p's
// connections to the database, with nonce requests (not timed).
func warmUp(b *testing.B, p *verifierProc, clients int, id string) {
	b.Helper()
	var failed atomic.Int64
	var wg sync.WaitGroup
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 4 {
				var n protocol.NonceResponse
				if code, _ := p.post(protocol.PathNonce, &protocol.NonceRequest{ApplianceID: id}, &n); code != http.StatusOK {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if n := failed.Load(); n > 0 {
		b.Fatalf("warm-up: %d nonce requests to %s failed:\n%s", n, p.url, p.output())
	}
}

func loadKnobs() (nApp, total, clients int, purpose protocol.Purpose) {
	return envInt("EMBASSY_BENCH_APPLIANCES", 4), envInt("EMBASSY_BENCH_ATTESTATIONS", 2000),
		envInt("EMBASSY_BENCH_CLIENTS", 32), benchPurpose()
}

// runLoad sends requests 0..total-1 with post from clients goroutines and
// times them; any failure fails b.
func runLoad(b *testing.B, clients, total int, post func(i int) (*http.Response, error)) loadResult {
	b.Helper()
	lat := make([]time.Duration, total)
	var next, failed atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	t0 := time.Now()
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= total {
					return
				}
				s := time.Now()
				res, err := post(i)
				if err != nil {
					if failed.Add(1) == 1 {
						b.Logf("first failure: %v", err)
					}
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
	if n := failed.Load(); n > 0 {
		b.Fatalf("%d of %d attestations failed", n, total)
	}
	slices.Sort(lat)
	r := loadResult{rate: float64(total) / elapsed.Seconds(), p50: lat[total/2], p99: lat[total*99/100]}
	b.ReportMetric(r.rate, "attest/s")
	b.ReportMetric(float64(r.p50.Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(r.p99.Microseconds())/1000, "p99-ms")
	b.ReportMetric(0, "ns/op")
	return r
}

func rusageCPU(ru syscall.Rusage) time.Duration {
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// perAttestation is cpu per attestation in milliseconds.
func perAttestation(cpu time.Duration, total int) float64 {
	return float64((cpu / time.Duration(total)).Microseconds()) / 1000
}

// checkAudit checks that every decision is in the audit log, total
// successful attestations of purpose, and that the chain is intact.
func checkAudit(b *testing.B, f *fixture, total int, purpose protocol.Purpose) {
	b.Helper()
	rep, err := f.db.VerifyAudit(context.Background(), 0, "")
	if err != nil || len(rep.Problems) != 0 {
		b.Fatalf("audit: %v %+v", err, rep)
	}
	recs, err := f.db.AuditRecords(context.Background(), verifier.AuditFilter{})
	if err != nil {
		b.Fatal(err)
	}
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
	f, bodies := prepareAttestations(b, newDSN(b, "EMBASSY_BENCH_DB"), 2, b.N, benchPurpose())
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
	b.ReportMetric(perAttestation(rusageCPU(ru1)-rusageCPU(ru0), b.N), "cpu-ms/attest")
}
