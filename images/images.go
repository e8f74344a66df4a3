// Package images builds a release's boot artefacts and predicts what they
// measure: a UKI (package uki), a reproducible GPT disk image with the UKI on
// its ESP (package disk), and the PCR values OVMF + systemd-stub + Linux
// produce when booting it (package predict), all from the input files alone.
//
// The prediction feeds the release manifest that release officers sign
// (`embassyctl release sign`); the verifier admits a boot only if the quoted
// PCRs equal a signed release's values. See docs/disk-image.md.
package images

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"

	"github.com/dataembassy/embassy/images/disk"
	"github.com/dataembassy/embassy/images/predict"
	"github.com/dataembassy/embassy/images/uki"
)

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
	// Disk sizes and reproducibility inputs; Disk.UKI is filled by Build.
	Disk disk.Options
	// DiskPath is where the disk image is written (must not exist); empty
	// means build only the UKI and its predictions.
	DiskPath string
	// Predict tunes the firmware behaviour assumed for PCR 4.
	Predict predict.Options
}

// Component is one measured input of a release.
type Component struct {
	// Name identifies the component: "uki", "kernel", "initrd", "cmdline",
	// "osrel", "stub", "disk".
	Name string `json:"name"`
	// SHA256 is the hex SHA-256 of the component's bytes.
	SHA256 string `json:"sha256"`
	// Size is its length in bytes.
	Size int64 `json:"size"`
}

// Release is what Build produced and predicted.
type Release struct {
	// UKI is the unified kernel image.
	UKI []byte
	// UKIAuthenticode is the UKI's Authenticode SHA-256 (hex), the PCR 4
	// boot-application digest.
	UKIAuthenticode string
	// Components lists the digests of every input and output, by name.
	Components []Component
	// Events are the predicted measurements, in log order.
	Events []predict.Event
	// PCRs maps PCR index to the predicted SHA-256 value (hex) for PCRs 4,
	// 9, 11, 12 and 13, and 5 when a disk image was built.
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
	r := &Release{UKI: img.Bytes}
	if r.Events, err = predict.UKIEvents(img.Bytes, o.Predict); err != nil {
		return nil, err
	}
	for _, e := range r.Events {
		if e.Type == predict.EvEFIBootServicesApplication {
			r.UKIAuthenticode = hex.EncodeToString(e.Digest)
			break
		}
	}
	add := func(name string, b []byte) {
		s := sha256.Sum256(b)
		r.Components = append(r.Components, Component{Name: name, SHA256: hex.EncodeToString(s[:]), Size: int64(len(b))})
	}
	add("stub", stub)
	add("kernel", o.Kernel)
	add("initrd", o.Initrd)
	add("cmdline", []byte(o.Cmdline))
	add("osrel", []byte(o.OSRelease))
	add("uki", img.Bytes)
	pcrs := []int{predict.PCRBootApps, predict.PCRKernelStub, predict.PCRUKISections, predict.PCRStubParams, predict.PCRSysexts}

	if o.DiskPath != "" {
		do := o.Disk
		do.UKI = img.Bytes
		if err := disk.Build(o.DiskPath, do); err != nil {
			return nil, err
		}
		gptEvents, diskSum, size, err := diskFacts(o.DiskPath)
		if err != nil {
			return nil, err
		}
		r.Events = append(r.Events, gptEvents...)
		r.Components = append(r.Components, Component{Name: "disk", SHA256: diskSum, Size: size})
		pcrs = append(pcrs, predict.PCRGPT)
	}
	r.PCRs = map[int]string{}
	for i, v := range predict.Replay(r.Events, pcrs...) {
		r.PCRs[i] = hex.EncodeToString(v)
	}
	sort.Slice(r.Components, func(i, j int) bool { return r.Components[i].Name < r.Components[j].Name })
	return r, nil
}

// diskFacts reads back the built image: its PCR 5 events and its digest.
func diskFacts(path string) ([]predict.Event, string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, "", 0, err
	}
	defer f.Close()
	ev, err := predict.GPTEvents(f)
	if err != nil {
		return nil, "", 0, err
	}
	h := sha256.New()
	if _, err := f.Seek(0, 0); err != nil {
		return nil, "", 0, err
	}
	n, err := io.Copy(h, f)
	if err != nil {
		return nil, "", 0, fmt.Errorf("images: hash disk: %w", err)
	}
	return ev, hex.EncodeToString(h.Sum(nil)), n, nil
}

// ErrMismatch is returned by Compare when measured PCRs differ from the
// prediction.
var ErrMismatch = errors.New("images: measured PCRs differ from the prediction")

// Compare checks measured PCR values (hex, by index) against the release's
// prediction for every predicted PCR.
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
