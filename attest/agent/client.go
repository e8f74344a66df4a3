package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/dataembassy/embassy/attest/protocol"
	"github.com/google/go-tpm-tools/client"
	"google.golang.org/protobuf/proto"
)

// verifierClient is the HTTP side of one verifier.
type verifierClient struct {
	name string
	url  string
	http *http.Client
}

// post sends a request and decodes the response or the error body.
func (v *verifierClient) post(ctx context.Context, path string, req, resp any) error {
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, v.url+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	hr.Header.Set("Content-Type", "application/json")
	res, err := v.http.Do(hr)
	if err != nil {
		return fmt.Errorf("agent: %s%s: %w", v.name, path, err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		var e protocol.ErrorResponse
		if err := protocol.Decode(res.Body, &e); err != nil {
			return fmt.Errorf("agent: %s%s: HTTP %d with undecodable body: %w", v.name, path, res.StatusCode, err)
		}
		re := &RefusedError{Code: e.Code, Check: e.Check, PCR: -1, Detail: e.Detail, AuditSeq: e.AuditSeq}
		if e.PCR != nil {
			re.PCR = *e.PCR
		}
		return re
	}
	if err := protocol.Decode(res.Body, resp); err != nil {
		return fmt.Errorf("agent: %s%s: %w", v.name, path, err)
	}
	return nil
}

// attestation quotes all PCRs with ak over extra and attaches the firmware
// event log. The caller holds tpmMu.
func (a *Agent) attestation(ak *client.Key, extra []byte) ([]byte, error) {
	evlog, err := a.cfg.EventLog()
	if err != nil {
		return nil, fmt.Errorf("agent: firmware event log: %w", err)
	}
	if evlog == nil {
		evlog = []byte{}
	}
	att, err := ak.Attest(client.AttestOpts{Nonce: extra, TCGEventLog: evlog, SkipTeeAttestation: true})
	if err != nil {
		return nil, fmt.Errorf("agent: quote: %w", err)
	}
	return proto.Marshal(att)
}

// attest fetches a nonce from v and presents a quote for purpose.
func (a *Agent) attest(ctx context.Context, r *tpmRound, v *verifierClient, purpose protocol.Purpose, epoch uint64, serverCert []byte) (*protocol.AttestResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.RequestTimeout)
	defer cancel()
	var n protocol.NonceResponse
	if err := v.post(ctx, protocol.PathNonce, &protocol.NonceRequest{ApplianceID: a.cfg.ApplianceID}, &n); err != nil {
		return nil, err
	}
	logBytes, err := a.cfg.Log.Marshal()
	if err != nil {
		return nil, err
	}
	att, err := r.quote(protocol.QuoteData(n.Nonce, a.cfg.ApplianceID, purpose, epoch, serverCert))
	if err != nil {
		return nil, err
	}
	var resp protocol.AttestResponse
	err = v.post(ctx, protocol.PathAttest, &protocol.AttestRequest{
		ApplianceID: a.cfg.ApplianceID, Purpose: purpose, Nonce: n.Nonce, StoreEpoch: epoch,
		Attestation: att, ApplianceLog: logBytes, ServerCert: serverCert}, &resp)
	if err != nil {
		return nil, err
	}
	return &resp, nil
}

// reply is one verifier's answer to one round.
type reply struct {
	v    *verifierClient
	resp *protocol.AttestResponse
	err  error
}

// askAll attests to every verifier concurrently, quoting with the round's
// AK, and delivers each reply on the returned channel, which is closed
// when all have answered.
func (a *Agent) askAll(ctx context.Context, r *tpmRound, purpose protocol.Purpose, epoch uint64, serverCert []byte) <-chan reply {
	out := make(chan reply, len(a.verifiers))
	done := make(chan struct{})
	for _, v := range a.verifiers {
		go func() {
			resp, err := a.attest(ctx, r, v, purpose, epoch, serverCert)
			out <- reply{v: v, resp: resp, err: err}
			done <- struct{}{}
		}()
	}
	go func() {
		for range a.verifiers {
			<-done
		}
		close(out)
	}()
	return out
}
