package verifier_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/dataembassy/embassy/attest/agent"
	"github.com/dataembassy/embassy/attest/keys"
	"github.com/dataembassy/embassy/attest/measure"
	"github.com/dataembassy/embassy/attest/protocol"
	"github.com/dataembassy/embassy/attest/tpm"
	"github.com/dataembassy/embassy/attest/verifier"
	"github.com/google/go-tpm-tools/client"
	pb "github.com/google/go-tpm-tools/proto/attest"
	tpmpb "github.com/google/go-tpm-tools/proto/tpm"
	"google.golang.org/protobuf/proto"
)

// rawClient speaks the protocol by hand, to send what the agent never
// would.
type rawClient struct {
	t  testing.TB
	f  *fixture
	hc *http.Client
}

func (f *fixture) raw() *rawClient { return &rawClient{t: f.t, f: f, hc: f.srv.Client()} }

func (c *rawClient) post(path string, req, resp any) *protocol.ErrorResponse {
	c.t.Helper()
	body, _ := json.Marshal(req)
	res, err := c.hc.Post(c.f.srv.URL+path, "application/json", bytes.NewReader(body))
	if err != nil {
		c.t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		var e protocol.ErrorResponse
		if err := json.NewDecoder(res.Body).Decode(&e); err != nil {
			c.t.Fatal(err)
		}
		return &e
	}
	if err := json.NewDecoder(res.Body).Decode(resp); err != nil {
		c.t.Fatal(err)
	}
	return nil
}

func (c *rawClient) nonce(id string) []byte {
	c.t.Helper()
	var n protocol.NonceResponse
	if e := c.post(protocol.PathNonce, &protocol.NonceRequest{ApplianceID: id}, &n); e != nil {
		c.t.Fatalf("nonce: %+v", e)
	}
	return n.Nonce
}

// attest presents req; it returns the response or the refusal.
func (c *rawClient) attest(req *protocol.AttestRequest) (*protocol.AttestResponse, *protocol.ErrorResponse) {
	c.t.Helper()
	var resp protocol.AttestResponse
	if e := c.post(protocol.PathAttest, req, &resp); e != nil {
		return nil, e
	}
	return &resp, nil
}

// quote makes an attestation with the AK of rw over the request's binding.
func quote(t testing.TB, ap *appliance, nonce []byte, purpose protocol.Purpose, epoch uint64) *protocol.AttestRequest {
	t.Helper()
	return quoteCert(t, ap, nonce, purpose, epoch, nil)
}

// quoteCert is quote reporting an NBD server certificate.
func quoteCert(t testing.TB, ap *appliance, nonce []byte, purpose protocol.Purpose, epoch uint64, serverCert []byte) *protocol.AttestRequest {
	t.Helper()
	ak, err := client.AttestationKeyRSA(ap.sw.RW())
	if err != nil {
		t.Fatal(err)
	}
	defer ak.Close()
	att, err := ak.Attest(client.AttestOpts{Nonce: protocol.QuoteData(nonce, ap.id, purpose, epoch, serverCert), TCGEventLog: []byte{}, SkipTeeAttestation: true})
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := proto.Marshal(att)
	lg, _ := ap.log.Marshal()
	return &protocol.AttestRequest{ApplianceID: ap.id, Purpose: purpose, Nonce: nonce, StoreEpoch: epoch, Attestation: raw, ApplianceLog: lg, ServerCert: serverCert}
}

func expectRefusal(t *testing.T, e *protocol.ErrorResponse, code, check string, pcr int) {
	t.Helper()
	if e == nil {
		t.Fatal("accepted, want refusal")
	}
	got := -1
	if e.PCR != nil {
		got = *e.PCR
	}
	if e.Code != code || e.Check != check || got != pcr {
		t.Fatalf("got %s/%s/PCR %d (%s), want %s/%s/PCR %d", e.Code, e.Check, got, e.Detail, code, check, pcr)
	}
}

func TestReplayedNonce(t *testing.T) {
	f := newFixture(t)
	ap := f.enrolled("rack1")
	c := f.raw()
	req := quote(t, ap, c.nonce(ap.id), protocol.PurposeHeartbeat, 0)
	if _, e := c.attest(req); e != nil {
		t.Fatalf("first use refused: %+v", e)
	}
	_, e := c.attest(req)
	expectRefusal(t, e, protocol.CodeRefused, "nonce", -1)
	if rec := f.lastAudit(); rec.Outcome != "refused" || rec.Check != "nonce" || rec.Seq != e.AuditSeq {
		t.Fatalf("refusal not audited: %+v (response seq %d)", rec, e.AuditSeq)
	}
}

