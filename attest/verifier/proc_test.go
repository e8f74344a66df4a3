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
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dataembassy/embassy/attest/protocol"
)

// Real embassy-verifier processes for the multi-process tests
// (multiprocess_test.go) and the load benchmark (bench_test.go), and the
// CPU time of processes from /proc.

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
		hc: &http.Client{Timeout: time.Minute, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, MaxIdleConnsPerHost: 64}}}
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

// clockTick is the unit of the CPU times in /proc/<pid>/stat (USER_HZ,
// 100 per second on Linux whatever the kernel's HZ).
const clockTick = 10 * time.Millisecond

// procTimes is what the benchmark reads of one /proc/<pid>/stat.
type procTimes struct {
	ppid   int
	comm   string
	cpu    time.Duration // user + system time of the process itself
	reaped time.Duration // user + system time of the children it has waited for
}

func readProcTimes(pid int) (procTimes, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procTimes{}, err
	}
	s := string(b)
	open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || end < open {
		return procTimes{}, fmt.Errorf("/proc/%d/stat: no command name: %q", pid, s)
	}
	f := strings.Fields(s[end+1:]) // f[0] is field 3 of proc(5), the state
	if len(f) < 15 {
		return procTimes{}, fmt.Errorf("/proc/%d/stat: %d fields after the name", pid, len(f))
	}
	var v [18]int64 // by proc(5) field number
	for k := 4; k <= 17; k++ {
		if v[k], err = strconv.ParseInt(f[k-3], 10, 64); err != nil {
			return procTimes{}, fmt.Errorf("/proc/%d/stat field %d: %w", pid, k, err)
		}
	}
	return procTimes{ppid: int(v[4]), comm: s[open+1 : end],
		cpu: time.Duration(v[14]+v[15]) * clockTick, reaped: time.Duration(v[16]+v[17]) * clockTick}, nil
}

// processCPU is the user + system time process pid has used so far.
func processCPU(t testing.TB, pid int) time.Duration {
	t.Helper()
	pt, err := readProcTimes(pid)
	if err != nil {
		t.Fatal(err)
	}
	return pt.cpu
}

// postgresCPU is the user + system time the test binary's PostgreSQL
// server (internal/pgtest) has used so far: the postmaster, its live
// children (backends, background workers) and the children it reaped.
func postgresCPU(t testing.TB) time.Duration {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	all := map[int]procTimes{}
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			if pt, err := readProcTimes(pid); err == nil { // else it has exited meanwhile
				all[pid] = pt
			}
		}
	}
	master := 0
	for pid, pt := range all {
		if pt.ppid == os.Getpid() && pt.comm == "postgres" {
			master = pid
		}
	}
	if master == 0 {
		t.Fatal("no postgres server among this process's children")
	}
	sum := all[master].cpu + all[master].reaped
	for _, pt := range all {
		if pt.ppid == master {
			sum += pt.cpu + pt.reaped
		}
	}
	return sum
}

// machineTimes is the first line of /proc/stat: the whole machine's CPU
// time by state, in clock ticks, summed over its cores.
type machineTimes struct{ total, idle, steal int64 }

func readMachineTimes(t testing.TB) machineTimes {
	t.Helper()
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		t.Fatal(err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		t.Fatalf("/proc/stat: %q", line)
	}
	var m machineTimes
	for k, s := range f[1:9] { // user nice system idle iowait irq softirq steal
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			t.Fatalf("/proc/stat: %q: %v", line, err)
		}
		m.total += v
		switch k {
		case 3, 4:
			m.idle += v
		case 7:
			m.steal += v
		}
	}
	return m
}

// idleSteal is the share of the machine's CPU time between m0 and m that
// was idle and that the hypervisor took (steal), in percent.
func (m machineTimes) idleSteal(m0 machineTimes) (idle, steal float64) {
	d := float64(m.total - m0.total)
	if d <= 0 {
		return 0, 0
	}
	return 100 * float64(m.idle-m0.idle) / d, 100 * float64(m.steal-m0.steal) / d
}
