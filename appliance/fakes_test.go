package appliance_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/dataembassy/embassy/appliance"
)

// memDevice is an in-memory Device.
type memDevice struct {
	mu  sync.Mutex
	buf []byte
}

func newMemDevice(size int) *memDevice { return &memDevice{buf: make([]byte, size)} }

func (d *memDevice) ReadAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if off < 0 || off+int64(len(p)) > int64(len(d.buf)) {
		return 0, fmt.Errorf("read out of range")
	}
	return copy(p, d.buf[off:]), nil
}

func (d *memDevice) WriteAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if off < 0 || off+int64(len(p)) > int64(len(d.buf)) {
		return 0, fmt.Errorf("write out of range")
	}
	return copy(d.buf[off:], p), nil
}

func (d *memDevice) Sync() error          { return nil }
func (d *memDevice) Size() (int64, error) { return int64(len(d.buf)), nil }

type fakePlatform struct {
	disk     *memDevice
	mu       sync.Mutex
	reboots  int
	rebooted chan struct{}
}

func (p *fakePlatform) LoadModules(context.Context) error { return nil }
func (p *fakePlatform) ConfigureNetwork(context.Context, appliance.NetworkConfig) (string, error) {
	return "10.0.2.15/24", nil
}
func (p *fakePlatform) OpenDisk(context.Context, string) (appliance.Device, error) {
	return p.disk, nil
}
func (p *fakePlatform) Reboot() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.reboots++
	if p.rebooted != nil {
		close(p.rebooted)
		p.rebooted = nil
	}
	return nil
}

type fakeMeasurer struct{ events []string }

func (m *fakeMeasurer) Measure(typ, name string, data []byte) error {
	m.events = append(m.events, fmt.Sprintf("%s:%s:%x", typ, name, sha256.Sum256(data)))
	return nil
}

// fakeAttester plays verifier and TPM: Unlock answers from a script, and
// the KEK is sha256(sealed share || "remote"), where a share sealed by
// another TPM does not unseal. A successful or post-decision Unlock closes
// the unseal window (Locked), as the real agent's phase PCR does.
type fakeAttester struct {
	tpm       string
	mu        sync.Mutex
	decide    func(n int) (provision bool, lease time.Duration, err error)
	heartbeat func(n int) (time.Duration, error)
	nUnlock   int
	nBeat     int
	// serverCerts are the certificates reported, one per heartbeat.
	serverCerts [][]byte
	locked      bool
	epochs      []uint64
}

func (a *fakeAttester) Unlock(_ context.Context, epoch uint64, sealed []byte) (*appliance.Unlocked, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.nUnlock++
	a.epochs = append(a.epochs, epoch)
	provision, lease, err := a.decide(a.nUnlock)
	if err != nil {
		return nil, err
	}
	if a.locked {
		return nil, errors.New("verifier: phase PCR already extended")
	}
	a.locked = true
	u := &appliance.Unlocked{Provision: provision, Lease: lease, Release: "test-release"}
	if provision {
		sealed = []byte("sealed-by-" + a.tpm)
		u.SealedLocal = sealed
	} else if !bytes.Equal(sealed, []byte("sealed-by-"+a.tpm)) {
		return nil, errors.New("unseal failed: sealed to another TPM")
	}
	sum := sha256.Sum256(append(append([]byte{}, sealed...), "remote"...))
	u.KEK = sum[:]
	return u, nil
}

func (a *fakeAttester) Heartbeat(_ context.Context, _ uint64, serverCert []byte) (time.Duration, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.nBeat++
	a.serverCerts = append(a.serverCerts, serverCert)
	return a.heartbeat(a.nBeat)
}

func (a *fakeAttester) Locked() (bool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.locked, nil
}

func (a *fakeAttester) counts() (int, int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.nUnlock, a.nBeat
}

// fakeStorage writes sha256(kek) at the start of the store device.
type fakeStorage struct{}

var errWrongKey = errors.New("fake store: wrong key")

type fakeStore struct {
	mu     sync.Mutex
	closed bool
}

func (s *fakeStore) Epoch() uint64 { return 7 }

func (s *fakeStore) Flush() error { return nil }
func (s *fakeStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	return nil
}
func (s *fakeStore) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

func (fakeStorage) Format(dev appliance.Device, kek []byte) (appliance.Store, error) {
	sum := sha256.Sum256(kek)
	if _, err := dev.WriteAt(sum[:], 0); err != nil {
		return nil, err
	}
	return &fakeStore{}, nil
}

func (fakeStorage) Open(dev appliance.Device, kek []byte) (appliance.Store, error) {
	got := make([]byte, 32)
	if _, err := dev.ReadAt(got, 0); err != nil {
		return nil, err
	}
	sum := sha256.Sum256(kek)
	if !bytes.Equal(got, sum[:]) {
		return nil, errWrongKey
	}
	return &fakeStore{}, nil
}

// fakeExporter serves until ctx ends and records what it served.
type fakeExporter struct {
	mu      sync.Mutex
	serving bool
	stores  []*fakeStore
	certs   [][]byte // the server certificate of each Serve
	started chan struct{}
	stopped chan struct{}
}

func newFakeExporter() *fakeExporter {
	return &fakeExporter{started: make(chan struct{}, 10), stopped: make(chan struct{}, 10)}
}

func (e *fakeExporter) Serve(ctx context.Context, st appliance.Store, id *appliance.ServerIdentity, ready func(string)) error {
	if id == nil || len(id.Certificate.Certificate) == 0 {
		return errors.New("no server identity")
	}
	e.mu.Lock()
	e.serving = true
	e.stores = append(e.stores, st.(*fakeStore))
	e.certs = append(e.certs, id.Certificate.Certificate[0])
	e.mu.Unlock()
	ready("127.0.0.1:10809")
	e.started <- struct{}{}
	<-ctx.Done()
	e.mu.Lock()
	e.serving = false
	e.mu.Unlock()
	e.stopped <- struct{}{}
	return ctx.Err()
}

func (e *fakeExporter) isServing() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.serving
}
