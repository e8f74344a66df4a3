package verifier

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/dataembassy/embassy/attest/protocol"
	"github.com/dataembassy/embassy/attest/tpm"
	pb "github.com/google/go-tpm-tools/proto/attest"
	tpmpb "github.com/google/go-tpm-tools/proto/tpm"
	tpmquote "github.com/google/go-tpm-tools/quote"
	"github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/legacy/tpm2/credactivation"
	"google.golang.org/protobuf/proto"
)

// akAttrs are the attributes a trustworthy attestation key must have: it
// never leaves the TPM and signs only TPM-generated data.
const akAttrs = tpm2.FlagFixedTPM | tpm2.FlagFixedParent | tpm2.FlagSensitiveDataOrigin | tpm2.FlagRestricted | tpm2.FlagSign

// enrollChallenge answers an AK with a credential-activation challenge
// encrypted to the enrolled EK: only the TPM holding that EK can answer it,
// and only for an AK it holds.
func (s *Server) enrollChallenge(ctx context.Context, req *protocol.EnrollChallengeRequest) (resp *protocol.EnrollChallengeResponse, err error) {
	defer s.auditOnRefusal(ctx, req.ApplianceID, "enroll-challenge", &err)
	a, err := s.loadActive(ctx, req.ApplianceID)
	if err != nil {
		return nil, err
	}
	if a.akPublic != nil {
		return nil, refuse("ak", -1, "appliance %q already has an activated AK", a.id)
	}
	name, err := checkAKPublic(req.AKPublic)
	if err != nil {
		return nil, err
	}
	secret := make([]byte, 32)
	rand.Read(secret)
	blob, encSecret, err := credactivation.Generate(name.Digest, a.ekPub, 16, secret)
	if err != nil {
		return nil, fmt.Errorf("verifier: make credential: %w", err)
	}
	sess := make([]byte, 16)
	rand.Read(sess)
	expires := s.db.now().Add(s.opts.EnrollTTL)
	resp = &protocol.EnrollChallengeResponse{Session: hex.EncodeToString(sess), CredentialBlob: blob, EncryptedSecret: encSecret, Expires: expires.UTC()}
	if err := s.db.storeEnrollSession(ctx, enrollSession{id: resp.Session, appliance: a.id, akPublic: req.AKPublic, secret: secret, expires: expires}); err != nil {
		return nil, err
	}
	return resp, nil
}

// checkAKPublic decodes an AK's TPMT_PUBLIC, checks its attributes and
// returns its TPM name.
func checkAKPublic(raw []byte) (*tpm2.Name, error) {
	akPub, err := tpm2.DecodePublic(raw)
	if err != nil {
		return nil, badRequest(fmt.Errorf("ak_public: %v", err))
	}
	if akPub.Attributes&akAttrs != akAttrs || akPub.Attributes&tpm2.FlagDecrypt != 0 {
		return nil, refuse("ak", -1, "AK attributes %#x: want fixedTPM, fixedParent, sensitiveDataOrigin, restricted, sign-only", uint32(akPub.Attributes))
	}
	if _, err := akPub.Key(); err != nil {
		return nil, badRequest(fmt.Errorf("ak_public: %v", err))
	}
	name, err := akPub.Name()
	if err != nil || name.Digest == nil {
		return nil, badRequest(fmt.Errorf("ak_public: no name: %v", err))
	}
	return &name, nil
}

