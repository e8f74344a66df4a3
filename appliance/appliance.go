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
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
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
	// ErrNotProvisioned: the data disk is blank and the verifier did not ask
	// for provisioning, so there is nothing to unlock.
	ErrNotProvisioned = errors.New("appliance: blank data disk and no provisioning grant")
	// ErrHalted: unlocking failed for a reason retrying cannot fix (a
	// corrupt header, an integrity or rollback failure on open): the
	// appliance stops and waits for an operator.
	ErrHalted = errors.New("appliance: halted")
	// ErrLocked: the local share was already released this boot (phase PCR
	// extended); unlocking again needs a reboot.
	ErrLocked = errors.New("appliance: local key share locked until reboot")
)

// Lease is a verifier's positive decision.
type Lease struct {
	// Expires is when the appliance must stop serving unless renewed.
	Expires time.Time
	// Provision is set when the verifier wants a blank disk formatted.
	Provision bool
	// RemoteShare is the verifier's key share, already imported/decrypted by
	// the attester (bound to this TPM and its PCRs).
	RemoteShare []byte
}

// Attester is the appliance side of the verifier protocol.
type Attester interface {
	// Attest sends fresh evidence (quote over a verifier nonce, event logs)
	// and returns the lease with the remote share. Refusal and revocation
	// are errors wrapping ErrRefused or ErrRevoked; anything else is treated
	// as transient (verifier unreachable) and retried.
	Attest(ctx context.Context) (*Lease, error)
	// Renew re-attests while serving and returns the extended lease. The
	// remote share is not sent again. Same error contract as Attest.
	Renew(ctx context.Context) (*Lease, error)
}

// KeyShares is the TPM side of the key: the local share sealed to this TPM
// and its boot measurements, and the phase PCR that closes the unseal window.
type KeyShares interface {
	// SealNew creates a new random local share sealed to the TPM and returns
	// the sealed blob (stored in the data disk header).
	SealNew(ctx context.Context) ([]byte, error)
	// KEK unseals the local share from sealed and combines it with the
	// remote share into the store's key-encryption key.
	KEK(ctx context.Context, sealed, remote []byte) ([]byte, error)
	// Lock extends the phase PCR: the local share cannot be unsealed again
	// until reboot.
	Lock(ctx context.Context) error
}

// Store is an open store. The appliance treats it as opaque and hands it
// to the Exporter.
type Store interface {
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
	// Serve listens and serves store until ctx ends, then closes the
	// listener and every connection before returning. ready is called once
	// the listener is open.
	Serve(ctx context.Context, store Store, ready func(addr string)) error
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
	// Measure records an event: the digest of data extends the PCR, the
	// description and digest go into the log.
	Measure(description string, data []byte) error
}

// PCRReader reads PCR values for the console report.
type PCRReader interface {
	ReadPCRs(pcrs []int) (map[int][]byte, error)
}

// Measurement is one thing the appliance measures at start.
type Measurement struct {
	// Description names it in the event log ("embassy-appliance binary").
	Description string
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
	Keys     KeyShares
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
	o      Options
	log    *slog.Logger
	locked bool
	disk   Device
	start  time.Time
}

