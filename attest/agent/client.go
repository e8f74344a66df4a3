package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"

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

// NonceWait is how long a round waits for the other verifiers' nonces
// after the first arrived before it quotes: every nonce that is in by then
// is covered by one quote (protocol.QuoteSetData), later ones by another.
const NonceWait = 250 * time.Millisecond

// reply is one verifier's answer to one round.
type reply struct {
	v    *verifierClient
	resp *protocol.AttestResponse
	err  error
}

// nonced is a verifier whose nonce arrived, with the context of its request.
type nonced struct {
	v      *verifierClient
	ctx    context.Context
	cancel context.CancelFunc
	nonce  []byte
	err    error
}

// askAll attests to every verifier concurrently: it fetches every nonce at
// once, quotes once over all that arrive within NonceWait of the first
// (the TPM signs once however many verifiers there are), and presents the
// quote to each. Each reply is delivered on the returned channel, which is
// closed when all have answered.
func (a *Agent) askAll(ctx context.Context, r *tpmRound, purpose protocol.Purpose, epoch uint64, serverCert []byte) <-chan reply {
	n := len(a.verifiers)
	out := make(chan reply, n)
	nonces := make(chan nonced, n)
	for _, v := range a.verifiers {
		go func() {
			vctx, cancel := context.WithTimeout(ctx, a.cfg.RequestTimeout)
			var resp protocol.NonceResponse
			err := v.post(vctx, protocol.PathNonce, &protocol.NonceRequest{ApplianceID: a.cfg.ApplianceID}, &resp)
			nonces <- nonced{v: v, ctx: vctx, cancel: cancel, nonce: resp.Nonce, err: err}
		}()
	}
	go func() {
		logBytes, logErr := a.cfg.Log.Marshal()
		var wg sync.WaitGroup
		var batch []nonced
		var wait <-chan time.Time
		present := func() {
			b := batch
			batch, wait = nil, nil
			set := make([][]byte, len(b))
			for i, x := range b {
				set[i] = protocol.QuoteData(x.nonce, a.cfg.ApplianceID, purpose, epoch, serverCert)
			}
			extra := set[0]
			if len(b) > 1 {
				extra = protocol.QuoteSetData(set)
			} else {
				set = nil
			}
			att, err := r.quote(extra)
			if err == nil {
				err = logErr
			}
			for _, x := range b {
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer x.cancel()
					if err != nil {
						out <- reply{v: x.v, err: err}
						return
					}
					var resp protocol.AttestResponse
					err := x.v.post(x.ctx, protocol.PathAttest, &protocol.AttestRequest{
						ApplianceID: a.cfg.ApplianceID, Purpose: purpose, Nonce: x.nonce, StoreEpoch: epoch,
						Attestation: att, ApplianceLog: logBytes, ServerCert: serverCert, QuoteSet: set}, &resp)
					if err != nil {
						out <- reply{v: x.v, err: err}
						return
					}
					out <- reply{v: x.v, resp: &resp}
				}()
			}
		}
		for pending := n; pending > 0 || batch != nil; {
			if pending == 0 {
				present()
				continue
			}
			select {
			case x := <-nonces:
				pending--
				if x.err != nil {
					x.cancel()
					out <- reply{v: x.v, err: x.err}
					continue
				}
				if batch == nil {
					wait = time.After(NonceWait)
				}
				batch = append(batch, x)
			case <-wait:
				present()
			}
		}
		wg.Wait()
		close(out)
	}()
	return out
}
