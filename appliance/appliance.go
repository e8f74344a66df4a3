// Package appliance is the on-rack program's boot sequence: measure the
// appliance's own binary and configuration, bring up the machine (modules,
// network), attest to the verifier, unlock the store on the data disk
// (formatting it on first boot when the verifier says to provision), close
// the unseal window by extending the phase PCR, serve NBD, and keep the lease
// alive by re-attesting. On refusal, revocation or an expired lease it
// zeroizes its keys, stops serving, says why on the console and retries with
// backoff.
//
// Every dependency the sequence drives (TPM, verifier client, store, NBD
// server, the Linux machine) is an interface declared here; the
// embassy-appliance command wires the real ones.
package appliance

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sort"
	"time"
)

// Verifier decisions the appliance acts on. Attesters wrap these.
var (
	// ErrRefused: the verifier did not accept the evidence (unknown
	// measurements, bad quote, unknown TPM, stale nonce ...).
	ErrRefused = errors.New("appliance: verifier refused attestation")
	// ErrRevoked: the appliance has been revoked by an operator.
	ErrRevoked = errors.New("appliance: appliance revoked")
	// ErrLeaseExpired: the lease ran out before it could be renewed.
	ErrLeaseExpired = errors.New("appliance: lease expired")
	// ErrHalted: unlocking failed for a reason retrying cannot fix (a
	// corrupt header, an integrity or rollback failure on open): the
	// appliance stops and waits for an operator.
	ErrHalted = errors.New("appliance: halted")
	// ErrLocked: the local share was already released this boot (phase PCR
	// extended); unlocking again needs a reboot.
	ErrLocked = errors.New("appliance: local key share locked until reboot")
)

// Unlocked is the result of a successful unlock: the verifier released its
// share and the TPM combined it with the local share.
type Unlocked struct {
	// KEK is the store's key-encryption key. The appliance zeroizes it.
	KEK []byte
	// Provision is set when the verifier has never seen a store from this
	// appliance: format the data disk.
	Provision bool
	// SealedLocal is the newly sealed local share when Provision is set;
	// it goes into the data disk header.
	SealedLocal []byte
	// Lease is how long the appliance may serve before a heartbeat.
	Lease time.Duration
	// Release names the release the verifier matched (for the console).
	Release string
}

// Attester is the appliance side of the verifier protocol (attest/agent).
type Attester interface {
	// Unlock attests the boot, reporting the store's last known epoch,
	// imports the verifier's share, unseals the local share from
	// sealedLocal (nil on a blank disk) or seals a new one, derives the KEK
	// and extends the phase PCR. Refusal and revocation are errors wrapping
	// ErrRefused or ErrRevoked (the phase PCR is then untouched); other
	// errors are transient unless Locked reports the phase PCR extended.
	Unlock(ctx context.Context, epoch uint64, sealedLocal []byte) (*Unlocked, error)
	// Heartbeat re-attests a running appliance and returns the renewed
	// lease; serverCert (DER, nil when not serving) is the NBD server
	// certificate, reported under the quote for the verifier to record.
	// Same error contract as Unlock.
	Heartbeat(ctx context.Context, epoch uint64, serverCert []byte) (time.Duration, error)
	// Locked reports whether the phase PCR has been extended this boot, so
	// that no share can be unsealed again until reboot.
	Locked() (bool, error)
}

// Store is an open store. The appliance treats it as opaque and hands it
// to the Exporter.
type Store interface {
	// Epoch is the store's commit epoch, reported to the verifier.
	Epoch() uint64
	// Flush makes completed writes durable.
	Flush() error
	// Close flushes, wipes the store's keys from memory and releases it.
	Close() error
}

// Storage formats and opens stores.
type Storage interface {
	// Format creates a new store on dev under kek and opens it.
	Format(dev Device, kek []byte) (Store, error)
	// Open opens the store on dev with kek. Rollback and integrity failures
	// are errors (and are fatal for this attempt).
	Open(dev Device, kek []byte) (Store, error)
}

// Exporter serves a store over NBD.
type Exporter interface {
	// Serve listens and serves store with the server identity id until ctx
	// ends, then closes the listener and every connection before
	// returning. ready is called once the listener is open.
	Serve(ctx context.Context, store Store, id *ServerIdentity, ready func(addr string)) error
}