// New checks opts and returns an Appliance.
func New(opts Options) (*Appliance, error) {
	if opts.Config == nil || opts.Platform == nil || opts.Measurer == nil || opts.Attester == nil ||
		opts.Keys == nil || opts.Storage == nil || opts.Exporter == nil {
		return nil, errors.New("appliance: Config, Platform, Measurer, Attester, Keys, Storage and Exporter are required")
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
			if err := a.o.Measurer.Measure(m.Description, m.Data); err != nil {
				return fmt.Errorf("measuring %s: %w", m.Description, err)
			}
			a.log.Info("measured", "what", m.Description, "sha256", hex.EncodeToString(sum[:]))
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
	case errors.Is(err, ErrNotProvisioned):
		return "not provisioned"
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
	var lease *Lease
	if err := a.step("attest", func() error {
		l, err := a.o.Attester.Attest(ctx)
		if err != nil {
			return err
		}
		lease = l
		a.log.Info("verifier accepted", "lease_expires", l.Expires.UTC().Format(time.RFC3339), "provision", l.Provision)
		return nil
	}); err != nil {
		return err
	}
	defer clear(lease.RemoteShare)
	if a.locked {
		return ErrLocked
	}

	storeDev, err := NewWindow(a.disk, cfg.Disk.HeaderSize)
	if err != nil {
		return err
	}
	var store Store
	unsealed := false
	if err := a.step("unlock", func() error {
		sealed, err := ReadHeader(a.disk, cfg.Disk.HeaderSize)
		provision := false
		switch {
		case errors.Is(err, ErrNoHeader) && lease.Provision:
			provision = true
			a.log.Info("blank data disk: provisioning a new store")
			if sealed, err = a.o.Keys.SealNew(ctx); err != nil {
				return fmt.Errorf("sealing a new local share: %w", err)
			}
		case errors.Is(err, ErrNoHeader):
			return ErrNotProvisioned
		case err != nil:
			return fmt.Errorf("%w: %w", ErrHalted, err)
		}
		unsealed = true
		kek, err := a.o.Keys.KEK(ctx, sealed, lease.RemoteShare)
		if err != nil {
			return fmt.Errorf("%w: deriving the KEK: %w", ErrHalted, err)
		}
		defer clear(kek)
		if provision {
			if store, err = a.o.Storage.Format(storeDev, kek); err != nil {
				return fmt.Errorf("%w: formatting the store: %w", ErrHalted, err)
			}
			// The header goes last: a crash before this point leaves a blank
			// disk that is provisioned again.
			if err := WriteHeader(a.disk, sealed, cfg.Disk.HeaderSize); err != nil {
				store.Close()
				return err
			}
			a.log.Info("store formatted")
			return nil
		}
		if store, err = a.o.Storage.Open(storeDev, kek); err != nil {
			return fmt.Errorf("%w: opening the store: %w", ErrHalted, err)
		}
		a.log.Info("store opened")
		return nil
	}); err != nil {
		// Close the unseal window even on failure once the share was
		// touched: a failed unlock must not leave it open.
		if unsealed {
			a.lock(ctx)
		}
		return err
	}
	if err := a.lock(ctx); err != nil {
		store.Close()
		return err
	}
	a.reportPCRs("after locking")

	serveCtx, stopServing := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() {
		served <- a.o.Exporter.Serve(serveCtx, store, func(addr string) {
			a.log.Info("serving NBD", "addr", addr, "since_start", time.Since(a.start).Round(time.Millisecond))
		})
	}()
	stop := func(why error) error {
		stopServing()
		serr := <-served
		// Zeroize: the store wipes its keys on Close.
		if err := store.Close(); err != nil {
			a.log.Error("closing store", "err", err)
		}
		a.log.Warn("stopped serving, keys zeroized", "reason", reason(why), "err", why)
		if serr != nil && !errors.Is(serr, context.Canceled) && why == nil {
			return serr
		}
		return why
	}

	for {
		renewAt := time.Until(lease.Expires)
		renewAt = time.Duration(float64(renewAt) * a.o.RenewFraction)
		select {
		case <-ctx.Done():
			return stop(ctx.Err())
		case err := <-served:
			served <- err // stop reads it again
			return stop(fmt.Errorf("NBD server stopped: %w", err))
		case <-time.After(renewAt):
		}
		l, err := a.renew(ctx, lease.Expires)
		if err != nil {
			return stop(err)
		}
		lease.Expires = l.Expires
		a.log.Info("lease renewed", "lease_expires", l.Expires.UTC().Format(time.RFC3339))
	}
}

// renew re-attests, retrying transient failures until the lease expires.
func (a *Appliance) renew(ctx context.Context, expires time.Time) (*Lease, error) {
	delay := 200 * time.Millisecond
	for {
		l, err := a.o.Attester.Renew(ctx)
		if err == nil {
			return l, nil
		}
		if errors.Is(err, ErrRefused) || errors.Is(err, ErrRevoked) {
			return nil, err
		}
		left := time.Until(expires)
		if left <= 0 {
			return nil, fmt.Errorf("%w (last error: %v)", ErrLeaseExpired, err)
		}
		a.log.Warn("renewal failed, retrying", "err", err, "lease_left", left.Round(time.Millisecond))
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(min(delay, left)):
		}
		delay = min(2*delay, 5*time.Second)
	}
}

func (a *Appliance) lock(ctx context.Context) error {
	if a.locked {
		return nil
	}
	return a.step("lock", func() error {
		if err := a.o.Keys.Lock(ctx); err != nil {
			return fmt.Errorf("extending the phase PCR: %w", err)
		}
		a.locked = true
		return nil
	})
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
