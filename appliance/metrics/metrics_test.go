package metrics_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dataembassy/embassy/appliance"
	"github.com/dataembassy/embassy/appliance/metrics"
	"github.com/dataembassy/embassy/appliance/wiring"
	"github.com/dataembassy/embassy/internal/pki"
	"github.com/dataembassy/embassy/storage"
	"github.com/dataembassy/embassy/storage/nbd"
)

const (
	nbdRead  = 0
	nbdWrite = 1
	nbdFlush = 3
)

// served is a store on a file, bound to a file counter, exported as
// "registers" by a plaintext NBD server observed by m.
type served struct {
	store   *storage.Store
	counter *storage.FileCounter
	id      *appliance.ServerIdentity
	addr    string
	disk    string // the device file
}

func serve(t *testing.T, m *metrics.Metrics) *served {
	t.Helper()
	kek := make([]byte, storage.KEKSize)
	rand.Read(kek)
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.img")
	dev, err := storage.CreateFileDevice(disk, 16<<20)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	counter := storage.NewFileCounter(filepath.Join(dir, "counter"))
	st, err := (&wiring.Storage{Counter: counter, Logger: slog.New(slog.DiscardHandler)}).Format(dev, kek)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	id, err := appliance.DeriveServerIdentity(kek, "lux-01", []net.IP{net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := nbd.NewServer(nbd.ServerOptions{
		Exports:   []nbd.Export{{Name: "registers", Backend: wiring.StoreBackend{Store: st.(*storage.Store)}}},
		Grants:    []nbd.Grant{{Identity: nbd.AnyIdentity, Export: "registers", Access: nbd.ReadWrite}},
		Plaintext: true,
		Observer:  m,
		Logger:    slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return &served{store: st.(*storage.Store), counter: counter, id: id, addr: l.Addr().String(), disk: disk}
}

// scrapePlain scrapes m's handler without TLS.
func scrapePlain(t *testing.T, m *metrics.Metrics) *httptest.Server {
	t.Helper()
	h := httptest.NewServer(m.Handler())
	t.Cleanup(h.Close)
	return h
}

func TestNBDAndStoreMetrics(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	m := newMetrics(t, newCA(t, "scrapers"), &now)
	s := serve(t, m)
	m.Serving(s.store, s.id)
	h := scrapePlain(t, m)

	c := dialNBD(t, s.addr, "registers")
	if errno, _ := c.do(nbdWrite, 0, 8192, make([]byte, 8192)); errno != 0 {
		t.Fatalf("write: errno %d", errno)
	}
	if errno, _ := c.do(nbdRead, 4096, 4096, nil); errno != 0 {
		t.Fatalf("read: errno %d", errno)
	}
	if errno, _ := c.do(nbdFlush, 0, 0, nil); errno != 0 {
		t.Fatalf("flush: errno %d", errno)
	}
	if errno, _ := c.do(nbdRead, 16<<20, 4096, nil); errno == 0 {
		t.Fatal("read beyond the end succeeded")
	}

	res, err := http.Get(h.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	fams := parse(t, res)
	want := []struct {
		name    string
		command string
		value   float64
	}{
		{"embassy_nbd_requests_total", "write", 1},
		{"embassy_nbd_requests_total", "read", 2},
		{"embassy_nbd_requests_total", "flush", 1},
		{"embassy_nbd_bytes_total", "write", 8192},
		{"embassy_nbd_bytes_total", "read", 4096},
		{"embassy_nbd_bytes_total", "flush", 0},
		{"embassy_nbd_errors_total", "read", 1},
		{"embassy_nbd_errors_total", "write", 0},
		{"embassy_nbd_request_duration_seconds", "read", 2},
		{"embassy_nbd_request_duration_seconds", "flush", 1},
	}
	for _, w := range want {
		if v, ok := fams.Sample(w.name, "export", "registers", "command", w.command); !ok || v != w.value {
			t.Errorf("%s{registers,%s} = %v (present %v), want %v", w.name, w.command, v, ok, w.value)
		}
	}

	nv, err := s.counter.Read()
	if err != nil || nv == 0 {
		t.Fatalf("counter %d, %v", nv, err)
	}
	for _, g := range []struct {
		name  string
		value float64
	}{
		{"embassy_appliance_serving", 1},
		{"embassy_store_epoch", float64(s.store.Epoch())},
		{"embassy_store_nv_counter", float64(nv)},
		{"embassy_store_integrity_errors_total", 0},
		{"embassy_store_size_bytes", float64(s.store.Size())},
	} {
		if v, ok := fams.Sample(g.name); !ok || v != g.value {
			t.Errorf("%s = %v (present %v), want %v", g.name, v, ok, g.value)
		}
	}
	if s.store.Epoch() < 2 {
		t.Errorf("epoch %d after a flush of written data", s.store.Epoch())
	}
	if f := fams["embassy_appliance_build_info"]; f == nil || f.GetMetric()[0].GetGauge().GetValue() != 1 {
		t.Errorf("build info: %v", f)
	}

	m.Stopped()
	res, err = http.Get(h.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	fams = parse(t, res)
	if v, ok := fams.Sample("embassy_appliance_serving"); !ok || v != 0 {
		t.Errorf("serving = %v after Stopped", v)
	}
	if fams["embassy_store_epoch"] != nil {
		t.Error("store gauges after Stopped")
	}
}

// TestIntegrityErrorCounted: a read of tampered data fails with EIO and
// shows in the store's integrity counter and the NBD error counter.
func TestIntegrityErrorCounted(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	m := newMetrics(t, newCA(t, "scrapers"), &now)
	s := serve(t, m)
	m.Serving(s.store, s.id)
	c := dialNBD(t, s.addr, "registers")
	if errno, _ := c.do(nbdWrite, 0, 4096, bytes.Repeat([]byte{7}, 4096)); errno != 0 {
		t.Fatalf("write: errno %d", errno)
	}
	if errno, _ := c.do(nbdFlush, 0, 0, nil); errno != 0 {
		t.Fatalf("flush: errno %d", errno)
	}
	// The host flips every byte past the two superblocks.
	f, err := os.OpenFile(s.disk, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte{0xa5}, 16<<20-2*storage.BlockSize), 2*storage.BlockSize); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if errno, _ := c.do(nbdRead, 0, 4096, nil); errno != 5 {
		t.Fatalf("read of tampered data: errno %d, want EIO", errno)
	}
	res, err := http.Get(scrapePlain(t, m).URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	fams := parse(t, res)
	if v, _ := fams.Sample("embassy_store_integrity_errors_total"); v < 1 || v != float64(s.store.Stats().IntegrityFailures) {
		t.Errorf("integrity errors %v, store counted %d", v, s.store.Stats().IntegrityFailures)
	}
	if v, _ := fams.Sample("embassy_nbd_errors_total", "export", "registers", "command", "read"); v != 1 {
		t.Errorf("read errors %v, want 1", v)
	}
	if v, _ := fams.Sample("embassy_nbd_bytes_total", "export", "registers", "command", "read"); v != 0 {
		t.Errorf("read bytes %v, want 0 (the read failed)", v)
	}
}

func TestLeases(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	m := newMetrics(t, newCA(t, "scrapers"), &now)
	h := scrapePlain(t, m)
	leases := func() map[string]float64 {
		t.Helper()
		res, err := http.Get(h.URL + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		fams := parse(t, res)
		out := map[string]float64{}
		for _, v := range []string{"tallinn", "tartu", "narva"} {
			if s, ok := fams.Sample("embassy_appliance_lease_remaining_seconds", "verifier", v); ok {
				out[v] = s
			}
		}
		out["quorum"], _ = fams.Sample("embassy_appliance_quorum_lease_remaining_seconds")
		return out
	}
	m.Leases([]appliance.Answer{
		{Verifier: "tallinn", Outcome: appliance.OutcomeGranted, Lease: time.Hour},
		{Verifier: "tartu", Outcome: appliance.OutcomeRefused},
		{Verifier: "narva", Outcome: appliance.OutcomeUnreachable},
	}, 30*time.Minute)
	now = now.Add(10 * time.Minute)
	if got, want := leases(), map[string]float64{"tallinn": 3000, "tartu": 0, "quorum": 1200}; !equal(got, want) {
		t.Errorf("after unlock: %v, want %v", got, want)
	}
	m.Leases([]appliance.Answer{
		{Verifier: "tallinn", Outcome: appliance.OutcomeRenewed, Lease: time.Hour},
		{Verifier: "tartu", Outcome: appliance.OutcomeUnused},
		{Verifier: "narva", Outcome: appliance.OutcomeRenewed, Lease: 20 * time.Minute},
	}, 20*time.Minute)
	now = now.Add(time.Hour)
	if got, want := leases(), map[string]float64{"tallinn": 0, "tartu": 0, "narva": 0, "quorum": 0}; !equal(got, want) {
		t.Errorf("an hour after the heartbeat: %v, want %v", got, want)
	}
}

func equal(a, b map[string]float64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestListenerMutualTLS: the listener presents the NBD server identity
// while serving, and answers only clients with a certificate from the
// configured CA, and only at /metrics.
func TestListenerMutualTLS(t *testing.T) {
	now := time.Now()
	ca, rogue := newCA(t, "scrapers"), newCA(t, "rogue")
	m := newMetrics(t, ca, &now)
	s := serve(t, m)
	if m.Addr() != "" {
		t.Fatal("listening before serving")
	}
	m.Serving(s.store, s.id)
	url := "https://" + m.Addr()
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(s.id.CertPEM)
	client := func(ca *pki.CA) *http.Client {
		cfg := &tls.Config{RootCAs: roots}
		if ca != nil {
			leaf, err := ca.Issue(pki.LeafOptions{CommonName: "prometheus", Usage: pki.Client, Validity: time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			cfg.Certificates = []tls.Certificate{leaf.TLSCertificate()}
		}
		return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}}
	}

	res, err := client(ca).Get(url + "/metrics")
	if err != nil {
		t.Fatalf("scrape with a certificate from the CA: %v", err)
	}
	if v, ok := parse(t, res).Sample("embassy_appliance_serving"); !ok || v != 1 {
		t.Errorf("serving = %v", v)
	}
	res, err = client(ca).Get(url + "/")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusNotFound {
		t.Errorf("GET / answered %s, want 404", res.Status)
	}
	for name, c := range map[string]*http.Client{"no client certificate": client(nil), "another CA": client(rogue)} {
		if res, err := c.Get(url + "/metrics"); err == nil {
			res.Body.Close()
			t.Errorf("%s: scrape answered %s", name, res.Status)
		}
	}

	// Stopped: the identity is gone, so is the TLS handshake.
	m.Stopped()
	_, err = client(ca).Get(url + "/metrics")
	if err == nil || !strings.Contains(err.Error(), "tls: ") {
		t.Errorf("scrape after Stopped: %v, want a failed handshake", err)
	}
	m.Serving(s.store, s.id)
	if res, err := client(ca).Get(url + "/metrics"); err != nil {
		t.Errorf("scrape after serving again: %v", err)
	} else {
		res.Body.Close()
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	for name, o := range map[string]metrics.Options{
		"no config": {},
		"bad CA":    {Config: &appliance.MetricsConfig{Listen: "127.0.0.1:0", ClientCAPEM: "junk"}},
	} {
		if _, err := metrics.New(o); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestListenFailureDoesNotStopServing: a metrics address that cannot be
// bound is logged; the appliance goes on (Serving returns).
func TestListenFailureDoesNotStopServing(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	logs := &strings.Builder{}
	m, err := metrics.New(metrics.Options{Config: &appliance.MetricsConfig{Listen: busy.Addr().String(), ClientCAPEM: string(newCA(t, "scrapers").CertPEM())},
		Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	m.Serving(nil, nil)
	if m.Addr() != "" {
		t.Errorf("listening on %s", m.Addr())
	}
	if !strings.Contains(logs.String(), "not serving metrics") {
		t.Errorf("the failure is not logged: %q", logs.String())
	}
	if err := m.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
}

// BenchmarkRequest is the cost an NBD request pays for metrics: what
// Metrics.Request adds to the nbd observer hook (BenchmarkRead4KQD32Observed
// in storage/nbd).
func BenchmarkRequest(b *testing.B) {
	ca, err := pki.NewCA("scrapers", time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	m, err := metrics.New(metrics.Options{Config: &appliance.MetricsConfig{Listen: "127.0.0.1:0", ClientCAPEM: string(ca.CertPEM())}})
	if err != nil {
		b.Fatal(err)
	}
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.Request("registers", "read", 4096, 150*time.Microsecond, nil)
		}
	})
}
