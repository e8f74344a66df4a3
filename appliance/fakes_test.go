package appliance_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"maps"
	"slices"
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

// fakeAttester plays the verifiers and the TPM: Unlock answers from a
// script. The local share is "local-of-TPM"; it is sealed per release as
// "sealed-by-TPM-for-RELEASE", so a blob sealed by another TPM, or to
// another release, does not unseal; the KEK is sha256(local || set id ||
// "remote"), the same for every release of one provisioning. A successful
// or post-decision Unlock closes the unseal window (Locked), as the real
// agent's phase PCR does.
type fakeAttester struct {
	tpm string
	// release is the release this boot runs (default "test-release").
	release string
	// published are the releases the verifiers publish: Unlocked.Sealed
	// holds a blob for each (default: release alone).
	published []string
	mu        sync.Mutex
	decide    func(n int) (provision bool, lease time.Duration, err error)
	heartbeat func(n int) (time.Duration, error)
	// renewal, when set, answers heartbeats instead of heartbeat.
	renewal func(n int) (*appliance.Renewal, error)
	// answers are returned in every Unlocked.
	answers []appliance.Answer
	nUnlock int
	nBeat   int
	// serverCerts are the certificates reported, one per heartbeat.
	serverCerts [][]byte
	locked      bool
	epochs      []uint64
	// sealedSeen are deep copies of the sealed shares passed to Unlock
	// (nil entries for a blank disk).
	sealedSeen []*appliance.SealedShares
	// granted are the Sealed contents returned, one per successful Unlock.
	granted []appliance.SealedShares
}

func (a *fakeAttester) thisRelease() string {
	if a.release == "" {
		return "test-release"
	}
	return a.release
}

func (a *fakeAttester) blob(release string) []byte {
	return []byte("sealed-by-" + a.tpm + "-for-" + release)
}

func copyShares(s *appliance.SealedShares) *appliance.SealedShares {
	if s == nil {
		return nil
	}
	return &appliance.SealedShares{Set: s.Set, ByRelease: maps.Clone(s.ByRelease)}
}

func (a *fakeAttester) Unlock(_ context.Context, epoch uint64, sealed *appliance.SealedShares) (*appliance.Unlocked, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.nUnlock++
	a.epochs = append(a.epochs, epoch)
	a.sealedSeen = append(a.sealedSeen, copyShares(sealed))
	provision, lease, err := a.decide(a.nUnlock)
	if err != nil {
		return nil, err
	}
	if a.locked {
		return nil, errors.New("verifier: phase PCR already extended")
	}
	a.locked = true
	rel := a.thisRelease()
	u := &appliance.Unlocked{Provision: provision, Lease: lease, Release: rel, Answers: a.answers}
	var set [16]byte
	if provision {
		copy(set[:], "set-of-"+a.tpm)
	} else {
		if sealed == nil || !bytes.Equal(sealed.ByRelease[rel], a.blob(rel)) {
			return nil, errors.New("unseal failed: sealed to another TPM or release")
		}
		set = sealed.Set
	}
	u.Sealed = &appliance.SealedShares{Set: set, ByRelease: map[string][]byte{}}
	for _, r := range append([]string{rel}, a.published...) {
		u.Sealed.ByRelease[r] = a.blob(r)
	}
	a.granted = append(a.granted, *copyShares(u.Sealed))
	sum := sha256.Sum256(append(append([]byte("local-of-"+a.tpm), set[:]...), "remote"...))
	u.KEK = sum[:]
	return u, nil
}

func (a *fakeAttester) Heartbeat(_ context.Context, _ uint64, serverCert []byte) (*appliance.Renewal, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.nBeat++
	a.serverCerts = append(a.serverCerts, serverCert)
	if a.renewal != nil {
		return a.renewal(a.nBeat)
	}
	l, err := a.heartbeat(a.nBeat)
	if err != nil {
		return nil, err
	}
	return &appliance.Renewal{Lease: l}, nil
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

// fakeMonitor records what it is told, one line per call.
type fakeMonitor struct {
	mu     sync.Mutex
	events []string
	store  appliance.Store
}

func (m *fakeMonitor) add(e string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.events = append(m.events, e)
}

func (m *fakeMonitor) Leases(answers []appliance.Answer, quorum time.Duration) {
	e := "leases " + quorum.String()
	for _, a := range answers {
		e += " " + a.Verifier + "=" + a.Outcome
	}
	m.add(e)
}

func (m *fakeMonitor) Serving(st appliance.Store, id *appliance.ServerIdentity) {
	state := "open"
	if st.(*fakeStore).isClosed() || len(id.Certificate.Certificate) == 0 {
		state = "closed or without identity"
	}
	m.mu.Lock()
	m.store = st
	m.mu.Unlock()
	m.add("serving " + state)
}

func (m *fakeMonitor) Stopped() { m.add("stopped") }

func (m *fakeMonitor) log() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.events)
}