func TestStaleNonce(t *testing.T) {
	f := newFixture(t)
	ap := f.enrolled("rack1")
	c := f.raw()
	n := c.nonce(ap.id)
	f.now = f.now.Add(2 * time.Minute) // default TTL is one minute
	_, e := c.attest(quote(t, ap, n, protocol.PurposeHeartbeat, 0))
	expectRefusal(t, e, protocol.CodeRefused, "nonce", -1)
}

// TestTamperedRequest changes a genuine attestation in transit: each change
// is refused by the check named.
func TestTamperedRequest(t *testing.T) {
	for _, tc := range []struct {
		name    string
		purpose protocol.Purpose
		epoch   uint64
		tamper  func(*testing.T, *protocol.AttestRequest)
		check   string
		pcr     int
	}{{
		// The epoch is bound into the quote: changing it in transit breaks it.
		name: "store epoch", purpose: protocol.PurposeHeartbeat, epoch: 5,
		tamper: func(_ *testing.T, req *protocol.AttestRequest) { req.StoreEpoch = 6 },
		check:  "quote", pcr: -1,
	}, {
		// Claim the release's binary while PCR 15 holds something else.
		name: "appliance log", purpose: protocol.PurposeUnlock,
		tamper: func(_ *testing.T, req *protocol.AttestRequest) {
			evil := measure.NewEvent("binary", "/bbin/embassy-appliance", []byte("evil"))
			req.ApplianceLog, _ = json.Marshal(map[string]any{"version": 1, "events": []measure.Event{evil, bootEvents[1]}})
		},
		check: "appliance_log", pcr: tpm.PCRAppliance,
	}, {
		name: "firmware event log", purpose: protocol.PurposeUnlock,
		tamper: func(t *testing.T, req *protocol.AttestRequest) {
			editAttestation(t, req, func(att *pb.Attestation) {
				att.EventLog = []byte("not a TCG event log at all, but claims to be one....")
			})
		},
		check: "eventlog", pcr: -1,
	}, {
		// Present PCR values other than those the TPM signed.
		name: "quoted PCR value", purpose: protocol.PurposeUnlock,
		tamper: func(t *testing.T, req *protocol.AttestRequest) {
			editAttestation(t, req, func(att *pb.Attestation) {
				att.Quotes[0].Pcrs.Pcrs[9] = bytes.Repeat([]byte{1}, 32)
			})
		},
		check: "quote", pcr: -1,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			ap := f.enrolled("rack1")
			c := f.raw()
			req := quote(t, ap, c.nonce(ap.id), tc.purpose, tc.epoch)
			tc.tamper(t, req)
			_, e := c.attest(req)
			expectRefusal(t, e, protocol.CodeRefused, tc.check, tc.pcr)
		})
	}
}

// editAttestation decodes req's attestation, lets edit change it and
// encodes it back.
func editAttestation(t *testing.T, req *protocol.AttestRequest, edit func(*pb.Attestation)) {
	t.Helper()
	var att pb.Attestation
	if err := proto.Unmarshal(req.Attestation, &att); err != nil {
		t.Fatal(err)
	}
	edit(&att)
	var err error
	if req.Attestation, err = proto.Marshal(&att); err != nil {
		t.Fatal(err)
	}
}

func TestPCRExtendedAfterBoot(t *testing.T) {
	f := newFixture(t)
	ap := f.enrolled("rack1")
	// Something measured into PCR 9 after the release's value: the quote
	// no longer matches the release.
	d := sha256.Sum256([]byte("late"))
	if err := tpm.Extend(ap.sw.RW(), 9, d[:]); err != nil {
		t.Fatal(err)
	}
	_, err := ap.a.Unlock(context.Background(), 0, nil)
	wantRefused(t, err, agent.ErrRefused, "release", 9)
	if rec := f.lastAudit(); rec.Check != "release" || rec.PCR != 9 {
		t.Fatalf("audit: %+v", rec)
	}
}

