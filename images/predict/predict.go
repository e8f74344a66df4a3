// Package predict is the one place Embassy predicts PCR values from a
// release's files alone. The manifests the verifier admits boots on hold
// its predictions for
//
//   - a UKI booted from disk by OVMF: the firmware's PCR 4 and PCR 5 events,
//     systemd-stub's PCR 11 (and empty PCR 12/13), the Linux EFI stub's
//     PCR 9 events, and PCR 7 with Secure Boot (UKIEvents, GPTEvents,
//     SecureBootEvents);
//   - a direct kernel boot (QEMU -kernel) through OVMF: PCR 9
//     (KernelBootPCR9);
//   - the appliance's own PCR 15, from its binary and configuration or from
//     the initramfs holding them (AppliancePCR, InitramfsPCR), replaying the
//     measurement plan of attest/measure.
//
// The firmware event sequences were taken from the TCG event log of a
// reference boot (OVMF from Debian 12, systemd-stub 252, Linux 6.1) and are
// documented in docs/disk-image.md; the QEMU tests in packages images and
// qemu check every predicted value against a real boot.
package predict

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"debug/pe"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"unicode/utf16"

	"github.com/dataembassy/embassy/images/authenticode"
)

// TCG event types used in the predicted sequences.
const (
	EvSeparator                    uint32 = 0x00000004
	EvEventTag                     uint32 = 0x00000006
	EvIPL                          uint32 = 0x0000000d
	EvEFIBootServicesApplication   uint32 = 0x80000003
	EvEFIGPTEvent                  uint32 = 0x80000006
	EvEFIAction                    uint32 = 0x80000007
	actionCalling                         = "Calling EFI Application from Boot Option"
	actionReturning                       = "Returning from EFI Application from Boot Option"
	actionExitBootServices                = "Exit Boot Services Invocation"
	actionExitBootServicesReturned        = "Exit Boot Services Returned with Success"
)

// PCR indexes this package predicts.
const (
	PCRBootApps    = 4  // firmware: boot applications (UKI, kernel)
	PCRGPT         = 5  // firmware: GPT, ExitBootServices
	PCRKernelStub  = 9  // Linux EFI stub: LoadOptions, initrd
	PCRUKISections = 11 // systemd-stub: UKI sections
	PCRStubParams  = 12 // systemd-stub: command line override, credentials
	PCRSysexts     = 13 // systemd-stub: system extensions
)

// ErrNotUKI is returned (wrapped) when the image lacks a section the
// prediction needs.
var ErrNotUKI = errors.New("predict: not a unified kernel image")

// Event is one predicted measurement.
type Event struct {
	// PCR is the register extended.
	PCR int
	// Type is the TCG event type.
	Type uint32
	// Digest is the SHA-256 digest extended.
	Digest []byte
	// Description says what was measured, for humans.
	Description string
}

// Options tune the firmware behaviour the prediction assumes.
type Options struct {
	// FailedBootOptions is the number of boot options the firmware tries
	// (and signals ReadyToBoot for) before the disk: each adds a
	// "Returning from"/"Calling" pair to PCR 4. Under QEMU with a default
	// CD-ROM drive OVMF tries it first, so this is 1; with -nodefaults, 0.
	FailedBootOptions int
	// SecureBoot, when set, predicts a boot with Secure Boot enabled: PCR 7
	// from the firmware's variables and the UKI's signer, and no kernel
	// event in PCR 4 (with Secure Boot on, systemd-stub 252 installs a
	// security override while it loads the kernel, which also bypasses the
	// firmware's measurement of it).
	SecureBoot *SecureBoot
}

// Sections returns the in-memory contents of a PE image's sections by name
// (VirtualSize bytes, zero-filled past the raw data), as systemd-stub sees
// them.
func Sections(img []byte) (map[string][]byte, error) {
	f, err := pe.NewFile(bytes.NewReader(img))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotUKI, err)
	}
	out := map[string][]byte{}
	for _, s := range f.Sections {
		if _, dup := out[s.Name]; dup {
			return nil, fmt.Errorf("%w: duplicate section %s", ErrNotUKI, s.Name)
		}
		// Bound memory for hostile images; a UKI's payload sections are
		// file-backed.
		if int64(s.VirtualSize) > int64(len(img))+maxZeroFill {
			return nil, fmt.Errorf("%w: section %s VirtualSize %d exceeds the file", ErrNotUKI, s.Name, s.VirtualSize)
		}
		n := min(s.VirtualSize, s.Size)
		data := make([]byte, s.VirtualSize)
		if n > 0 {
			if _, err := io.ReadFull(io.NewSectionReader(s, 0, int64(n)), data[:n]); err != nil {
				return nil, fmt.Errorf("%w: section %s: %w", ErrNotUKI, s.Name, err)
			}
		}
		out[s.Name] = data
	}
	return out, nil
}

