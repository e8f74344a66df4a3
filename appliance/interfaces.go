package appliance

import (
	"context"
	"errors"
	"time"
)

// Verifier decisions the appliance acts on. Attesters wrap these.
var (
	// ErrRefused: verifiers did not accept the evidence (unknown
	// measurements, bad quote, unknown TPM, stale nonce ...), so many that
	// fewer than k of the n configured verifiers could still grant.
	ErrRefused = errors.New("appliance: verifier refused attestation")
	// ErrRevoked: the appliance has been revoked by an operator at enough
	// verifiers that fewer than k could still grant.
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

// SealedShares is what the data disk header keeps of the key: the
// provisioning (key split) the store belongs to and the TPM-sealed local
// key share for each release it may boot (release label -> sealed blob).
// The local share is the same for every release; each blob seals it to one
// release's PCR values, so an upgrade boots with the blob of the new
// release and keeps the store.
type SealedShares struct {
	// Set identifies the provisioning: the split of the remote secret into
	// one share per verifier that this store's KEK was derived under. The
	// k verifiers that grant their shares must be granting shares of this
	// set.
	Set [16]byte
	// ByRelease maps a release label to the local share sealed to that
	// release's PCRs. Labels are 1..255 bytes of UTF-8.
	ByRelease map[string][]byte
}

// Answer outcomes (Answer.Outcome).
const (
	// OutcomeGranted: the verifier granted its share at unlock.
	OutcomeGranted = "granted"
	// OutcomeRenewed: the verifier renewed its lease on a heartbeat.
	OutcomeRenewed = "renewed"
	// OutcomeRefused: the verifier did not accept the evidence; its lease,
	// if any, has ended.
	OutcomeRefused = "refused"
	// OutcomeRevoked: an operator revoked the appliance at this verifier;
	// its lease, if any, has ended.
	OutcomeRevoked = "revoked"
	// OutcomeUnreachable: no answer (network, TLS, timeout); its lease runs
	// on until it expires.
	OutcomeUnreachable = "unreachable"
	// OutcomeUnused: the verifier was not asked or its answer not needed
	// (k others answered first).
	OutcomeUnused = "unused"
)

// Answer is one verifier's answer to one attestation (Unlock or
// Heartbeat). Every configured verifier has an Answer, whether or not its
// share was needed.
type Answer struct {
	// Verifier is the verifier's configured name (VerifierConfig.Name).
	Verifier string
	// Outcome is one of the Outcome constants: "granted" (share granted
	// at unlock), "renewed" (lease renewed on a heartbeat), "refused",
	// "revoked", "unreachable" or "unused" (not asked, or not needed: k
	// others answered first).
	Outcome string
	// Release is the release label the verifier matched, if any.
	Release string
	// Lease is this verifier's lease; zero unless granted or renewed.
	Lease time.Duration
	// Err says why, for refused, revoked and unreachable.
	Err error
}

// Unlocked is the result of a successful unlock: at least k of the n
// configured verifiers granted their shares of the remote secret, the agent
// combined them and the TPM's local share into the KEK.
type Unlocked struct {
	// KEK is the store's key-encryption key. The appliance zeroizes it.
	KEK []byte
	// Provision is set when the verifiers have never seen a store from
	// this appliance: format the data disk.
	Provision bool
	// Sealed is the complete header content to write now: the set id, the
	// local share sealed to this release and to the other releases the
	// verifiers publish. It replaces the header's content, so releases
	// withdrawn since drop out and new ones appear.
	Sealed *SealedShares
	// Lease is how long the appliance may serve before a heartbeat: until
	// fewer than k verifiers' leases are still valid.
	Lease time.Duration
	// Release names the release the granting verifiers matched (for the
	// console).
	Release string
	// Answers holds every configured verifier's answer, in configuration
	// order.
	Answers []Answer
}

// Renewal is the result of a successful heartbeat: at least k verifiers
// renewed their leases.
type Renewal struct {
	// Lease is how long the appliance may serve before the next heartbeat:
	// until fewer than k verifiers' leases stay valid.
	Lease time.Duration
	// Resealed holds the local share sealed to releases published since
	// the unlock (release label -> blob; nil when there are none new). The
	// appliance adds them to the header's SealedShares.ByRelease so the
	// next boot of such a release can unseal.
	Resealed map[string][]byte
	// Answers holds every configured verifier's answer, in configuration
	// order.
	Answers []Answer
}

// Attester is the appliance side of the verifier protocol (attest/agent),
// attesting to n independent verifiers of which k must agree.
type Attester interface {
	// Unlock attests the boot to the verifiers, reporting the store's last
	// known epoch, imports k verifiers' shares of the remote secret,
	// unseals the local share from sealed (nil on a blank disk) or seals a
	// new one, derives the KEK and extends the phase PCR. When refusals
	// and revocations leave fewer than k verifiers that could still grant,
	// the error wraps ErrRefused or ErrRevoked (the phase PCR is then
	// untouched) and its text names every verifier's answer; other errors
	// are transient unless Locked reports the phase PCR extended.
	Unlock(ctx context.Context, epoch uint64, sealed *SealedShares) (*Unlocked, error)
	// Heartbeat re-attests a running appliance to the verifiers and
	// returns the renewed quorum lease; serverCert (DER, nil when not
	// serving) is the NBD server certificate, reported under the quote for
	// the verifiers to record. Same error contract as Unlock: a refusal or
	// revocation by one verifier ends that verifier's lease, and the error
	// wraps ErrRefused or ErrRevoked once fewer than k could still renew.
	Heartbeat(ctx context.Context, epoch uint64, serverCert []byte) (*Renewal, error)
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

// Monitor is told what the boot sequence does, for metrics
// (appliance/metrics). Its methods may be called concurrently (Serving
// comes from the Exporter's goroutine) and must return quickly.
type Monitor interface {
	// Leases reports the verifiers' answers to a successful unlock or
	// heartbeat and the quorum lease they give.
	Leases(answers []Answer, quorum time.Duration)
	// Serving reports that store is exported over NBD under the server
	// identity id.
	Serving(store Store, id *ServerIdentity)
	// Stopped reports that serving stopped: the store is closed and the
	// identity wiped right after it returns.
	Stopped()
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