// Platform is the machine: kernel modules, network, data disk, power.
type Platform interface {
	// LoadModules loads the kernel modules shipped in the image.
	LoadModules(ctx context.Context) error
	// ConfigureNetwork brings up the interface and returns its address.
	ConfigureNetwork(ctx context.Context, cfg NetworkConfig) (string, error)
	// OpenDisk opens the data disk read-write.
	OpenDisk(ctx context.Context, path string) (Device, error)
	// Reboot restarts the machine (to unseal again after a lock).
	Reboot() error
}

// Measurer extends the appliance's own PCR and keeps its event log.
type Measurer interface {
	// Measure records an event: its digest extends the PCR and the event
	// goes into the log the verifier replays.
	Measure(typ, name string, data []byte) error
}

// PCRReader reads PCR values for the console report.
type PCRReader interface {
	ReadPCRs(pcrs []int) (map[int][]byte, error)
}

// Measurement is one thing the appliance measures at start.
type Measurement struct {
	// Type is the event type ("binary", "config").
	Type string
	// Name names what was measured (its path).
	Name string
	// Data is what is hashed.
	Data []byte
}

// Options wire an Appliance.
type Options struct {
	// Config is the parsed configuration. Required.
	Config *Config
	// Measurements are measured, in order, before anything else runs.
	Measurements []Measurement
	// ReportPCRs are printed after measuring and after locking.
	ReportPCRs []int

	Platform Platform
	Measurer Measurer
	PCRs     PCRReader // optional
	Attester Attester
	Storage  Storage
	Exporter Exporter

	// Logger receives the console log (default slog.Default()).
	Logger *slog.Logger
	// RenewFraction is the part of the lease that may elapse before
	// renewing (default 0.5).
	RenewFraction float64
}

// Appliance runs the boot sequence. Create with New; call Run once.
type Appliance struct {
	o     Options
	log   *slog.Logger
	disk  Device
	start time.Time
}

