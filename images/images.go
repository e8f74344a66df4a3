// Package images builds a release's boot artefacts and predicts what they
// measure: a UKI (package uki), a reproducible GPT disk image with the UKI on
// its ESP (package disk), and the PCR values OVMF + systemd-stub + Linux
// produce when booting it (package predict), all from the files alone.
// predict.InitramfsPCR adds PCR 15, the appliance's measurement of its own
// binary and configuration, read from an appliance initramfs.
//
// The prediction becomes a release manifest (package attest/release) that
// release officers sign with `embassyctl release sign`; the verifier admits a
// boot only if the quoted PCRs equal a signed release's values. See
// docs/disk-image.md.
package images

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"sort"
	"time"

	"github.com/dataembassy/embassy/attest/release"
	"github.com/dataembassy/embassy/images/disk"
	"github.com/dataembassy/embassy/images/predict"
	"github.com/dataembassy/embassy/images/uki"
)

// ManifestName is the product name written into release manifests.
const ManifestName = "embassy-appliance"

// ReleasePCRs are the PCRs a release manifest lists: they depend only on
// the release's files. PCR 5 (GPT) is predicted too but belongs to the
// per-machine firmware baseline recorded at enrollment (see
// attest/tpm.FirmwarePCRs), so it is listed only on request.
var ReleasePCRs = []int{predict.PCRBootApps, predict.PCRKernelStub, predict.PCRUKISections, predict.PCRStubParams, predict.PCRSysexts}

// Options are the inputs of a release image.
type Options struct {
	// Stub is the systemd EFI stub; empty means read uki.DefaultStubPath.
	Stub []byte
	// Kernel is the Linux bzImage.
	Kernel []byte
	// Initrd is the initramfs (from package initramfs).
	Initrd []byte
	// Cmdline is the kernel command line baked into the UKI.
	Cmdline string
	// OSRelease is the os-release text for the UKI's .osrel section.
	OSRelease string
	// Disk holds the disk sizes, GUID seed and timestamp; Disk.UKI is
	// filled in by Build.
	Disk disk.Options
	// DiskPath is where the disk image is written (must not exist); empty
	// means build only the UKI and its predictions.
	DiskPath string
	// Predict tunes the firmware behaviour assumed (boot attempts, Secure
	// Boot).
	Predict predict.Options
	// Sign, if set, signs the UKI for Secure Boot before it goes on the
	// disk (see SignWithSbsign). A signature does not change the UKI's
	// Authenticode digest, so PCR 4 is the same signed or not.
	Sign func(uki []byte) ([]byte, error)
}

// Release is a built (or inspected) release and its predicted measurements.
type Release struct {
	// UKI is the unified kernel image.
	UKI []byte
	// UKIAuthenticode is the UKI's Authenticode SHA-256 (hex): the digest
	// firmware logs in PCR 4, and what a Secure Boot signature covers.
	UKIAuthenticode string
	// Components are the digests of the UKI, its payload sections
	// ("kernel", "initrd", "cmdline", "osrel"), the stub when Build made
	// the UKI, and the disk image when there is one; sorted by name.
	Components []release.Component
	// Events are the predicted measurements, in log order per PCR.
	Events []predict.Event
	// PCRs maps PCR index to the predicted SHA-256 value (hex): the
	// ReleasePCRs, 5 when a disk image was given, 7 with Secure Boot.
	PCRs map[int]string
}

// Build makes the UKI, optionally the disk image, and the predictions.
func Build(o Options) (*Release, error) {
	stub := o.Stub
	if len(stub) == 0 {
		var err error
		if stub, err = os.ReadFile(uki.DefaultStubPath); err != nil {
			return nil, fmt.Errorf("images: read EFI stub: %w", err)
		}
	}
	img, err := uki.Build(uki.Options{Stub: stub, Linux: o.Kernel, Initrd: o.Initrd, Cmdline: o.Cmdline, OSRelease: o.OSRelease})
	if err != nil {
		return nil, err
	}
	ukiBytes := img.Bytes
	if o.Sign != nil {
		if ukiBytes, err = o.Sign(ukiBytes); err != nil {
			return nil, fmt.Errorf("images: sign UKI: %w", err)
		}
	}
	if o.DiskPath != "" {
		do := o.Disk
		do.UKI = ukiBytes
		if err := disk.Build(o.DiskPath, do); err != nil {
			return nil, err
		}
	}
	r, err := Predict(ukiBytes, o.DiskPath, o.Predict)
	if err != nil {
		return nil, err
	}
	r.Components = append(r.Components, component("stub", stub))
	sortComponents(r.Components)
	return r, nil
}

