package protocol_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/dataembassy/embassy/attest/protocol"
)

func TestDecodeAttestRequest(t *testing.T) {
	good := `{"appliance_id":"rack-1","purpose":"unlock","nonce":"` + strings.Repeat("A", 43) + `=","store_epoch":3,"attestation":"AQ==","appliance_log":"e30="}`
	var r protocol.AttestRequest
	if err := protocol.Decode(strings.NewReader(good), &r); err != nil {
		t.Fatalf("valid request refused: %v", err)
	}
	if r.StoreEpoch != 3 || len(r.Nonce) != 32 {
		t.Fatalf("decoded %+v", r)
	}
	hb := strings.Replace(strings.Replace(good, "unlock", "heartbeat", 1), `"appliance_log"`, `"server_cert":"AQID","appliance_log"`, 1)
	if err := protocol.Decode(strings.NewReader(hb), &r); err != nil || !bytes.Equal(r.ServerCert, []byte{1, 2, 3}) {
		t.Fatalf("heartbeat with a server certificate: %v, %x", err, r.ServerCert)
	}
	bad := map[string]string{
		"purpose":        strings.Replace(good, "unlock", "steal", 1),
		"short nonce":    strings.Replace(good, strings.Repeat("A", 43)+"=", "AAAA", 1),
		"unknown":        strings.Replace(good, `"purpose"`, `"x":1,"purpose"`, 1),
		"id":             strings.Replace(good, "rack-1", "-rack", 1),
		"trailing":       good + "{}",
		"negative":       strings.Replace(good, `"store_epoch":3`, `"store_epoch":-3`, 1),
		"oversize":       `{"appliance_id":"` + strings.Repeat("a", protocol.MaxBody) + `"}`,
		"missing body":   ``,
		"cert on unlock": strings.Replace(good, `"appliance_log"`, `"server_cert":"AQ==","appliance_log"`, 1),
		"cert too big": strings.Replace(strings.Replace(good, "unlock", "heartbeat", 1), `"appliance_log"`,
			`"server_cert":"`+strings.Repeat("A", (protocol.MaxServerCert+3)/3*4)+`","appliance_log"`, 1),
	}
	for name, in := range bad {
		t.Run(name, func(t *testing.T) {
			var r protocol.AttestRequest
			if err := protocol.Decode(strings.NewReader(in), &r); !errors.Is(err, protocol.ErrFormat) {
				t.Fatalf("got %v, want ErrFormat", err)
			}
		})
	}
}

func TestQuoteDataBindsFields(t *testing.T) {
	n := bytes.Repeat([]byte{7}, 32)
	base := protocol.QuoteData(n, "a", protocol.PurposeHeartbeat, 1, []byte("cert"))
	for name, other := range map[string][]byte{
		"nonce":       protocol.QuoteData(bytes.Repeat([]byte{8}, 32), "a", protocol.PurposeHeartbeat, 1, []byte("cert")),
		"id":          protocol.QuoteData(n, "b", protocol.PurposeHeartbeat, 1, []byte("cert")),
		"purpose":     protocol.QuoteData(n, "a", protocol.PurposeUnlock, 1, []byte("cert")),
		"epoch":       protocol.QuoteData(n, "a", protocol.PurposeHeartbeat, 2, []byte("cert")),
		"server cert": protocol.QuoteData(n, "a", protocol.PurposeHeartbeat, 1, []byte("cerT")),
		"no cert":     protocol.QuoteData(n, "a", protocol.PurposeHeartbeat, 1, nil),
	} {
		if bytes.Equal(base, other) {
			t.Errorf("changing %s does not change the quote data", name)
		}
	}
}

// fuzzDecode checks a decoder never panics and that what it accepts
// validates and survives a re-encode: decode -> encode -> decode gives an
// equal value (an empty byte field may come back nil: JSON omits it), and
// encoding that value again gives the same bytes.
func fuzzDecode[T any, P interface {
	*T
	protocol.Validator
}](t *testing.T, data []byte) {
	var v T
	if err := protocol.Decode(bytes.NewReader(data), P(&v)); err != nil {
		return
	}
	if err := P(&v).Validate(); err != nil {
		t.Fatalf("accepted message does not validate: %v", err)
	}
	enc, err := json.Marshal(&v)
	if err != nil {
		t.Fatalf("accepted message does not encode: %v", err)
	}
	var w T
	if err := protocol.Decode(bytes.NewReader(enc), P(&w)); err != nil {
		t.Fatalf("re-encoded message %s is refused: %v", enc, err)
	}
	if !reflect.DeepEqual(nilEmpty(v), nilEmpty(w)) {
		t.Fatalf("re-encode changed the message:\n got %+v\nwant %+v", w, v)
	}
	if enc2, err := json.Marshal(&w); err != nil || !bytes.Equal(enc, enc2) {
		t.Fatalf("second encoding differs (%v):\n%s\n%s", err, enc2, enc)
	}
}

// nilEmpty returns a copy of the message struct v with its empty byte
// slices set to nil, the form they take after an omitempty round trip.
func nilEmpty[T any](v T) T {
	rv := reflect.ValueOf(&v).Elem()
	for i := range rv.NumField() {
		if f := rv.Field(i); f.Kind() == reflect.Slice && f.Len() == 0 {
			f.SetZero()
		}
	}
	return v
}

func FuzzAttestRequest(f *testing.F) {
	f.Add([]byte(`{"appliance_id":"rack-1","purpose":"heartbeat","nonce":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","store_epoch":1,"attestation":"AQ==","appliance_log":"e30="}`))
	f.Fuzz(func(t *testing.T, data []byte) { fuzzDecode[protocol.AttestRequest](t, data) })
}

func FuzzNonceRequest(f *testing.F) {
	f.Add([]byte(`{"appliance_id":"rack-1"}`))
	f.Fuzz(func(t *testing.T, data []byte) { fuzzDecode[protocol.NonceRequest](t, data) })
}

func FuzzEnrollChallengeRequest(f *testing.F) {
	f.Add([]byte(`{"appliance_id":"rack-1","ak_public":"AAEACwAFBHIAAAAQABQACwgAAAAAAAEA"}`))
	f.Fuzz(func(t *testing.T, data []byte) { fuzzDecode[protocol.EnrollChallengeRequest](t, data) })
}

func FuzzEnrollActivateRequest(f *testing.F) {
	f.Add([]byte(`{"appliance_id":"rack-1","session":"00ff","secret":"AAAA","attestation":"AQ=="}`))
	f.Fuzz(func(t *testing.T, data []byte) { fuzzDecode[protocol.EnrollActivateRequest](t, data) })
}
