package appliance_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dataembassy/embassy/appliance"
)

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type rig struct {
	platform *fakePlatform
	measurer *fakeMeasurer
	attester *fakeAttester
	exporter *fakeExporter
	monitor  *fakeMonitor
	log      *syncBuffer
	done     chan struct{}
	runErr   error
	cancel   context.CancelFunc
}

func testConfig() *appliance.Config {
	return &appliance.Config{
		Version: 1, Identity: "test",
		Disk:  appliance.DiskConfig{Device: "/dev/vda", HeaderSize: 4096},
		Retry: appliance.RetryConfig{Initial: appliance.Duration(10 * time.Millisecond), Max: appliance.Duration(40 * time.Millisecond)},
	}
}

// start runs an appliance on disk with the given attester.
func start(t *testing.T, disk *memDevice, att *fakeAttester) *rig {
	t.Helper()
	r := &rig{
		platform: &fakePlatform{disk: disk, rebooted: make(chan struct{})},
		measurer: &fakeMeasurer{},
		attester: att,
		exporter: newFakeExporter(),
		monitor:  &fakeMonitor{},
		log:      &syncBuffer{},
		done:     make(chan struct{}),
	}
	a, err := appliance.New(appliance.Options{
		Config: testConfig(),
		Measurements: []appliance.Measurement{
			{Type: "binary", Name: "/bin/embassy-appliance", Data: []byte("bin")},
			{Type: "config", Name: "/etc/embassy/appliance.json", Data: []byte("cfg")},
		},
		Platform: r.platform, Measurer: r.measurer, Attester: r.attester,
		Storage: fakeStorage{}, Exporter: r.exporter, Monitor: r.monitor,
		Logger: slog.New(slog.NewTextHandler(r.log, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { r.runErr = a.Run(ctx); close(r.done) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(5 * time.Second):
			t.Error("Run did not return after cancel")
		}
		if t.Failed() {
			t.Logf("appliance log:\n%s", r.log.String())
		}
	})
	return r
}

func (r *rig) waitServing(t *testing.T) {
	t.Helper()
	select {
	case <-r.exporter.started:
	case <-time.After(5 * time.Second):
		t.Fatal("appliance never started serving")
	}
}

// waitLog waits until the console log contains substr.
func (r *rig) waitLog(t *testing.T, substr string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if strings.Contains(r.log.String(), substr) {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("console never said %q", substr)
}

func (r *rig) stop(t *testing.T) {
	t.Helper()
	r.cancel()
	select {
	case <-r.done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return")
	}
}

func grant(provision bool, lease time.Duration) func(int) (bool, time.Duration, error) {
	return func(int) (bool, time.Duration, error) { return provision, lease, nil }
}

func beats(lease time.Duration) func(int) (time.Duration, error) {
	return func(int) (time.Duration, error) { return lease, nil }
}

func TestFirstBootProvisionsThenReopens(t *testing.T) {
	disk := newMemDevice(64 << 10)
	r := start(t, disk, &fakeAttester{tpm: "A", decide: grant(true, time.Hour), heartbeat: beats(time.Hour)})
	r.waitServing(t)
	if len(r.measurer.events) != 2 || !strings.HasPrefix(r.measurer.events[0], "binary:/bin/embassy-appliance:") {
		t.Errorf("measurements %v", r.measurer.events)
	}
	h, err := appliance.ReadHeader(disk, 4096)
	if err != nil {
		t.Fatalf("no header after provisioning: %v", err)
	}
	if h.Epoch != 7 || !sameShares(h.Sealed, r.attester.granted[0]) ||
		string(h.Sealed.ByRelease["test-release"]) != "sealed-by-A-for-test-release" {
		t.Errorf("header %+v, want epoch 7 and the granted %+v", h, r.attester.granted[0])
	}
	if r.attester.epochs[0] != 0 {
		t.Errorf("first boot reported epoch %d, want 0", r.attester.epochs[0])
	}
	if r.attester.sealedSeen[0] != nil {
		t.Errorf("a blank disk passed sealed shares %+v to Unlock", r.attester.sealedSeen[0])
	}
	r.stop(t)
	if !r.exporter.stores[0].isClosed() {
		t.Error("store not closed (keys not zeroized) on shutdown")
	}

	// Reboot: same disk, same TPM, the verifier no longer says provision.
	r2 := start(t, disk, &fakeAttester{tpm: "A", decide: grant(false, time.Hour), heartbeat: beats(time.Hour)})
	r2.waitServing(t)
	r2.waitLog(t, "store opened")
	if r2.attester.epochs[0] != 7 {
		t.Errorf("second boot reported epoch %d, want the header's 7", r2.attester.epochs[0])
	}
	// The later unlock gets the header's set id and every blob back.
	if seen := r2.attester.sealedSeen[0]; seen == nil || !sameShares(*seen, h.Sealed) {
		t.Errorf("second boot passed %+v to Unlock, want the header's %+v", seen, h.Sealed)
	}
}

// TestServerIdentityReportedAtOnce: the first heartbeat goes out as soon as
// the appliance serves, with the server certificate clients will see, so
// they can pin it from the verifier; a lease of an hour does not delay it.
func TestServerIdentityReportedAtOnce(t *testing.T) {
	disk := newMemDevice(64 << 10)
	att := &fakeAttester{tpm: "A", decide: grant(true, time.Hour), heartbeat: beats(time.Hour)}
	r := start(t, disk, att)
	r.waitServing(t)
	r.waitLog(t, "server identity reported to the verifier")
	att.mu.Lock()
	reported := att.serverCerts
	att.mu.Unlock()
	r.exporter.mu.Lock()
	served := r.exporter.certs
	r.exporter.mu.Unlock()
	if len(reported) != 1 || len(served) != 1 || !bytes.Equal(reported[0], served[0]) {
		t.Fatalf("reported %d certificates, served %d; equal: %v", len(reported), len(served), len(reported) == 1 && len(served) == 1 && bytes.Equal(reported[0], served[0]))
	}
}

func TestRefusedRetriesWithBackoff(t *testing.T) {
	disk := newMemDevice(64 << 10)
	att := &fakeAttester{tpm: "A", heartbeat: beats(time.Hour),
		decide: func(n int) (bool, time.Duration, error) {
			if n <= 3 {
				return false, 0, fmt.Errorf("PCR 9 differs: %w", appliance.ErrRefused)
			}
			return true, time.Hour, nil
		}}
	r := start(t, disk, att)
	r.waitServing(t)
	if n, _ := att.counts(); n != 4 {
		t.Errorf("attested %d times, want 4", n)
	}
	if got := strings.Count(r.log.String(), "reason=refused"); got != 3 {
		t.Errorf("logged %d refusals, want 3:\n%s", got, r.log.String())
	}
	if !strings.Contains(r.log.String(), "retry_in=20ms") || !strings.Contains(r.log.String(), "retry_in=40ms") {
		t.Errorf("no growing backoff:\n%s", r.log.String())
	}
}

func TestRefusedNeverServes(t *testing.T) {
	disk := newMemDevice(64 << 10)
	att := &fakeAttester{tpm: "A", heartbeat: beats(time.Hour),
		decide: func(int) (bool, time.Duration, error) {
			return false, 0, fmt.Errorf("check release, PCR 15: %w", appliance.ErrRefused)
		}}
	r := start(t, disk, att)
	r.waitLog(t, "retry_in=40ms")
	if r.exporter.isServing() {
		t.Fatal("served after a refusal")
	}
	if _, err := appliance.ReadHeader(disk, 4096); !errors.Is(err, appliance.ErrNoHeader) {
		t.Errorf("disk touched after a refusal: %v", err)
	}
}

func TestRevokedWhileServingStopsAndZeroizes(t *testing.T) {
	disk := newMemDevice(64 << 10)
	revoked := make(chan struct{})
	att := &fakeAttester{tpm: "A", decide: grant(true, 300*time.Millisecond),
		heartbeat: func(n int) (time.Duration, error) {
			switch {
			case n == 1:
				return 300 * time.Millisecond, nil
			case n == 2:
				close(revoked)
				return 0, fmt.Errorf("operator revoked: %w", appliance.ErrRevoked)
			case n < 5:
				return 0, fmt.Errorf("still revoked: %w", appliance.ErrRevoked)
			}
			return time.Hour, nil // released again
		}}
	r := start(t, disk, att)
	r.waitServing(t)
	<-revoked
	r.waitLog(t, "stopped serving, keys zeroized")
	if r.exporter.isServing() {
		t.Error("exporter still serving after revocation")
	}
	if !r.exporter.stores[0].isClosed() {
		t.Error("store not closed after revocation")
	}
	if !strings.Contains(r.log.String(), "reason=revoked") {
		t.Errorf("console does not say why:\n%s", r.log.String())
	}
	// Admitted again, but the unseal window is closed this boot: reboot.
	select {
	case <-r.done:
	case <-time.After(5 * time.Second):
		t.Fatal("no reboot after readmission")
	}
	if r.platform.reboots != 1 {
		t.Errorf("reboots = %d, want 1", r.platform.reboots)
	}
	if n, _ := att.counts(); n != 1 {
		t.Errorf("Unlock called %d times in one boot, want 1", n)
	}
}

// TestMonitorSeesLeasesAndServing: the Monitor hears of the unlock's and
// every heartbeat's leases, of serving with the store served, and of the
// stop, last, before the store is closed.
func TestMonitorSeesLeasesAndServing(t *testing.T) {
	disk := newMemDevice(64 << 10)
	att := &fakeAttester{tpm: "A", decide: grant(true, time.Hour), answers: []appliance.Answer{{Verifier: "tallinn", Outcome: appliance.OutcomeGranted, Lease: time.Hour}},
		heartbeat: func(n int) (time.Duration, error) {
			if n == 1 {
				return 200 * time.Millisecond, nil
			}
			return 0, fmt.Errorf("operator revoked: %w", appliance.ErrRevoked)
		}}
	r := start(t, disk, att)
	r.waitServing(t)
	r.waitLog(t, "stopped serving, keys zeroized")
	r.stop(t)
	ev := r.monitor.log()
	want := []string{"leases 1h0m0s tallinn=granted", "serving open", "leases 200ms", "stopped"}
	// The first heartbeat and Serving race (the exporter reports ready on
	// its own goroutine): compare without their order.
	if len(ev) != 4 || ev[0] != want[0] || ev[3] != want[3] || !slices.Contains(ev[1:3], want[1]) || !slices.Contains(ev[1:3], want[2]) {
		t.Fatalf("monitor heard %q, want %q (middle two in any order)", ev, want)
	}
	if !r.exporter.stores[0].isClosed() || r.monitor.store != r.exporter.stores[0] {
		t.Error("the store reported serving is not the one served and closed")
	}
}

func TestLeaseExpiresWhenVerifierUnreachable(t *testing.T) {
	disk := newMemDevice(64 << 10)
	att := &fakeAttester{tpm: "A", decide: grant(true, 400*time.Millisecond),
		heartbeat: func(int) (time.Duration, error) { return 0, errors.New("connection refused") }}
	r := start(t, disk, att)
	r.waitServing(t)
	r.waitLog(t, "stopped serving, keys zeroized")
	if r.exporter.isServing() {
		t.Error("still serving after the lease expired")
	}
	if !strings.Contains(r.log.String(), `reason="lease expired"`) {
		t.Errorf("console does not say the lease expired:\n%s", r.log.String())
	}
}

func TestOtherTPMHalts(t *testing.T) {
	disk := newMemDevice(64 << 10)
	r := start(t, disk, &fakeAttester{tpm: "A", decide: grant(true, time.Hour), heartbeat: beats(time.Hour)})
	r.waitServing(t)
	r.stop(t)

	att := &fakeAttester{tpm: "B", decide: grant(false, time.Hour), heartbeat: beats(time.Hour)}
	r2 := start(t, disk, att)
	r2.waitLog(t, "HALTED")
	if r2.exporter.isServing() {
		t.Error("served with another TPM")
	}
	time.Sleep(50 * time.Millisecond)
	if n, _ := att.counts(); n != 1 {
		t.Errorf("attested %d times after a halt, want 1", n)
	}
}

// A header whose epoch was raised to pass the verifier's epoch check, over a
// store older than that epoch, must not be served.
func TestStoreOlderThanReportedEpochHalts(t *testing.T) {
	disk := newMemDevice(64 << 10)
	r := start(t, disk, &fakeAttester{tpm: "A", decide: grant(true, time.Hour), heartbeat: beats(time.Hour)})
	r.waitServing(t)
	r.stop(t)
	if err := appliance.UpdateHeaderEpoch(disk, 8, 4096); err != nil { // the fake store's epoch is 7
		t.Fatal(err)
	}

	att := &fakeAttester{tpm: "A", decide: grant(false, time.Hour), heartbeat: beats(time.Hour)}
	r2 := start(t, disk, att)
	r2.waitLog(t, "rolled-back store")
	if r2.exporter.isServing() {
		t.Error("served a store older than the epoch reported to the verifier")
	}
	if att.epochs[0] != 8 {
		t.Errorf("reported epoch %d, want the header's 8", att.epochs[0])
	}
}

func TestStoreOpenFailureHalts(t *testing.T) {
	disk := newMemDevice(64 << 10)
	r := start(t, disk, &fakeAttester{tpm: "A", decide: grant(true, time.Hour), heartbeat: beats(time.Hour)})
	r.waitServing(t)
	r.stop(t)
	disk.buf[4096] ^= 0xff // the fake store's key check block

	r2 := start(t, disk, &fakeAttester{tpm: "A", decide: grant(false, time.Hour), heartbeat: beats(time.Hour)})
	r2.waitLog(t, "HALTED")
	if !strings.Contains(r2.log.String(), errWrongKey.Error()) {
		t.Errorf("console does not carry the store's error:\n%s", r2.log.String())
	}
	if r2.exporter.isServing() {
		t.Error("served a store that failed to open")
	}
}

func TestNewRequiresDependencies(t *testing.T) {
	if _, err := appliance.New(appliance.Options{}); err == nil {
		t.Fatal("New accepted empty options")
	}
}