// maxZeroFill bounds how far a section's VirtualSize may exceed the file.
const maxZeroFill = 16 << 20

// stubMeasuredSections is systemd-stub v252's measurement order (.pcrsig
// is never measured).
var stubMeasuredSections = []string{".linux", ".osrel", ".cmdline", ".initrd", ".splash", ".dtb", ".pcrpkey"}

// UKIEvents returns the events booting uki from disk produces in PCRs 4, 9
// and 11, and 7 with Options.SecureBoot (PCR 12 and 13 get none: the firmware's auto-created boot option
// passes no LoadOptions, and the ESP holds no credentials or extensions).
func UKIEvents(uki []byte, o Options) ([]Event, error) {
	secs, err := Sections(uki)
	if err != nil {
		return nil, err
	}
	linux, ok := secs[".linux"]
	if !ok || len(linux) == 0 {
		return nil, fmt.Errorf("%w: no .linux section", ErrNotUKI)
	}
	ukiHash, err := authenticode.Hash(uki, crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("predict: UKI: %w", err)
	}
	kernelHash, err := authenticode.Hash(linux, crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("predict: kernel in .linux: %w", err)
	}

	// PCR 4: OVMF's ReadyToBoot actions and separator, then the UKI as a
	// boot application, then the kernel, which systemd-stub 252 starts
	// through LoadImage from memory so the firmware measures it too.
	ev := []Event{
		action(PCRBootApps, actionCalling),
		separator(PCRBootApps),
	}
	for range o.FailedBootOptions {
		ev = append(ev, action(PCRBootApps, actionReturning), action(PCRBootApps, actionCalling))
	}
	ev = append(ev,
		Event{PCRBootApps, EvEFIBootServicesApplication, ukiHash, "UKI (\\EFI\\BOOT\\BOOTX64.EFI) Authenticode"},
	)

	// PCR 11: for each present, non-empty section: its name with NUL,
	// then its contents.
	for _, name := range stubMeasuredSections {
		data, ok := secs[name]
		if !ok || len(data) == 0 {
			continue
		}
		ev = append(ev,
			Event{PCRUKISections, EvIPL, sum(append([]byte(name), 0)), "section name " + name},
			Event{PCRUKISections, EvIPL, sum(data), "section " + name},
		)
	}

	if o.SecureBoot == nil {
		ev = append(ev, Event{PCRBootApps, EvEFIBootServicesApplication, kernelHash, "kernel (.linux) Authenticode"})
	} else {
		sb, err := SecureBootEvents(*o.SecureBoot)
		if err != nil {
			return nil, err
		}
		ev = append(ev, sb...)
	}

	// PCR 9: the Linux EFI stub measures the command line systemd-stub
	// hands it (UTF-16LE with the terminating NUL) and the initrd.
	if cmdline := cmdlineOf(secs[".cmdline"]); cmdline != "" {
		ev = append(ev, Event{PCRKernelStub, EvEventTag, LoadOptionsDigest(cmdline), "LOADED_IMAGE::LoadOptions"})
	}
	if initrd := secs[".initrd"]; len(initrd) > 0 {
		ev = append(ev, Event{PCRKernelStub, EvEventTag, sum(initrd), "Linux initrd"})
	}
	return ev, nil
}