// enrollActivate checks the answer to a challenge and an enrolment quote
// made with the AK, then trusts the AK; the quote's firmware PCRs become
// the baseline unless one is on record.
func (s *Server) enrollActivate(ctx context.Context, req *protocol.EnrollActivateRequest) (resp *protocol.EnrollActivateResponse, err error) {
	defer s.auditOnRefusal(ctx, req.ApplianceID, "enroll-activate", &err)
	a, err := s.loadActive(ctx, req.ApplianceID)
	if err != nil {
		return nil, err
	}
	// Burn the session first: one try per challenge.
	sess, err := s.db.takeEnrollSession(ctx, req.Session, a.id)
	if errors.Is(err, ErrNotFound) {
		return nil, refuse("enroll_session", -1, "unknown enrollment session")
	} else if err != nil {
		return nil, err
	}
	if err := checkEnrollSession(sess, req.Secret, s.db.now().UnixNano()); err != nil {
		return nil, err
	}
	quote, nameHex, err := verifyEnrollQuote(sess.akPublic, req)
	if err != nil {
		return nil, err
	}
	rec := &AuditRecord{Actor: ActorAppliance, Appliance: a.id, Action: "enroll-activate", Outcome: "ok", PCR: -1, Detail: "AK " + nameHex}
	base, err := s.db.activateAK(ctx, a.id, sess.akPublic, nameHex, func() (map[int][]byte, error) { return quotedBaseline(quote) }, rec)
	if errors.Is(err, errAKActivated) {
		return nil, refuse("ak", -1, "appliance already has an activated AK")
	} else if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for k, v := range base {
		out[fmt.Sprint(k)] = hex.EncodeToString(v)
	}
	return &protocol.EnrollActivateResponse{AKName: nameHex, Baseline: out}, nil
}

// checkEnrollSession checks a burnt session was fresh and the secret the
// appliance recovered is the one it was sent.
func checkEnrollSession(sess *enrollSession, secret []byte, now int64) error {
	switch {
	case sess.used:
		return refuse("enroll_session", -1, "enrollment session already used")
	case now > sess.expires.UnixNano():
		return refuse("enroll_session", -1, "enrollment session expired")
	case subtle.ConstantTimeCompare(sess.secret, secret) != 1:
		return refuse("credential", -1, "credential activation proof is wrong: the AK is not in the TPM holding the enrolled EK")
	}
	return nil
}

// verifyEnrollQuote checks the enrolment quote with the challenged AK and
// returns it and the AK's hex name.
func verifyEnrollQuote(akPublic []byte, req *protocol.EnrollActivateRequest) (*tpmpb.Quote, string, error) {
	akArea, err := tpm2.DecodePublic(akPublic)
	if err != nil {
		return nil, "", fmt.Errorf("verifier: stored AK: %w", err)
	}
	akKey, err := akArea.Key()
	if err != nil {
		return nil, "", fmt.Errorf("verifier: stored AK: %w", err)
	}
	quote, err := sha256Quote(req.Attestation)
	if err != nil {
		return nil, "", err
	}
	if err := tpmquote.Verify(quote, akKey, protocol.EnrollQuoteData(req.Session, req.Secret)); err != nil {
		return nil, "", refuse("quote", -1, "enrollment quote: %v", err)
	}
	name, _ := akArea.Name()
	return quote, hex.EncodeToString(mustEncodeName(name)), nil
}

// quotedBaseline is the firmware baseline an enrolment quote shows.
func quotedBaseline(quote *tpmpb.Quote) (map[int][]byte, error) {
	base := map[int][]byte{}
	for _, i := range tpm.FirmwarePCRs {
		v, ok := quote.GetPcrs().GetPcrs()[uint32(i)]
		if !ok {
			return nil, refuse("baseline", i, "enrollment quote lacks PCR %d", i)
		}
		base[i] = v
	}
	return base, nil
}

func mustEncodeName(n tpm2.Name) []byte {
	b, err := n.Encode()
	if err != nil {
		return nil
	}
	return b
}

// sha256Quote decodes an attestation and returns its SHA-256 bank quote.
func sha256Quote(raw []byte) (*tpmpb.Quote, error) {
	var att pb.Attestation
	if err := proto.Unmarshal(raw, &att); err != nil {
		return nil, badRequest(fmt.Errorf("attestation: %v", err))
	}
	for _, q := range att.GetQuotes() {
		if tpm2.Algorithm(q.GetPcrs().GetHash()) == tpm2.AlgSHA256 {
			return q, nil
		}
	}
	return nil, refuse("quote", -1, "no SHA-256 quote in the attestation")
}
