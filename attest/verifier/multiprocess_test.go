package verifier_test

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/dataembassy/embassy/attest/protocol"
	"github.com/dataembassy/embassy/attest/verifier"
	"github.com/dataembassy/embassy/internal/pgtest"
)

// These tests run the real embassy-verifier binary, twice, on one
// PostgreSQL database: verifiers coordinate only through the database.
// They need PostgreSQL whatever EMBASSY_TEST_DB says.

// TestConcurrentMigrationsPostgres opens a new PostgreSQL database from
// several handles at once, as verifier processes starting together do:
// each migrates it or waits for the one that does, and all succeed.
func TestConcurrentMigrationsPostgres(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	errs := make([]error, 4)
	var wg sync.WaitGroup
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			db, err := verifier.OpenDB(t.Context(), dsn)
			if err == nil {
				err = db.Close()
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("open %d of %d at once: %v", i+1, len(errs), err)
		}
	}
	if _, err := openDB(t, dsn).AuditRecords(t.Context(), verifier.AuditFilter{}); err != nil {
		t.Errorf("migrated database: %v", err)
	}
}

// sharedPostgres is an in-process fixture (for enrolment and the final
// checks) and nProc verifier processes, all on one PostgreSQL database,
// and nApp enrolled appliances.
func sharedPostgres(t testing.TB, nApp, nProc int) (*fixture, []*verifierProc, []*appliance) {
	t.Helper()
	dsn := pgtest.NewDatabase(t)
	f := newFixtureAt(t, dsn)
	apps := make([]*appliance, nApp)
	for i := range apps {
		apps[i] = f.enrolled(fmt.Sprintf("rack%d", i))
	}
	procs := make([]*verifierProc, nProc)
	for i := range procs {
		procs[i] = startVerifierProc(t, dsn)
	}
	return f, procs, apps
}

// quotes makes n quotes for purpose round-robin over apps, quote i over a
// nonce issued by procs[i%len(procs)].
func quotes(t testing.TB, procs []*verifierProc, apps []*appliance, n int, purpose protocol.Purpose) []*protocol.AttestRequest {
	t.Helper()
	qs := make([]*protocol.AttestRequest, n)
	for i := range qs {
		ap := apps[i%len(apps)]
		qs[i] = quote(t, ap, procs[i%len(procs)].nonce(ap.id), purpose, 0)
	}
	return qs
}

// checkChain verifies the audit chain and that it holds want admitted
// heartbeats, and that every burnt nonce has its record: no decision is
// half-written.
func checkChain(t *testing.T, f *fixture, want int) {
	t.Helper()
	ctx := t.Context()
	rep, err := f.db.VerifyAudit(ctx, 0, "")
	if err != nil || len(rep.Problems) != 0 {
		t.Fatalf("audit chain: %v %+v", err, rep)
	}
	recs, err := f.db.AuditRecords(ctx, verifier.AuditFilter{})
	if err != nil {
		t.Fatal(err)
	}
	ok := 0
	for _, r := range recs {
		if r.Action == "attest-heartbeat" && r.Outcome == "ok" {
			ok++
		}
	}
	used, err := f.db.UsedNonces(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ok != want || used != want {
		t.Errorf("%d admitted heartbeats in the audit log and %d nonces burnt, want %d of each", ok, used, want)
	}
}

// TestVerifierProcessesSharePostgres: two verifier processes on one
// PostgreSQL database under concurrent attestations. A nonce issued by
// either is usable once, at either, however many times it is presented at
// both at once; the audit chain stays one chain holding every admitted
// attestation once.
func TestVerifierProcessesSharePostgres(t *testing.T) {
	f, procs, apps := sharedPostgres(t, 3, 2)
	const n, replays = 24, 4 // quotes; each of the first replays is presented 3 times at each process
	qs := quotes(t, procs, apps, n, protocol.PurposeHeartbeat)
	admitted := make([]atomic.Int32, n)
	var wg sync.WaitGroup
	present := func(p *verifierProc, i int) {
		defer wg.Done()
		ok, e := p.attest(qs[i])
		switch {
		case ok:
			admitted[i].Add(1)
		case e == nil || e.Check != "nonce":
			t.Errorf("quote %d at %s: %+v, want admitted or refused for its nonce", i, p.url, e)
		}
	}
	for i := range qs {
		if i < replays {
			for k := 0; k < 6; k++ {
				wg.Add(1)
				go present(procs[k%2], i)
			}
			continue
		}
		wg.Add(1)
		go present(procs[(i+1)%2], i) // at the process that did not issue the nonce
	}
	wg.Wait()
	for i := range admitted {
		if k := admitted[i].Load(); k != 1 {
			t.Errorf("quote %d admitted %d times, want once", i, k)
		}
	}
	checkChain(t, f, n)
}

// TestVerifierProcessKilledMidLoad SIGKILLs one of two verifier processes
// on one PostgreSQL database during concurrent attestations: the audit
// chain still verifies, no decision is half-written, and every quote the
// killed process did not answer is either already recorded (refused as a
// replay when presented again) or admitted by the surviving process:
// each admitted exactly once, nothing lost.
func TestVerifierProcessKilledMidLoad(t *testing.T) {
	f, procs, apps := sharedPostgres(t, 3, 2)
	const n, clients, killAfter = 60, 6, 12
	qs := quotes(t, procs, apps, n, protocol.PurposeHeartbeat)
	answered := make([]bool, n) // admitted with an answer during the load
	var next, admittedAt0 atomic.Int32
	var killOnce sync.Once
	var wg sync.WaitGroup
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				p := procs[i%2]
				ok, e := p.attest(qs[i])
				switch {
				case ok:
					answered[i] = true
					if p == procs[0] && admittedAt0.Add(1) == killAfter {
						killOnce.Do(procs[0].kill) // others are in flight at it
					}
				case e != nil:
					t.Errorf("quote %d at %s: refused %+v", i, p.url, e)
				}
			}
		}()
	}
	wg.Wait()
	killOnce.Do(func() {
		t.Fatalf("process 0 admitted %d quotes, never reached %d: not killed", admittedAt0.Load(), killAfter)
	})
	var unanswered, recorded int
	for i, ok := range answered {
		if ok {
			continue
		}
		unanswered++
		ok, e := procs[1].attest(qs[i])
		switch {
		case ok:
		case e != nil && e.Check == "nonce" && strings.Contains(e.Detail, "already used"):
			recorded++ // committed before the kill, the answer lost
		default:
			t.Errorf("quote %d presented again at the survivor: %+v", i, e)
		}
	}
	t.Logf("%d quotes unanswered when process 0 was killed, %d of them already recorded", unanswered, recorded)
	if unanswered == 0 {
		t.Errorf("every quote was answered: the kill hit no request")
	}
	checkChain(t, f, n)
}