func TestFirmwareBaselineChanged(t *testing.T) {
	f := newFixture(t)
	ap := f.enrolled("rack1")
	d := sha256.Sum256([]byte("other firmware"))
	if err := tpm.Extend(ap.sw.RW(), 0, d[:]); err != nil {
		t.Fatal(err)
	}
	_, err := ap.a.Unlock(context.Background(), 0, nil)
	wantRefused(t, err, agent.ErrRefused, "baseline", 0)
}

func TestModifiedBootImage(t *testing.T) {
	f := newFixture(t)
	ap, u := f.unlocked("rack1")
	ctx := context.Background()
	// Reboot into a modified appliance binary: PCR 15 differs.
	evil := []measure.Event{measure.NewEvent("binary", "/bbin/embassy-appliance", []byte("appliance v1 + backdoor")), bootEvents[1]}
	ap.reboot(evil)
	_, err := ap.a.Unlock(ctx, 0, u.Sealed)
	wantRefused(t, err, agent.ErrRefused, "release", tpm.PCRAppliance)
	// Nor can the modified image unseal the local share itself.
	if _, err := keys.UnsealLocal(ap.sw.RW(), localBlob(u)); !errors.Is(err, keys.ErrUnseal) {
		t.Fatalf("modified image unsealed the local share: %v", err)
	}
}

func TestAKFromAnotherTPM(t *testing.T) {
	f := newFixture(t)
	ap := f.enrolled("rack1")
	other := f.newAppliance("rack1", bootEvents) // same id, another TPM
	c := f.raw()
	_, e := c.attest(quote(t, other, c.nonce(ap.id), protocol.PurposeUnlock, 0))
	expectRefusal(t, e, protocol.CodeRefused, "ak", -1)

	// Nor can another TPM's AK be enrolled for a registered EK: the
	// credential is encrypted to the enrolled EK.
	f2 := newFixture(t)
	victim := f2.newAppliance("rack2", bootEvents)
	f2.register(victim)
	thief := f2.newAppliance("rack2", bootEvents)
	_, err := thief.a.Enroll(context.Background())
	if err == nil {
		t.Fatal("AK of another TPM enrolled")
	}
	if info, _ := f2.db.Appliance(context.Background(), "rack2"); info.AKName != "" {
		t.Fatal("AK recorded despite failed activation")
	}
}

func TestEKNotEnrolled(t *testing.T) {
	f := newFixture(t)
	ap := f.newAppliance("stranger", bootEvents)
	_, err := ap.a.Enroll(context.Background())
	if !errors.Is(err, agent.ErrNotEnrolled) {
		t.Fatalf("got %v, want ErrNotEnrolled", err)
	}
	_, err = ap.a.Unlock(context.Background(), 0, nil)
	if !errors.Is(err, agent.ErrNotEnrolled) {
		t.Fatalf("got %v, want ErrNotEnrolled", err)
	}
}

func TestEKCertFromUntrustedCA(t *testing.T) {
	f := newFixture(t)
	trusted := f.newAppliance("rack1", bootEvents)
	f.register(trusted) // trusts rack1's CA
	// rack2's EK certificate comes from another (per-TPM) CA.
	other := f.newAppliance("rack2", bootEvents)
	cert, err := agent.EKCertificate(other.sw.RW())
	if err != nil {
		t.Fatal(err)
	}
	err = f.db.Enroll(context.Background(), verifier.EnrollParams{ID: "rack2", EKCert: cert, Actor: "test"})
	if !errors.Is(err, verifier.ErrEKCert) {
		t.Fatalf("got %v, want ErrEKCert", err)
	}
}

func TestRevokedAppliance(t *testing.T) {
	f := newFixture(t)
	ap, u := f.unlocked("rack1")
	ctx := context.Background()
	if _, err := ap.a.Heartbeat(ctx, 1, nil); err != nil {
		t.Fatal(err)
	}
	if err := f.db.Revoke(ctx, "rack1", "decommissioned", "test"); err != nil {
		t.Fatal(err)
	}
	_, err := ap.a.Heartbeat(ctx, 1, nil)
	wantRefused(t, err, agent.ErrRevoked, "revocation", -1)
	ap.reboot(bootEvents)
	_, err = ap.a.Unlock(ctx, 1, u.Sealed)
	if !errors.Is(err, agent.ErrRevoked) {
		t.Fatalf("unlock after revocation: %v", err)
	}
}

