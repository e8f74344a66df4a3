package verifier_test

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dataembassy/embassy/attest/protocol"
	"github.com/dataembassy/embassy/attest/verifier"
	"github.com/dataembassy/embassy/internal/pgtest"
)

// These tests run the real embassy-verifier binary, twice, on one
// PostgreSQL database: verifiers coordinate only through the database.
// They need PostgreSQL whatever EMBASSY_TEST_DB says.

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// verifierBinary builds cmd/embassy-verifier once per test binary.
func verifierBinary(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "embassy-verifier-bin-")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "embassy-verifier")
		cmd := exec.Command("go", "build", "-o", binPath, "github.com/dataembassy/embassy/cmd/embassy-verifier")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			binErr = fmt.Errorf("go build embassy-verifier: %w\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// verifierProc is a running embassy-verifier process.
type verifierProc struct {
	t    testing.TB
	cmd  *exec.Cmd
	url  string
	hc   *http.Client
	log  bytes.Buffer // guarded by mu
	mu   sync.Mutex
	exit chan struct{}
}

var reServing = regexp.MustCompile(`msg=serving addr=(\S+)`)

// startVerifierProc runs the verifier binary on dsn, on a free loopback
// port, with a TLS identity of its own; it is killed at the test's end.
func startVerifierProc(t testing.TB, dsn string) *verifierProc {
	t.Helper()
	bin, dir := verifierBinary(t), t.TempDir()
	if out, err := exec.Command(bin, "--init-tls", dir, "--hosts", "127.0.0.1").CombinedOutput(); err != nil {
		t.Fatalf("init-tls: %v\n%s", err, out)
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	p := &verifierProc{t: t, exit: make(chan struct{}),
		hc: &http.Client{Timeout: time.Minute, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, MaxIdleConnsPerHost: 16}}}
	p.cmd = exec.Command(bin, "--db", dsn, "--listen", "127.0.0.1:0", "--nonce-ttl", "1h",
		"--cert", filepath.Join(dir, "server.pem"), "--key", filepath.Join(dir, "server.key"))
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			p.mu.Lock()
			p.log.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
			if m := reServing.FindStringSubmatch(sc.Text()); m != nil {
				addr <- m[1]
			}
		}
		io.Copy(io.Discard, stderr)
		p.cmd.Wait()
		close(p.exit)
	}()
	t.Cleanup(func() { p.kill(); p.hc.CloseIdleConnections() })
	select {
	case a := <-addr:
		p.url = "https://" + a
	case <-p.exit:
		t.Fatalf("embassy-verifier exited before serving:\n%s", p.output())
	}
	return p
}

func (p *verifierProc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

// kill SIGKILLs the process and waits for it to be gone.
func (p *verifierProc) kill() {
	p.cmd.Process.Kill()
	<-p.exit
}

// post sends req to path; it returns the HTTP status (0 when the request
// got no answer) and decodes a 200 answer into resp, else into the
// refusal.
func (p *verifierProc) post(path string, req, resp any) (int, *protocol.ErrorResponse) {
	body, _ := json.Marshal(req)
	res, err := p.hc.Post(p.url+path, "application/json", bytes.NewReader(body))
	if err != nil {
		return 0, nil
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		var e protocol.ErrorResponse
		if json.NewDecoder(res.Body).Decode(&e) != nil {
			return res.StatusCode, nil
		}
		return res.StatusCode, &e
	}
	if json.NewDecoder(res.Body).Decode(resp) != nil {
		return 0, nil
	}
	return res.StatusCode, nil
}

func (p *verifierProc) nonce(id string) []byte {
	p.t.Helper()
	var n protocol.NonceResponse
	if code, e := p.post(protocol.PathNonce, &protocol.NonceRequest{ApplianceID: id}, &n); code != http.StatusOK {
		p.t.Fatalf("nonce from %s: HTTP %d %+v\n%s", p.url, code, e, p.output())
	}
	return n.Nonce
}

// attest presents q: ok, a refusal, or neither (no answer).
func (p *verifierProc) attest(q *protocol.AttestRequest) (ok bool, refusal *protocol.ErrorResponse) {
	var resp protocol.AttestResponse
	code, e := p.post(protocol.PathAttest, q, &resp)
	return code == http.StatusOK && resp.AuditSeq > 0, e
}

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
// checks) and two verifier processes, all on one PostgreSQL database, and
// nApp enrolled appliances.
func sharedPostgres(t *testing.T, nApp int) (*fixture, [2]*verifierProc, []*appliance) {
	t.Helper()
	dsn := pgtest.NewDatabase(t)
	f := newFixtureAt(t, dsn)
	apps := make([]*appliance, nApp)
	for i := range apps {
		apps[i] = f.enrolled(fmt.Sprintf("rack%d", i))
	}
	return f, [2]*verifierProc{startVerifierProc(t, dsn), startVerifierProc(t, dsn)}, apps
}

// quotes makes n heartbeat quotes round-robin over apps, quote i over a
// nonce issued by procs[i%2].
func quotes(t *testing.T, procs [2]*verifierProc, apps []*appliance, n int) []*protocol.AttestRequest {
	t.Helper()
	qs := make([]*protocol.AttestRequest, n)
	for i := range qs {
		ap := apps[i%len(apps)]
		qs[i] = quote(t, ap, procs[i%2].nonce(ap.id), protocol.PurposeHeartbeat, 0)
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
	f, procs, apps := sharedPostgres(t, 3)
	const n, replays = 24, 4 // quotes; each of the first replays is presented 3 times at each process
	qs := quotes(t, procs, apps, n)
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
	f, procs, apps := sharedPostgres(t, 3)
	const n, clients, killAfter = 60, 6, 12
	qs := quotes(t, procs, apps, n)
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