// cmdlineOf returns the command line in a .cmdline section: up to the
// first NUL, as the stub converts it.
func cmdlineOf(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// LoadOptionsDigest is the digest the Linux EFI stub extends into PCR 9 for
// a command line: SHA-256 of its UTF-16LE encoding including the NUL.
func LoadOptionsDigest(cmdline string) []byte {
	u := utf16.Encode([]rune(cmdline + "\x00"))
	b := make([]byte, 2*len(u))
	for i, c := range u {
		binary.LittleEndian.PutUint16(b[2*i:], c)
	}
	return sum(b)
}

// GPTEvents returns OVMF's PCR 5 events for booting from the disk image
// read through r: the separator, the EV_EFI_GPT_EVENT of the primary GPT,
// and the two ExitBootServices actions.
func GPTEvents(r io.ReaderAt) ([]Event, error) {
	data, err := GPTEventData(r)
	if err != nil {
		return nil, err
	}
	return []Event{
		separator(PCRGPT),
		{PCRGPT, EvEFIGPTEvent, sum(data), "GPT header and partition entries"},
		action(PCRGPT, actionExitBootServices),
		action(PCRGPT, actionExitBootServicesReturned),
	}, nil
}

// ErrGPT is returned (wrapped) for a disk image without a valid primary GPT.
var ErrGPT = errors.New("predict: bad GPT")

// GPTEventData returns the UEFI_GPT_DATA structure firmware measures: the
// primary GPT header (HeaderSize bytes), the number of used partition
// entries as a UINT64, then those entries in table order. 512-byte sectors
// are assumed.
func GPTEventData(r io.ReaderAt) ([]byte, error) {
	const sector = 512
	hdr := make([]byte, sector)
	if _, err := r.ReadAt(hdr, sector); err != nil {
		return nil, fmt.Errorf("%w: read header: %w", ErrGPT, err)
	}
	if string(hdr[:8]) != "EFI PART" {
		return nil, fmt.Errorf("%w: no signature", ErrGPT)
	}
	hdrSize := binary.LittleEndian.Uint32(hdr[12:])
	entriesLBA := binary.LittleEndian.Uint64(hdr[72:])
	nEntries := binary.LittleEndian.Uint32(hdr[80:])
	entrySize := binary.LittleEndian.Uint32(hdr[84:])
	if hdrSize < 92 || hdrSize > sector || entrySize < 128 || entrySize > 4096 || entrySize%8 != 0 || nEntries > 1024 || entriesLBA > 1<<40 {
		return nil, fmt.Errorf("%w: header size %d, %d entries of %d bytes", ErrGPT, hdrSize, nEntries, entrySize)
	}
	entries := make([]byte, int(nEntries)*int(entrySize))
	if _, err := r.ReadAt(entries, int64(entriesLBA)*sector); err != nil {
		return nil, fmt.Errorf("%w: read entries: %w", ErrGPT, err)
	}
	var used [][]byte
	zero := make([]byte, 16)
	for i := range int(nEntries) {
		e := entries[i*int(entrySize) : (i+1)*int(entrySize)]
		if !bytes.Equal(e[:16], zero) {
			used = append(used, e)
		}
	}
	out := slices.Clone(hdr[:hdrSize])
	out = binary.LittleEndian.AppendUint64(out, uint64(len(used)))
	for _, e := range used {
		out = append(out, e...)
	}
	return out, nil
}

// Replay extends each event's digest into a SHA-256 bank starting from
// zeros and returns the resulting PCR values by index. PCRs in pcrs with no
// events are returned as zeros.
func Replay(events []Event, pcrs ...int) map[int][]byte {
	out := map[int][]byte{}
	for _, p := range pcrs {
		out[p] = make([]byte, sha256.Size)
	}
	for _, e := range events {
		cur, ok := out[e.PCR]
		if !ok {
			cur = make([]byte, sha256.Size)
		}
		h := sha256.New()
		h.Write(cur)
		h.Write(e.Digest)
		out[e.PCR] = h.Sum(nil)
	}
	return out
}

// Describe renders events one per line, for logs and failure messages.
func Describe(events []Event) string {
	var b strings.Builder
	for _, e := range events {
		fmt.Fprintf(&b, "PCR%-2d %#010x %x %s\n", e.PCR, e.Type, e.Digest, e.Description)
	}
	return b.String()
}

func sum(b []byte) []byte {
	s := sha256.Sum256(b)
	return s[:]
}

func action(pcr int, text string) Event {
	return Event{pcr, EvEFIAction, sum([]byte(text)), text}
}

func separator(pcr int) Event {
	return Event{pcr, EvSeparator, sum([]byte{0, 0, 0, 0}), "separator"}
}