func TestImportBlobOnAnotherTPM(t *testing.T) {
	f := newFixture(t)
	ap := f.enrolled("rack1")
	c := f.raw()
	resp, e := c.attest(quote(t, ap, c.nonce(ap.id), protocol.PurposeUnlock, 0))
	if e != nil {
		t.Fatalf("refused: %+v", e)
	}
	var blob tpmpb.ImportBlob
	if err := proto.Unmarshal(resp.ImportBlob, &blob); err != nil {
		t.Fatal(err)
	}
	// The rightful TPM imports it...
	if share := importWith(t, ap.sw.RW(), &blob); share == nil {
		t.Fatal("rightful TPM cannot import")
	}
	// ...another TPM in the very same PCR state cannot.
	other := f.newAppliance("thief", bootEvents)
	if share := importWith(t, other.sw.RW(), &blob); share != nil {
		t.Fatal("another TPM imported the remote share")
	}
	// Nor can the rightful TPM once the phase PCR moved on.
	if err := agent.ExtendPhase(ap.sw.RW()); err != nil {
		t.Fatal(err)
	}
	if share := importWith(t, ap.sw.RW(), &blob); share != nil {
		t.Fatal("remote share imported after the phase PCR was extended")
	}
}

func importWith(t *testing.T, rw interface {
	Read([]byte) (int, error)
	Write([]byte) (int, error)
}, blob *tpmpb.ImportBlob) []byte {
	t.Helper()
	ek, err := client.EndorsementKeyRSA(rw)
	if err != nil {
		t.Fatal(err)
	}
	defer ek.Close()
	share, err := ek.Import(blob)
	if err != nil {
		return nil
	}
	return share
}

func TestLocalShareAfterPhaseExtend(t *testing.T) {
	f := newFixture(t)
	ap, u := f.unlocked("rack1")
	ctx := context.Background()
	// Unlock extended the phase PCR: the local share is gone for this boot.
	if _, err := keys.UnsealLocal(ap.sw.RW(), localBlob(u)); !errors.Is(err, keys.ErrUnseal) {
		t.Fatalf("local share unsealed after the phase extend: %v", err)
	}
	// A second unlock in the same boot is refused by the verifier too.
	if _, err := ap.a.Heartbeat(ctx, 1, nil); err != nil {
		t.Fatal(err)
	}
	_, err := ap.a.Unlock(ctx, 1, u.Sealed)
	wantRefused(t, err, agent.ErrRefused, "phase", tpm.PCRPhase)
	// After a reboot it unseals again.
	ap.reboot(bootEvents)
	if _, err := keys.UnsealLocal(ap.sw.RW(), localBlob(u)); err != nil {
		t.Fatalf("unseal after reboot: %v", err)
	}
}

func TestOlderStoreEpoch(t *testing.T) {
	f := newFixture(t)
	ap, u := f.unlocked("rack1")
	ctx := context.Background()
	if _, err := ap.a.Heartbeat(ctx, 7, nil); err != nil {
		t.Fatal(err)
	}
	ap.reboot(bootEvents)
	_, err := ap.a.Unlock(ctx, 6, u.Sealed) // a rolled-back disk
	wantRefused(t, err, agent.ErrRefused, "epoch", -1)
	// A wiped disk (epoch 0) gets no provisioning either.
	ap.reboot(bootEvents)
	_, err = ap.a.Unlock(ctx, 0, nil)
	wantRefused(t, err, agent.ErrRefused, "epoch", -1)
}

func TestVerifierRestartMidSession(t *testing.T) {
	f := newFixture(t)
	ap := f.enrolled("rack1")
	c := f.raw()
	n := c.nonce(ap.id)
	req := quote(t, ap, n, protocol.PurposeUnlock, 0)
	f.restart()
	c = f.raw()
	resp, e := c.attest(req)
	if e != nil {
		t.Fatalf("nonce issued before the restart refused: %+v", e)
	}
	if resp.Decision != protocol.DecisionGranted || len(resp.ImportBlob) == 0 {
		t.Fatalf("response %+v", resp)
	}
	// Used state survives too.
	f.restart()
	_, e = f.raw().attest(req)
	expectRefusal(t, e, protocol.CodeRefused, "nonce", -1)
}

