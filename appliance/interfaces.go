package appliance

import (
	"context"
	"errors"
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
	// ErrLocked: the local share was already unsealed this boot (phase PCR
	// extended); unlocking again needs a reboot.
	ErrLocked = errors.New("appliance: local key share locked until reboot")
)

// Unlocked is the result of a successful unlock: the verifier granted its
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

// Measurement is one thing the appliance measures at start. Its fields are
// those of attest/measure.Subject, so the command converts the appliance's
// measurement plan (measure.AppliancePlan) to Measurements one for one
// while this package stays free of the TPM code.
type Measurement struct {
	// Type is the event type ("binary", "config").
	Type string
	// Name names what was measured (its path).
	Name string
	// Data is what is hashed.
	Data []byte
}
