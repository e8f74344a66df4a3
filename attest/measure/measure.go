// Package measure is the appliance's own measurement log: what the
// appliance measured into PCR 15 (tpm.PCRAppliance) before it talked to
// anyone — its binary, its configuration, anything else it will act on.
//
// Each Event is extended into PCR 15 as
//
//	SHA-256("embassy-measure-v1\x00" || u16be(len(type)) || type ||
//	        u16be(len(name)) || name || sha256(content))
//
// so the verifier can replay the log (Replay) and compare the result with
// the quoted PCR 15. What the appliance measures, and where it finds it, is
// its measurement plan (AppliancePlan, ApplianceEvents, BinaryPath,
// ConfigPath): the appliance measures it, package initramfs places the
// files, and images/predict predicts PCR 15 from it for a release manifest.
// The log travels as JSON (Log.Marshal, Parse); the format is documented in
// docs/attestation.md.
package measure

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/dataembassy/embassy/attest/tpm"
)

// Version is the log format version.
const Version = 1

const (
	label     = "embassy-measure-v1\x00"
	maxEvents = 256
	maxField  = 1024
	// MaxLogSize bounds an encoded log accepted by Parse.
	MaxLogSize = 256 << 10
)

// ErrFormat reports a malformed measurement log.
var ErrFormat = errors.New("measure: malformed measurement log")

// Event is one measurement.
type Event struct {
	// Type says what was measured: "binary", "config", "cmdline", ...
	Type string `json:"type"`
	// Name identifies the measured object, e.g. a path.
	Name string `json:"name"`
	// SHA256 is the lowercase hex SHA-256 of the measured content.
	SHA256 string `json:"sha256"`
}

// NewEvent returns the event measuring content.
func NewEvent(typ, name string, content []byte) Event {
	d := sha256.Sum256(content)
	return Event{Type: typ, Name: name, SHA256: hex.EncodeToString(d[:])}
}

func (e Event) validate() error {
	if e.Type == "" || len(e.Type) > maxField || len(e.Name) > maxField {
		return fmt.Errorf("%w: event type must be 1..%d bytes and name at most %d", ErrFormat, maxField, maxField)
	}
	d, err := hex.DecodeString(e.SHA256)
	if err != nil || len(d) != sha256.Size || hex.EncodeToString(d) != e.SHA256 {
		return fmt.Errorf("%w: event %s %q: sha256 is not 64 lowercase hex digits", ErrFormat, e.Type, e.Name)
	}
	return nil
}

// Digest returns the value extended into PCR 15 for e.
func (e Event) Digest() ([]byte, error) {
	if err := e.validate(); err != nil {
		return nil, err
	}
	content, _ := hex.DecodeString(e.SHA256)
	var b bytes.Buffer
	b.WriteString(label)
	binary.Write(&b, binary.BigEndian, uint16(len(e.Type)))
	b.WriteString(e.Type)
	binary.Write(&b, binary.BigEndian, uint16(len(e.Name)))
	b.WriteString(e.Name)
	b.Write(content)
	d := sha256.Sum256(b.Bytes())
	return d[:], nil
}

// Log is the ordered list of events measured into PCR 15 since boot. It is
// safe for concurrent use.
type Log struct {
	mu     sync.Mutex
	events []Event
}

// Events returns a copy of the log's events.
func (l *Log) Events() []Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Event(nil), l.events...)
}

// Measure extends PCR 15 with e and appends e to the log. The event is
// logged only if the extend succeeded, so the log never claims more than the
// PCR holds; a failed extend leaves the PCR unknown, and the appliance
// should then not attest this boot.
func (l *Log) Measure(rw io.ReadWriter, e Event) error {
	d, err := e.Digest()
	if err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.events) >= maxEvents {
		return fmt.Errorf("measure: log full (%d events)", maxEvents)
	}
	if err := tpm.Extend(rw, tpm.PCRAppliance, d); err != nil {
		return err
	}
	l.events = append(l.events, e)
	return nil
}

// wire is the JSON encoding of a log.
type wire struct {
	Version int     `json:"version"`
	Events  []Event `json:"events"`
}

// Marshal returns the log's JSON encoding.
func (l *Log) Marshal() ([]byte, error) {
	ev := l.Events()
	if ev == nil {
		ev = []Event{}
	}
	return json.Marshal(wire{Version: Version, Events: ev})
}

// Parse decodes and validates an encoded log.
func Parse(data []byte) ([]Event, error) {
	if len(data) > MaxLogSize {
		return nil, fmt.Errorf("%w: %d bytes", ErrFormat, len(data))
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var w wire
	if err := dec.Decode(&w); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFormat, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: trailing data", ErrFormat)
	}
	if w.Version != Version {
		return nil, fmt.Errorf("%w: version %d, want %d", ErrFormat, w.Version, Version)
	}
	if len(w.Events) > maxEvents {
		return nil, fmt.Errorf("%w: %d events", ErrFormat, len(w.Events))
	}
	for _, e := range w.Events {
		if err := e.validate(); err != nil {
			return nil, err
		}
	}
	return w.Events, nil
}

// Replay returns the PCR 15 value (SHA-256 bank) that events produce from
// the PCR's reset value (32 zero bytes).
func Replay(events []Event) ([]byte, error) {
	pcr := make([]byte, sha256.Size)
	for _, e := range events {
		d, err := e.Digest()
		if err != nil {
			return nil, err
		}
		s := sha256.Sum256(append(pcr, d...))
		pcr = s[:]
	}
	return pcr, nil
}

// Mismatch locates where a log stops matching expected events: Index is the
// first differing event (len of the shorter log when one is a prefix of the
// other).
type Mismatch struct {
	Index int
	Got   *Event
	Want  *Event
}

// Compare returns the first difference between got and want, or nil when
// they are identical.
func Compare(got, want []Event) *Mismatch {
	for i := 0; i < max(len(got), len(want)); i++ {
		var g, w *Event
		if i < len(got) {
			g = &got[i]
		}
		if i < len(want) {
			w = &want[i]
		}
		if g == nil || w == nil || *g != *w {
			return &Mismatch{Index: i, Got: g, Want: w}
		}
	}
	return nil
}
