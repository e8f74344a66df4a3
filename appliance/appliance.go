// Package appliance is the on-rack program's boot sequence: measure the
// appliance's own binary and configuration, bring up the machine (modules,
// network), attest to the n configured verifiers, unlock the store on the
// data disk once k of them grant their key shares (formatting it on first
// boot when they say to provision), close the unseal window by extending the
// phase PCR, serve NBD, and keep the quorum lease alive by re-attesting. On
// refusal or revocation by so many verifiers that fewer than k remain, or an
// expired lease, it zeroizes its keys, stops serving, says why on the
// console and retries with backoff.
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
	"log/slog"
	"net"
	"net/netip"
	"time"
)

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
	Monitor  Monitor // optional

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
	if opts.Monitor == nil {
		opts.Monitor = noMonitor{}
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
	names := make([]string, len(cfg.Verifiers))
	for i, v := range cfg.Verifiers {
		names[i] = v.Name
	}
	a.log.Info("embassy appliance starting", "identity", cfg.Identity, "verifiers", names, "threshold", cfg.Threshold)
	for _, v := range cfg.Verifiers {
		a.log.Info("verifier", "name", v.Name, "url", v.URL)
	}

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
	if locked, err := a.o.Attester.Locked(); err == nil && locked {
		return a.waitForReadmission(ctx)
	}
	hdr, err := ReadHeader(a.disk, a.o.Config.Disk.HeaderSize)
	blank := errors.Is(err, ErrNoHeader)
	if err != nil && !blank {
		if errors.Is(err, ErrHeaderVersion) {
			a.log.Error("data disk header is version 1: re-provision the store", "err", err)
		}
		return fmt.Errorf("%w: %w", ErrHalted, err)
	}
	var sealed *SealedShares
	var epoch uint64
	if !blank {
		sealed, epoch = &hdr.Sealed, hdr.Epoch
	}

	u, err := a.unlock(ctx, epoch, sealed)
	if err != nil {
		return err
	}
	defer clear(u.KEK)
	a.reportPCRs("after unlocking")

	store, err := a.openStore(u, blank, epoch)
	if err != nil {
		return err
	}
	id, err := DeriveServerIdentity(u.KEK, a.o.Config.Identity, a.certIPs())
	clear(u.KEK)
	if err != nil {
		store.Close()
		return fmt.Errorf("%w: %w", ErrHalted, err)
	}
	defer id.Zeroize()
	a.log.Info("nbd server identity", "sha256", id.Fingerprint,
		"cert", base64.StdEncoding.EncodeToString(id.Certificate.Certificate[0]))
	return a.serve(ctx, store, id, u.Lease)
}

// unlock attests the boot and receives the KEK. Refusal and revocation are
// returned as they are; any other failure after the unseal window closed
// halts the appliance, since retrying this boot cannot succeed.
func (a *Appliance) unlock(ctx context.Context, epoch uint64, sealed *SealedShares) (*Unlocked, error) {
	var u *Unlocked
	err := a.step("attest+unlock", func() error {
		var err error
		if u, err = a.o.Attester.Unlock(ctx, epoch, sealed); err != nil {
			// The error names every verifier's answer.
			a.log.Warn("verifiers did not grant the key", "err", err)
			return err
		}
		a.logAnswers(u.Answers, false)
		a.o.Monitor.Leases(u.Answers, u.Lease)
		a.log.Info("verifier granted the key", "release", u.Release, "lease", u.Lease, "provision", u.Provision)
		return nil
	})
	if err == nil {
		return u, nil
	}
	if errors.Is(err, ErrRefused) || errors.Is(err, ErrRevoked) {
		return nil, err
	}
	if locked, lerr := a.o.Attester.Locked(); lerr == nil && locked {
		return nil, fmt.Errorf("%w: %w", ErrHalted, err)
	}
	return nil, err
}

// openStore formats the store on a blank disk the verifier says to
// provision, or opens the existing one and checks its authenticated epoch
// against the one reported to the verifier. Every failure halts.
func (a *Appliance) openStore(u *Unlocked, blank bool, epoch uint64) (Store, error) {
	cfg := a.o.Config
	storeDev, err := NewWindow(a.disk, cfg.Disk.HeaderSize)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrHalted, err)
	}
	var store Store
	err = a.step("open store", func() error {
		var err error
		switch {
		case u.Provision && blank:
			a.log.Info("blank data disk: provisioning a new store")
			if store, err = a.o.Storage.Format(storeDev, u.KEK); err != nil {
				return fmt.Errorf("%w: formatting the store: %w", ErrHalted, err)
			}
			// The header goes last: a crash before this point leaves a
			// blank disk, provisioned again on the next boot.
			if u.Sealed == nil {
				store.Close()
				return fmt.Errorf("%w: the attester returned no sealed local share to keep in the header", ErrHalted)
			}
			if err := WriteHeader(a.disk, Header{Epoch: store.Epoch(), Sealed: *u.Sealed}, cfg.Disk.HeaderSize); err != nil {
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
			// Rewrite the sealed shares on every unlock: the verifiers
			// send blobs for the releases published now, so withdrawn
			// releases drop out and new ones appear.
			if u.Sealed == nil {
				a.log.Warn("the attester returned no sealed local shares: keeping the header's")
			} else if err := WriteHeader(a.disk, Header{Epoch: store.Epoch(), Sealed: *u.Sealed}, cfg.Disk.HeaderSize); err != nil {
				store.Close()
				return fmt.Errorf("%w: %w", ErrHalted, err)
			}
			a.log.Info("store opened", "epoch", store.Epoch())
		}
		return nil
	})
	return store, err
}

// serve exports store until the lease is lost, ctx ends or the NBD server
// stops, renewing the lease by heartbeat; then it stops serving and closes
// (zeroizes) the store, and returns why.
func (a *Appliance) serve(ctx context.Context, store Store, id *ServerIdentity, lease time.Duration) error {
	serveCtx, stopServing := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() {
		served <- a.o.Exporter.Serve(serveCtx, store, id, func(addr string) {
			a.log.Info("serving NBD", "addr", addr, "since_start", time.Since(a.start).Round(time.Millisecond))
			a.o.Monitor.Serving(store, id)
		})
	}()
	stop := func(why error) error {
		stopServing()
		<-served
		a.o.Monitor.Stopped()
		// Zeroize: the store wipes its keys on Close.
		if err := store.Close(); err != nil {
			a.log.Error("closing store", "err", err)
		}
		a.log.Warn("stopped serving, keys zeroized", "reason", reason(why), "err", why)
		return why
	}

	expires := time.Now().Add(lease)
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
		r, err := a.heartbeat(ctx, store, expires, id.Certificate.Certificate[0])
		if err != nil {
			return stop(err)
		}
		renewed := r.Lease
		expires = time.Now().Add(renewed)
		if first {
			a.log.Info("server identity reported to the verifier", "sha256", id.Fingerprint, "lease", renewed, "renewed_by", renewedBy(r.Answers))
		} else {
			a.log.Info("lease renewed", "lease", renewed, "epoch", store.Epoch(), "renewed_by", renewedBy(r.Answers))
		}
		wait = time.Duration(float64(time.Until(expires)) * a.o.RenewFraction)
	}
}

// noMonitor is the Monitor of an appliance given none.
type noMonitor struct{}

func (noMonitor) Leases([]Answer, time.Duration) {}
func (noMonitor) Serving(Store, *ServerIdentity) {}
func (noMonitor) Stopped()                       {}

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