// Predict computes a release's measurements from an existing UKI and,
// if diskPath is not empty, the disk image that carries it.
func Predict(ukiImage []byte, diskPath string, o predict.Options) (*Release, error) {
	r := &Release{UKI: ukiImage}
	var err error
	if r.Events, err = predict.UKIEvents(ukiImage, o); err != nil {
		return nil, err
	}
	for _, e := range r.Events {
		if e.Type == predict.EvEFIBootServicesApplication {
			r.UKIAuthenticode = hex.EncodeToString(e.Digest)
			break
		}
	}
	secs, err := predict.Sections(ukiImage)
	if err != nil {
		return nil, err
	}
	r.Components = append(r.Components, component("uki", ukiImage))
	for _, c := range []struct{ name, section string }{
		{"kernel", uki.SectionLinux},
		{"initrd", uki.SectionInitrd},
		{"cmdline", uki.SectionCmdline},
		{"osrel", uki.SectionOSRel},
	} {
		if data, ok := secs[c.section]; ok {
			r.Components = append(r.Components, component(c.name, data))
		}
	}
	pcrs := append([]int(nil), ReleasePCRs...)
	if o.SecureBoot != nil {
		pcrs = append(pcrs, predict.PCRSecureBoot)
	}
	if diskPath != "" {
		gptEvents, c, err := diskFacts(diskPath)
		if err != nil {
			return nil, err
		}
		r.Events = append(r.Events, gptEvents...)
		r.Components = append(r.Components, c)
		pcrs = append(pcrs, predict.PCRGPT)
	}
	r.PCRs = map[int]string{}
	for i, v := range predict.Replay(r.Events, pcrs...) {
		r.PCRs[i] = hex.EncodeToString(v)
	}
	sortComponents(r.Components)
	return r, nil
}

// ManifestOptions name a release manifest.
type ManifestOptions struct {
	// Release is the release's version string, e.g. "2026.11.1".
	Release string
	// Created is the manifest's creation time; zero means now. Pass a
	// fixed time for a reproducible manifest.
	Created time.Time
	// IncludeGPT also lists PCR 5 (normally part of the enrollment
	// baseline, not of a release).
	IncludeGPT bool
	// IncludeSecureBoot also lists PCR 7 (Secure Boot state and the
	// authority that verified the UKI; normally enrollment baseline).
	IncludeSecureBoot bool
	// RuntimePCRs are further PCR values (SHA-256) the release pins that
	// the boot chain does not produce: PCR 15, the appliance's own
	// measurement log of its binary and configuration, predicted with
	// attest/measure. They may not override a PCR
	// the release predicts.
	RuntimePCRs map[int][]byte
}

// Manifest returns the unsigned release manifest for r: its components and
// the ReleasePCRs (plus PCR 5 with IncludeGPT).
func (r *Release) Manifest(o ManifestOptions) (*release.Manifest, error) {
	created := o.Created
	if created.IsZero() {
		created = time.Now()
	}
	m := &release.Manifest{
		Version:    release.Version,
		Name:       ManifestName,
		Release:    o.Release,
		Created:    created.UTC().Truncate(time.Second),
		Components: append([]release.Component(nil), r.Components...),
	}
	pcrs := append([]int(nil), ReleasePCRs...)
	if o.IncludeGPT {
		if _, ok := r.PCRs[predict.PCRGPT]; !ok {
			return nil, errors.New("images: PCR 5 requested but no disk image was predicted")
		}
		pcrs = append(pcrs, predict.PCRGPT)
	}
	if o.IncludeSecureBoot {
		if _, ok := r.PCRs[predict.PCRSecureBoot]; !ok {
			return nil, errors.New("images: PCR 7 requested but no Secure Boot configuration was predicted")
		}
		pcrs = append(pcrs, predict.PCRSecureBoot)
	}
	for _, i := range pcrs {
		v, err := hex.DecodeString(r.PCRs[i])
		if err != nil || len(v) != sha256.Size {
			return nil, fmt.Errorf("images: no prediction for PCR %d", i)
		}
		m.SetPCR(uint32(i), v)
	}
	for _, i := range slices.Sorted(maps.Keys(o.RuntimePCRs)) {
		v := o.RuntimePCRs[i]
		if slices.Contains(pcrs, i) {
			return nil, fmt.Errorf("images: runtime PCR %d is already predicted from the boot chain", i)
		}
		if len(v) != sha256.Size {
			return nil, fmt.Errorf("images: runtime PCR %d: %d bytes, want %d", i, len(v), sha256.Size)
		}
		m.SetPCR(uint32(i), v)
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return m, nil
}

// ErrMismatch is returned by Compare when measured PCRs differ from the
// prediction.
var ErrMismatch = errors.New("images: measured PCRs differ from the prediction")

// Compare checks measured PCR values (hex, by index) against every PCR the
// release predicts.
func (r *Release) Compare(measured map[int]string) error {
	var bad []int
	for i, want := range r.PCRs {
		if measured[i] != want {
			bad = append(bad, i)
		}
	}
	if len(bad) > 0 {
		sort.Ints(bad)
		return fmt.Errorf("%w: PCRs %v", ErrMismatch, bad)
	}
	return nil
}

// diskFacts reads back a disk image: its PCR 5 events and its digest.
func diskFacts(path string) ([]predict.Event, release.Component, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, release.Component{}, fmt.Errorf("images: %w", err)
	}
	defer f.Close()
	ev, err := predict.GPTEvents(f)
	if err != nil {
		return nil, release.Component{}, err
	}
	h := sha256.New()
	n, err := io.Copy(h, io.NewSectionReader(f, 0, 1<<62))
	if err != nil {
		return nil, release.Component{}, fmt.Errorf("images: hash disk image: %w", err)
	}
	return ev, release.Component{Name: "disk", SHA256: hex.EncodeToString(h.Sum(nil)), Size: n}, nil
}

func component(name string, b []byte) release.Component {
	s := sha256.Sum256(b)
	return release.Component{Name: name, SHA256: hex.EncodeToString(s[:]), Size: int64(len(b))}
}

func sortComponents(c []release.Component) {
	sort.Slice(c, func(i, j int) bool { return c[i].Name < c[j].Name })
}
