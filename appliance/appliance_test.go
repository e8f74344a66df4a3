package appliance_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
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
	keys     *fakeKeys
	exporter *fakeExporter
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

// start runs an appliance on disk with the given TPM name and attester.
func start(t *testing.T, disk *memDevice, tpm string, att *fakeAttester) *rig {
	t.Helper()
	r := &rig{
		platform: &fakePlatform{disk: disk, rebooted: make(chan struct{})},
		measurer: &fakeMeasurer{},
		attester: att,
		keys:     &fakeKeys{tpm: tpm},
		exporter: newFakeExporter(),
		log:      &syncBuffer{},
		done:     make(chan struct{}),
	}
	a, err := appliance.New(appliance.Options{
		Config:       testConfig(),
		Measurements: []appliance.Measurement{{Description: "binary", Data: []byte("bin")}, {Description: "config", Data: []byte("cfg")}},
		Platform:     r.platform, Measurer: r.measurer, Attester: r.attester, Keys: r.keys,
		Storage: fakeStorage{}, Exporter: r.exporter,
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

func (r *rig) stop(t *testing.T) {
	t.Helper()
	r.cancel()
	select {
	case <-r.done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return")
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

func alwaysLease(d time.Duration, provision bool) func(int) (*appliance.Lease, error) {
	return func(int) (*appliance.Lease, error) { return lease(d, provision), nil }
}

func TestFirstBootProvisionsThenReopens(t *testing.T) {
	disk := newMemDevice(64 << 10)
	r := start(t, disk, "tpm-A", &fakeAttester{attest: alwaysLease(time.Hour, true), renew: alwaysLease(time.Hour, false)})
	r.waitServing(t)
	if !r.keys.isLocked() {
		t.Error("serving before the phase PCR was extended")
	}
	if len(r.measurer.events) != 2 || !strings.HasPrefix(r.measurer.events[0], "binary:") {
		t.Errorf("measurements %v", r.measurer.events)
	}
	if _, err := appliance.ReadHeader(disk, 4096); err != nil {
		t.Fatalf("no header after provisioning: %v", err)
	}
	r.stop(t)
	if !r.exporter.stores[0].isClosed() {
		t.Error("store not closed (keys not zeroized) on shutdown")
	}

	// Reboot: same disk, same TPM, verifier no longer says provision.
	r2 := start(t, disk, "tpm-A", &fakeAttester{attest: alwaysLease(time.Hour, false), renew: alwaysLease(time.Hour, false)})
	r2.waitServing(t)
	if r2.keys.sealed != 0 {
		t.Error("second boot sealed a new share instead of reusing the disk's")
	}
	if !strings.Contains(r2.log.String(), "store opened") {
		t.Errorf("second boot did not open the existing store:\n%s", r2.log.String())
	}
}

func TestRefusedRetriesWithoutUnlocking(t *testing.T) {
	disk := newMemDevice(64 << 10)
	att := &fakeAttester{
		attest: func(n int) (*appliance.Lease, error) {
			if n <= 3 {
				return nil, fmt.Errorf("PCR 9 differs: %w", appliance.ErrRefused)
			}
			return lease(time.Hour, true), nil
		},
		renew: alwaysLease(time.Hour, false),
	}
	r := start(t, disk, "tpm-A", att)
	r.waitServing(t)
	if n, _ := att.counts(); n != 4 {
		t.Errorf("attested %d times, want 4", n)
	}
	if got := strings.Count(r.log.String(), "reason=refused"); got != 3 {
		t.Errorf("logged %d refusals, want 3:\n%s", got, r.log.String())
	}
	if r.keys.kekCall != 1 {
		t.Errorf("KEK derived %d times, want 1 (only after acceptance)", r.keys.kekCall)
	}
}

func TestRevokedWhileServingStopsAndZeroizes(t *testing.T) {
	disk := newMemDevice(64 << 10)
	att := &fakeAttester{
		attest: alwaysLease(300*time.Millisecond, true),
		renew: func(n int) (*appliance.Lease, error) {
			if n == 1 {
				return lease(300*time.Millisecond, false), nil
			}
			return nil, fmt.Errorf("operator revoked: %w", appliance.ErrRevoked)
		},
	}
	r := start(t, disk, "tpm-A", att)
	r.waitServing(t)
	r.waitLog(t, "stopped serving, keys zeroized")
	if r.exporter.isServing() {
		t.Error("exporter still serving")
	}
	if !r.exporter.stores[0].isClosed() {
		t.Error("store not closed after revocation")
	}
	if !strings.Contains(r.log.String(), "reason=revoked") {
		t.Errorf("console does not say why:\n%s", r.log.String())
	}
	// The verifier accepts again, but the local share is locked: reboot.
	select {
	case <-r.done:
	case <-time.After(5 * time.Second):
		t.Fatal("no reboot after re-acceptance")
	}
	if r.platform.reboots != 1 {
		t.Errorf("reboots = %d, want 1", r.platform.reboots)
	}
}

func TestLeaseExpiresWhenVerifierUnreachable(t *testing.T) {
	disk := newMemDevice(64 << 10)
	att := &fakeAttester{
		attest: func(n int) (*appliance.Lease, error) {
			if n == 1 {
				return lease(400*time.Millisecond, true), nil
			}
			return nil, errors.New("connection refused")
		},
		renew: func(int) (*appliance.Lease, error) { return nil, errors.New("connection refused") },
	}
	r := start(t, disk, "tpm-A", att)
	r.waitServing(t)
	r.waitLog(t, "stopped serving, keys zeroized")
	if r.exporter.isServing() {
		t.Error("still serving after the lease expired")
	}
	if !strings.Contains(r.log.String(), `reason="lease expired"`) {
		t.Errorf("console does not say the lease expired:\n%s", r.log.String())
	}
}

func TestBlankDiskWithoutProvisionNeverFormats(t *testing.T) {
	disk := newMemDevice(64 << 10)
	r := start(t, disk, "tpm-A", &fakeAttester{attest: alwaysLease(time.Hour, false), renew: alwaysLease(time.Hour, false)})
	deadline := time.Now().Add(300 * time.Millisecond)
	for time.Now().Before(deadline) && !strings.Contains(r.log.String(), "not provisioned") {
		time.Sleep(10 * time.Millisecond)
	}
	if !strings.Contains(r.log.String(), `reason="not provisioned"`) {
		t.Fatalf("no 'not provisioned' on the console:\n%s", r.log.String())
	}
	if r.exporter.isServing() || r.keys.sealed != 0 || r.keys.isLocked() {
		t.Error("blank disk without a provisioning grant was served, sealed or locked")
	}
	if _, err := appliance.ReadHeader(disk, 4096); !errors.Is(err, appliance.ErrNoHeader) {
		t.Errorf("header written: %v", err)
	}
}

func TestOtherTPMHalts(t *testing.T) {
	disk := newMemDevice(64 << 10)
	r := start(t, disk, "tpm-A", &fakeAttester{attest: alwaysLease(time.Hour, true), renew: alwaysLease(time.Hour, false)})
	r.waitServing(t)
	r.stop(t)

	r2 := start(t, disk, "tpm-B", &fakeAttester{attest: alwaysLease(time.Hour, false), renew: alwaysLease(time.Hour, false)})
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) && !strings.Contains(r2.log.String(), "HALTED") {
		time.Sleep(10 * time.Millisecond)
	}
	if !strings.Contains(r2.log.String(), "HALTED") {
		t.Fatalf("no halt with another TPM:\n%s", r2.log.String())
	}
	if r2.exporter.isServing() {
		t.Error("served with another TPM")
	}
	if !r2.keys.isLocked() {
		t.Error("unseal window left open after a failed unlock")
	}
	if n, _ := r2.attester.counts(); n != 1 {
		t.Errorf("attested %d times after a halt, want 1", n)
	}
}

func TestNewRequiresDependencies(t *testing.T) {
	if _, err := appliance.New(appliance.Options{}); err == nil {
		t.Fatal("New accepted empty options")
	}
}