// New checks opts and returns an Appliance.
func New(opts Options) (*Appliance, error) {
	if opts.Config == nil || opts.Platform == nil || opts.Measurer == nil || opts.Attester == nil ||
		opts.Storage == nil || opts.Exporter == nil {
		return nil, errors.New("appliance: Config, Platform, Measurer, Attester, Storage and Exporter are required")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.RenewFraction <= 0 || opts.RenewFraction >= 1 {
		opts.RenewFraction = 0.5
	}
	return &Appliance{o: opts, log: opts.Logger}, nil
}

// step runs fn, logging its duration and outcome.
func (a *Appliance) step(name string, fn func() error) error {
	t := time.Now()
	err := fn()
	took := time.Since(t).Round(time.Millisecond)
	if err != nil {
		a.log.Error("step failed", "step", name, "took", took, "err", err)
		return err
	}
	a.log.Info("step done", "step", name, "took", took, "since_start", time.Since(a.start).Round(time.Millisecond))
	return nil
}

// Run executes the boot sequence and then keeps serving until ctx ends. It
// returns only on ctx's end or an unrecoverable local error (bad disk,
// missing device); refusals are retried forever.
func (a *Appliance) Run(ctx context.Context) error {
	a.start = time.Now()
	cfg := a.o.Config
	a.log.Info("embassy appliance starting", "identity", cfg.Identity, "verifier", cfg.Verifier.URL)

	if err := a.step("measure", func() error {
		for _, m := range a.o.Measurements {
			sum := sha256.Sum256(m.Data)
			if err := a.o.Measurer.Measure(m.Type, m.Name, m.Data); err != nil {
				return fmt.Errorf("measuring %s: %w", m.Name, err)
			}
			a.log.Info("measured", "type", m.Type, "name", m.Name, "sha256", hex.EncodeToString(sum[:]))
		}
		return nil
	}); err != nil {
		return err
	}
	a.reportPCRs("after measuring")
	if err := a.step("modules", func() error { return a.o.Platform.LoadModules(ctx) }); err != nil {
		return err
	}
	if err := a.step("network", func() error {
		addr, err := a.o.Platform.ConfigureNetwork(ctx, cfg.Network)
		if err == nil {
			a.log.Info("network up", "interface", cfg.Network.Interface, "address", addr)
		}
		return err
	}); err != nil {
		return err
	}
	if err := a.step("disk", func() error {
		d, err := a.o.Platform.OpenDisk(ctx, cfg.Disk.Device)
		a.disk = d
		return err
	}); err != nil {
		return err
	}

	backoff := time.Duration(cfg.Retry.Initial)
	for {
		err := a.session(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, ErrLocked) {
			a.log.Warn("verifier accepts again but the local share is locked this boot: rebooting")
			return a.o.Platform.Reboot()
		}
		if errors.Is(err, ErrHalted) {
			a.log.Error("HALTED: not serving until an operator intervenes", "err", err)
			<-ctx.Done()
			return err
		}
		a.log.Warn("not serving; will retry", "reason", reason(err), "err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Duration(cfg.Retry.Max))
	}
}

// reason classifies why serving stopped, for the console.
func reason(err error) string {
	switch {
	case errors.Is(err, ErrRevoked):
		return "revoked"
	case errors.Is(err, ErrRefused):
		return "refused"
	case errors.Is(err, ErrLeaseExpired):
		return "lease expired"
	case errors.Is(err, ErrHalted):
		return "halted"
	default:
		return "error"
	}
}

// session attests, unlocks and serves until the lease is lost. It always
// returns a non-nil error saying why it stopped, after zeroizing.
func (a *Appliance) session(ctx context.Context) error {
	cfg := a.o.Config
	if locked, err := a.o.Attester.Locked(); err == nil && locked {
		return a.waitForReadmission(ctx)
	}

	hdr, err := ReadHeader(a.disk, cfg.Disk.HeaderSize)
	blank := errors.Is(err, ErrNoHeader)
	if err != nil && !blank {
		return fmt.Errorf("%w: %w", ErrHalted, err)
	}
	var sealed []byte
	var epoch uint64
	if !blank {
		sealed, epoch = hdr.SealedLocal, hdr.Epoch
	}

	var u *Unlocked
	if err := a.step("attest+unlock", func() error {
		var err error
		if u, err = a.o.Attester.Unlock(ctx, epoch, sealed); err != nil {
			return err
		}
		a.log.Info("verifier granted the key", "release", u.Release, "lease", u.Lease, "provision", u.Provision)
		return nil
	}); err != nil {
		if errors.Is(err, ErrRefused) || errors.Is(err, ErrRevoked) {
			return err
		}
		if locked, lerr := a.o.Attester.Locked(); lerr == nil && locked {
			// The verifier answered and the unseal window is closed:
			// retrying this boot cannot succeed.
			return fmt.Errorf("%w: %w", ErrHalted, err)
		}
		return err
	}
	defer clear(u.KEK)
	a.reportPCRs("after unlocking")

	storeDev, err := NewWindow(a.disk, cfg.Disk.HeaderSize)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrHalted, err)
	}
	var store Store
	if err := a.step("open store", func() error {
		var err error
		switch {
		case u.Provision && blank:
			a.log.Info("blank data disk: provisioning a new store")
			if store, err = a.o.Storage.Format(storeDev, u.KEK); err != nil {
				return fmt.Errorf("%w: formatting the store: %w", ErrHalted, err)
			}
			// The header goes last: a crash before this point leaves a
			// blank disk, provisioned again on the next boot.
			if err := WriteHeader(a.disk, Header{Epoch: store.Epoch(), SealedLocal: u.SealedLocal}, cfg.Disk.HeaderSize); err != nil {
				store.Close()
				return fmt.Errorf("%w: %w", ErrHalted, err)
			}
			a.log.Info("store formatted", "epoch", store.Epoch())
		case u.Provision:
			return fmt.Errorf("%w: the verifier says provision but the data disk holds a store", ErrHalted)
		default:
			if store, err = a.o.Storage.Open(storeDev, u.KEK); err != nil {
				return fmt.Errorf("%w: opening the store: %w", ErrHalted, err)
			}
			// The verifier checked the header's epoch, which is not
			// authenticated; the store's is. A store older than the epoch
			// just reported is a rolled-back store behind an edited header.
			if store.Epoch() < epoch {
				store.Close()
				return fmt.Errorf("%w: store epoch %d is older than the %d reported to the verifier: rolled-back store", ErrHalted, store.Epoch(), epoch)
			}
			a.log.Info("store opened", "epoch", store.Epoch())
		}
		return nil
	}); err != nil {
		return err
	}
	id, err := DeriveServerIdentity(u.KEK, cfg.Identity, a.certIPs())
	clear(u.KEK)
	if err != nil {
		store.Close()
		return fmt.Errorf("%w: %w", ErrHalted, err)
	}
	defer id.Zeroize()
	a.log.Info("nbd server identity", "sha256", id.Fingerprint,
		"cert", base64.StdEncoding.EncodeToString(id.Certificate.Certificate[0]))

	serveCtx, stopServing := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() {
		served <- a.o.Exporter.Serve(serveCtx, store, id, func(addr string) {
			a.log.Info("serving NBD", "addr", addr, "since_start", time.Since(a.start).Round(time.Millisecond))
		})
	}()
	stop := func(why error) error {
		stopServing()
		<-served
		// Zeroize: the store wipes its keys on Close.
		if err := store.Close(); err != nil {
			a.log.Error("closing store", "err", err)
		}
		a.log.Warn("stopped serving, keys zeroized", "reason", reason(why), "err", why)
		return why
	}

	expires := time.Now().Add(u.Lease)
	// The first heartbeat goes out at once: it reports the server identity
	// under a quote, so the home state's clients can pin it from the
	// verifier instead of trusting this console.
	var wait time.Duration
	for first := true; ; first = false {
		select {
		case <-ctx.Done():
			return stop(ctx.Err())
		case err := <-served:
			served <- err // stop reads it again
			return stop(fmt.Errorf("NBD server stopped: %w", err))
		case <-time.After(wait):
		}
		lease, err := a.heartbeat(ctx, store, expires, id.Certificate.Certificate[0])
		if err != nil {
			return stop(err)
		}
		expires = time.Now().Add(lease)
		if first {
			a.log.Info("server identity reported to the verifier", "sha256", id.Fingerprint, "lease", lease)
		} else {
			a.log.Info("lease renewed", "lease", lease, "epoch", store.Epoch())
		}
		wait = time.Duration(float64(time.Until(expires)) * a.o.RenewFraction)
	}
}

