package verifier

import (
	"bytes"
	"crypto"
	"fmt"
	"slices"

	"github.com/dataembassy/embassy/attest/measure"
	"github.com/dataembassy/embassy/attest/protocol"
	"github.com/dataembassy/embassy/attest/tpm"
	pb "github.com/google/go-tpm-tools/proto/attest"
	tpmpb "github.com/google/go-tpm-tools/proto/tpm"
	tpmquote "github.com/google/go-tpm-tools/quote"
	"github.com/google/go-tpm-tools/server"
	"github.com/google/go-tpm/legacy/tpm2"
	"google.golang.org/protobuf/proto"
)

// verifyEvidence checks the quote (the enrolled AK, signature, nonce-bound
// extraData, PCR digest), replays the firmware event log, and replays the
// appliance log against PCR 15. It returns the quoted SHA-256 PCRs. It
// needs no database: enrolled carries the appliance's id and AK.
func verifyEvidence(enrolled *appliance, req *protocol.AttestRequest) (map[int][]byte, error) {
	var att pb.Attestation
	if err := proto.Unmarshal(req.Attestation, &att); err != nil {
		return nil, badRequest(fmt.Errorf("attestation: %v", err))
	}
	akArea, err := tpm2.DecodePublic(enrolled.akPublic)
	if err != nil {
		return nil, fmt.Errorf("verifier: stored AK: %w", err)
	}
	akKey, err := akArea.Key()
	if err != nil {
		return nil, fmt.Errorf("verifier: stored AK: %w", err)
	}
	if !bytes.Equal(att.GetAkPub(), enrolled.akPublic) {
		return nil, refuse("ak", -1, "quote made with an AK other than the enrolled one")
	}
	var quote *tpmpb.Quote
	for _, q := range att.GetQuotes() {
		if tpm2.Algorithm(q.GetPcrs().GetHash()) == tpm2.AlgSHA256 {
			quote = q
		}
	}
	if quote == nil {
		return nil, refuse("quote", -1, "no SHA-256 quote in the attestation")
	}
	extra := protocol.QuoteData(req.Nonce, enrolled.id, req.Purpose, req.StoreEpoch, req.ServerCert)
	if len(req.QuoteSet) > 0 {
		if !slices.ContainsFunc(req.QuoteSet, func(d []byte) bool { return bytes.Equal(d, extra) }) {
			return nil, refuse("quote", -1, "the quote set does not cover this verifier's nonce and request")
		}
		extra = protocol.QuoteSetData(req.QuoteSet)
	}
	// Only the SHA-256 quote may be used by the event-log replay.
	att.Quotes = []*tpmpb.Quote{quote}
	// VerifyAttestation verifies the quote's signature, extraData and PCR
	// digest with the enrolled AK before replaying the firmware event log,
	// so a success covers both checks with one RSA verification. On failure
	// the quote is checked alone to name the check that failed.
	if _, err := server.VerifyAttestation(&att, server.VerifyOpts{
		Nonce:                         extra,
		TrustedAKs:                    []crypto.PublicKey{akKey},
		HashAlgo:                      tpm2.AlgSHA256,
		Loader:                        server.UnsupportedLoader,
		AllowEFIAppBeforeCallingEvent: true,
		AllowEmptySBVar:               true,
	}); err != nil {
		if qerr := tpmquote.Verify(quote, akKey, extra); qerr != nil {
			return nil, refuse("quote", -1, "quote does not verify with the enrolled AK over this nonce: %v", qerr)
		}
		return nil, refuse("eventlog", -1, "firmware event log does not replay to the quoted PCRs: %v", err)
	}
	pcrs := map[int][]byte{}
	for k, v := range quote.GetPcrs().GetPcrs() {
		pcrs[int(k)] = v
	}
	if err := checkApplianceLog(req.ApplianceLog, pcrs[tpm.PCRAppliance]); err != nil {
		return nil, err
	}
	return pcrs, nil
}

// checkApplianceLog replays the appliance's measurement log and compares
// the result with the quoted PCR 15.
func checkApplianceLog(raw, quoted []byte) error {
	events, err := measure.Parse(raw)
	if err != nil {
		return refuse("appliance_log", tpm.PCRAppliance, "%v", err)
	}
	replayed, err := measure.Replay(events)
	if err != nil {
		return refuse("appliance_log", tpm.PCRAppliance, "%v", err)
	}
	if !bytes.Equal(replayed, quoted) {
		return refuse("appliance_log", tpm.PCRAppliance, "appliance log replays to %x, quote has %x", replayed, quoted)
	}
	return nil
}