func TestStolenDatabaseAloneCannotMakeKEK(t *testing.T) {
	f := newFixture(t)
	_, u := f.unlocked("rack1")
	// The thief has the database (the remote share) and the sealed blob
	// from the disk, but not the TPM: the local share is sealed under the
	// TPM's storage root key, which never leaves it. Another TPM fails.
	var remote []byte
	if err := rawShare(f, "rack1", &remote); err != nil {
		t.Fatal(err)
	}
	other := f.newAppliance("thief", bootEvents)
	if _, err := keys.UnsealLocal(other.sw.RW(), localBlob(u)); !errors.Is(err, keys.ErrUnseal) {
		t.Fatalf("sealed local share opened on another TPM: %v", err)
	}
	// Guessing the local share: the KEK from the remote share with any
	// other local share differs.
	guess, _ := keys.DeriveKEK(make([]byte, 32), &keys.Remote{Threshold: 1, Total: 1, Secret: remote}, "rack1")
	if sameKEK(guess, u.KEK) {
		t.Fatal("KEK derivable from the remote share alone")
	}
}

func TestTPMAloneCannotMakeKEK(t *testing.T) {
	f := newFixture(t)
	ap, u := f.unlocked("rack1")
	ctx := context.Background()
	// A stolen rack boots the right image and unseals the local share, but
	// the verifier (revoked after the theft) withholds the remote share.
	ap.reboot(bootEvents)
	local, err := keys.UnsealLocal(ap.sw.RW(), localBlob(u))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.db.Revoke(ctx, "rack1", "stolen", "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := ap.a.Unlock(ctx, 1, u.Sealed); !errors.Is(err, agent.ErrRevoked) {
		t.Fatalf("got %v, want ErrRevoked", err)
	}
	guess, _ := keys.DeriveKEK(local, &keys.Remote{Threshold: 1, Total: 1, Secret: make([]byte, 32)}, "rack1")
	if sameKEK(guess, u.KEK) {
		t.Fatal("KEK derivable from the local share alone")
	}
}

func TestMalformedRequests(t *testing.T) {
	f := newFixture(t)
	c := f.raw()
	for name, body := range map[string]string{
		"not json":      "{",
		"unknown field": `{"appliance_id":"rack1","x":1}`,
		"bad id":        `{"appliance_id":"../etc"}`,
	} {
		t.Run(name, func(t *testing.T) {
			res, err := c.hc.Post(f.srv.URL+protocol.PathNonce, "application/json", bytes.NewReader([]byte(body)))
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			if res.StatusCode != http.StatusBadRequest {
				t.Fatalf("status %d, want 400", res.StatusCode)
			}
		})
	}
}

func rawShare(f *fixture, id string, out *[]byte) error {
	s, err := f.db.RemoteShare(context.Background(), id)
	*out = s
	return err
}

// TestLastRefusal: an appliance's record names its newest refusal until an
// attestation is admitted again, so operators see why it is not serving.
func TestLastRefusal(t *testing.T) {
	f := newFixture(t)
	ap := f.enrolled("rack1")
	c := f.raw()
	ctx := context.Background()
	req := quote(t, ap, c.nonce(ap.id), protocol.PurposeHeartbeat, 0)
	if _, e := c.attest(req); e != nil {
		t.Fatalf("first use refused: %+v", e)
	}
	info, err := f.db.Appliance(ctx, ap.id)
	if err != nil {
		t.Fatal(err)
	}
	if info.LastRefusal != nil || info.LastAttested == nil {
		t.Fatalf("after an admitted attestation: last refusal %+v, last attested %v", info.LastRefusal, info.LastAttested)
	}
	_, e := c.attest(req) // replay
	expectRefusal(t, e, protocol.CodeRefused, "nonce", -1)
	if info, err = f.db.Appliance(ctx, ap.id); err != nil {
		t.Fatal(err)
	}
	if r := info.LastRefusal; r == nil || r.Check != "nonce" || r.Outcome != "refused" || r.Seq != e.AuditSeq {
		t.Fatalf("after a replay: last refusal %+v, want the nonce refusal seq %d", r, e.AuditSeq)
	}
	if _, e := c.attest(quote(t, ap, c.nonce(ap.id), protocol.PurposeHeartbeat, 0)); e != nil {
		t.Fatalf("fresh attestation refused: %+v", e)
	}
	if info, err = f.db.Appliance(ctx, ap.id); err != nil {
		t.Fatal(err)
	}
	if info.LastRefusal != nil {
		t.Fatalf("after a new admitted attestation: last refusal %+v, want none", info.LastRefusal)
	}
}