// heartbeat re-attests, reporting the NBD server certificate serverCert
// (DER), retrying transient failures until the lease expires. The store's
// epoch is recorded in the disk header first, so the next boot reports an
// epoch the verifier has seen (or a newer one).
func (a *Appliance) heartbeat(ctx context.Context, store Store, expires time.Time, serverCert []byte) (time.Duration, error) {
	cfg := a.o.Config
	delay := 200 * time.Millisecond
	for {
		epoch := store.Epoch()
		if err := UpdateHeaderEpoch(a.disk, epoch, cfg.Disk.HeaderSize); err != nil {
			a.log.Error("recording the epoch in the disk header", "err", err)
		}
		l, err := a.o.Attester.Heartbeat(ctx, epoch, serverCert)
		if err == nil {
			return l, nil
		}
		if errors.Is(err, ErrRefused) || errors.Is(err, ErrRevoked) {
			return 0, err
		}
		left := time.Until(expires)
		if left <= 0 {
			return 0, fmt.Errorf("%w (last error: %v)", ErrLeaseExpired, err)
		}
		a.log.Warn("heartbeat failed, retrying", "err", err, "lease_left", left.Round(time.Millisecond))
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(min(delay, left)):
		}
		delay = min(2*delay, 5*time.Second)
	}
}

// waitForReadmission runs when this boot's unseal window is closed (after a
// revocation, refusal or lost lease): it asks the verifier, by heartbeat,
// whether the appliance is admitted again, and returns ErrLocked (reboot)
// when it is.
func (a *Appliance) waitForReadmission(ctx context.Context) error {
	hdr, err := ReadHeader(a.disk, a.o.Config.Disk.HeaderSize)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrHalted, err)
	}
	if _, err := a.o.Attester.Heartbeat(ctx, hdr.Epoch, nil); err != nil {
		return err
	}
	return ErrLocked
}

// certIPs are the addresses the server certificate names: the static
// address, if any, and loopback (clients reaching the appliance through a
// port forward on their own machine).
func (a *Appliance) certIPs() []net.IP {
	ips := []net.IP{net.IPv4(127, 0, 0, 1)}
	if p, err := netip.ParsePrefix(a.o.Config.Network.Address); err == nil {
		ips = append(ips, net.IP(p.Addr().AsSlice()))
	}
	return ips
}

func (a *Appliance) reportPCRs(when string) {
	if a.o.PCRs == nil || len(a.o.ReportPCRs) == 0 {
		return
	}
	vals, err := a.o.PCRs.ReadPCRs(a.o.ReportPCRs)
	if err != nil {
		a.log.Warn("reading PCRs", "err", err)
		return
	}
	idx := make([]int, 0, len(vals))
	for i := range vals {
		idx = append(idx, i)
	}
	sort.Ints(idx)
	for _, i := range idx {
		a.log.Info("pcr", "when", when, "index", i, "sha256", hex.EncodeToString(vals[i]))
	}
}

// ConsoleLogger returns the appliance's console logger: slog's text handler
// on w (the serial console), with times.
func ConsoleLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
}
