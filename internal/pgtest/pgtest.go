// Package pgtest runs a throwaway PostgreSQL cluster for tests: one per
// test binary, started on first use by Debian's PostgreSQL binaries
// (initdb and postgres, as the `postgres` user when the tests run as
// root) in a temporary directory, listening only on a unix socket there,
// and removed when the tests end. Each test gets a database of its own.
//
// The test binary's TestMain must call Main. A missing PostgreSQL fails
// the test rather than skipping it: `make test` installs it
// (scripts/install-deps.sh).
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// cluster is a running postgres server.
type cluster struct {
	dir   string // socket directory, and data/ below it
	proc  *exec.Cmd
	exit  chan struct{} // closed when proc has exited
	admin *pgx.Conn     // on database postgres, guarded by mu
	mu    sync.Mutex
}

var (
	running  atomic.Bool // Main is running the tests
	once     sync.Once
	shared   *cluster
	startErr error
	dbSeq    atomic.Int64
)

// Main runs m's tests and then stops the cluster, if a test started one.
// Call it from TestMain: os.Exit(pgtest.Main(m)).
func Main(m *testing.M) int {
	running.Store(true)
	code := m.Run()
	if shared != nil {
		if err := shared.stop(); err != nil {
			fmt.Fprintln(os.Stderr, "pgtest:", err)
			if code == 0 {
				code = 1
			}
		}
	}
	return code
}

// NewDatabase creates an empty database on the binary's cluster, starting
// the cluster on first use, and returns its postgres:// URL. The database
// is dropped when the test ends.
func NewDatabase(t testing.TB) string {
	t.Helper()
	if !running.Load() {
		t.Fatal("pgtest: the test binary's TestMain must call pgtest.Main")
	}
	once.Do(func() { shared, startErr = start() })
	if startErr != nil {
		t.Fatalf("pgtest: %v", startErr)
	}
	name := "test_" + strconv.FormatInt(dbSeq.Add(1), 10)
	if err := shared.adminExec(`CREATE DATABASE ` + name); err != nil {
		t.Fatalf("pgtest: create database: %v", err)
	}
	t.Cleanup(func() {
		if err := shared.adminExec(`DROP DATABASE ` + name + ` WITH (FORCE)`); err != nil {
			t.Errorf("pgtest: drop database: %v", err)
		}
	})
	return shared.url(name)
}

// url is the postgres:// URL of database name, over the unix socket.
func (c *cluster) url(name string) string {
	return "postgres://postgres@/" + name + "?host=" + url.QueryEscape(c.dir) + "&sslmode=disable"
}

func (c *cluster) adminExec(sql string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := c.admin.Exec(ctx, sql)
	return err
}

// binDir finds the newest installed PostgreSQL's binaries.
func binDir() (string, error) {
	found, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres")
	slices.SortFunc(found, func(a, b string) int { // numerically: 9 < 15
		va, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(a))))
		vb, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(b))))
		return va - vb
	})
	if len(found) > 0 {
		return filepath.Dir(found[len(found)-1]), nil
	}
	if p, err := exec.LookPath("postgres"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", errors.New("PostgreSQL is required but not installed (no /usr/lib/postgresql/*/bin/postgres; run scripts/install-deps.sh)")
}

// credential is who runs PostgreSQL: the `postgres` user when we are root
// (initdb refuses root), else ourselves (nil).
func credential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root needs the postgres user (installed with the postgresql package): %w", err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("postgres user: %w", err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

func start() (*cluster, error) {
	bin, err := binDir()
	if err != nil {
		return nil, err
	}
	cred, err := credential()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "pgtest-")
	if err != nil {
		return nil, err
	}
	c := &cluster{dir: dir, exit: make(chan struct{})}
	if err := c.boot(bin, cred); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return c, nil
}

func (c *cluster) boot(bin string, cred *syscall.Credential) error {
	if cred != nil {
		if err := os.Chown(c.dir, int(cred.Uid), int(cred.Gid)); err != nil {
			return err
		}
	}
	data := filepath.Join(c.dir, "data")
	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres", "-A", "trust",
		"-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions")
	initdb.Dir, initdb.SysProcAttr = c.dir, &syscall.SysProcAttr{Credential: cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		return fmt.Errorf("initdb: %w\n%s", err, out)
	}
	logPath := filepath.Join(c.dir, "postgres.log")
	log, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer log.Close()
	// A throwaway cluster: no TCP, no fsync (the verifier's own commits
	// do not wait for one either, see attest/verifier.OpenDB), room for
	// many tests' connection pools.
	c.proc = exec.Command(filepath.Join(bin, "postgres"), "-D", data, "-k", c.dir,
		"-c", "listen_addresses=", "-c", "fsync=off", "-c", "full_page_writes=off",
		"-c", "max_connections=300")
	c.proc.Dir, c.proc.Stdout, c.proc.Stderr = c.dir, log, log
	// Pdeathsig: a test binary killed outright takes its cluster along.
	c.proc.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGQUIT}
	if err := c.proc.Start(); err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	go func() { c.proc.Wait(); close(c.exit) }()
	deadline := time.Now().Add(time.Minute)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c.admin, err = pgx.Connect(ctx, c.url("postgres"))
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-c.exit:
			out, _ := os.ReadFile(logPath)
			return fmt.Errorf("postgres exited: %v\n%s", c.proc.ProcessState, out)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			c.proc.Process.Kill()
			<-c.exit
			out, _ := os.ReadFile(logPath)
			return fmt.Errorf("postgres did not accept connections within a minute: %w\n%s", err, out)
		}
	}
}

// stop shuts the server down (fast shutdown) and removes its directory.
func (c *cluster) stop() error {
	c.admin.Close(context.Background())
	c.proc.Process.Signal(syscall.SIGINT)
	select {
	case <-c.exit:
	case <-time.After(time.Minute):
		c.proc.Process.Kill()
		<-c.exit
	}
	return os.RemoveAll(c.dir)
}
