package nbd_test

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dataembassy/embassy/internal/pki"
	"github.com/dataembassy/embassy/storage/nbd"
)

// testPKI is the test's certificates: one CA for server and clients, and a
// second CA nobody trusts.
type testPKI struct {
	ca, otherCA *pki.CA
	serverTLS   *tls.Config
}

func newPKI(t testing.TB) *testPKI {
	t.Helper()
	p := &testPKI{ca: newCA(t, "embassy test CA"), otherCA: newCA(t, "rogue CA")}
	srv := issue(t, p.ca, pki.LeafOptions{CommonName: "server", Usage: pki.Server, Hosts: []string{"127.0.0.1", "localhost"}})
	p.serverTLS = &tls.Config{Certificates: []tls.Certificate{srv.TLSCertificate()}, ClientCAs: p.ca.Pool()}
	return p
}

func newCA(t testing.TB, name string) *pki.CA {
	t.Helper()
	ca, err := pki.NewCA(name, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func issue(t testing.TB, ca *pki.CA, o pki.LeafOptions) *pki.Leaf {
	t.Helper()
	o.Validity = 24 * time.Hour
	leaf, err := ca.Issue(o)
	if err != nil {
		t.Fatal(err)
	}
	return leaf
}

// clientDir writes ca-cert.pem, client-cert.pem and client-key.pem (the
// names GnuTLS-based clients, libnbd and qemu, look for) for a client
// identity issued by ca (nil: no client certificate at all).
func (p *testPKI) clientDir(t testing.TB, ca *pki.CA, cn string, uris ...string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "ca-cert.pem"), p.ca.CertPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	if ca != nil {
		o := pki.LeafOptions{CommonName: cn, Usage: pki.Client}
		for _, u := range uris {
			pu, err := url.Parse(u)
			if err != nil {
				t.Fatal(err)
			}
			o.URIs = append(o.URIs, pu)
		}
		if err := issue(t, ca, o).WriteFiles(dir, "client"); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// clientTLS returns a Go TLS client config for the identity.
func (p *testPKI) clientTLS(t testing.TB, ca *pki.CA, cn string) *tls.Config {
	t.Helper()
	cfg := &tls.Config{RootCAs: p.ca.Pool(), ServerName: "localhost"}
	if ca != nil {
		cfg.Certificates = []tls.Certificate{issue(t, ca, pki.LeafOptions{CommonName: cn, Usage: pki.Client}).TLSCertificate()}
	}
	return cfg
}

// logBuffer collects log lines for assertions.
type logBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	return len(p), nil
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.buf)
}

// runningServer is a server started by startServer.
type runningServer struct {
	*nbd.Server
	addr string
	port string
	logs *logBuffer
}

// startServer serves opts on 127.0.0.1:0 until the test ends; the test
// fails if Serve returns an error.
func startServer(t testing.TB, opts nbd.ServerOptions) *runningServer {
	t.Helper()
	return startServerWrapped(t, opts, nil)
}

// startServerWrapped is startServer with the listener passed through wrap
// (nil: unchanged), e.g. to observe each connection.
func startServerWrapped(t testing.TB, opts nbd.ServerOptions, wrap func(net.Listener) net.Listener) *runningServer {
	t.Helper()
	logs := &logBuffer{}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	srv, err := nbd.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if wrap != nil {
		l = wrap(l)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("Serve did not return after shutdown")
		}
	})
	_, port, _ := net.SplitHostPort(l.Addr().String())
	return &runningServer{Server: srv, addr: l.Addr().String(), port: port, logs: logs}
}

// tempFile returns a backend on a new sparse file of size bytes.
func tempFile(t testing.TB, size int64) (*nbd.File, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	b, err := nbd.OpenFile(path, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b, path
}

// countingListener counts, on each accepted connection in accept order,
// the bytes received and the writes made.
type countingListener struct {
	net.Listener
	mu    sync.Mutex
	conns []*countingConn
}

type countingConn struct {
	net.Conn
	n      atomic.Int64 // bytes read
	writes atomic.Int64 // Write calls
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.n.Add(int64(n))
	return n, err
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	cc := &countingConn{Conn: c}
	l.mu.Lock()
	l.conns = append(l.conns, cc)
	l.mu.Unlock()
	return cc, nil
}

// received returns the bytes received per connection so far.
func (l *countingListener) received() []int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	var r []int64
	for _, c := range l.conns {
		r = append(r, c.n.Load())
	}
	return r
}

// conn returns the i'th accepted connection.
func (l *countingListener) conn(i int) *countingConn {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.conns[i]
}
