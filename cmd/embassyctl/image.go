package main

import (
	"encoding/hex"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"time"

	"github.com/dataembassy/embassy/attest/tpm"
	"github.com/dataembassy/embassy/images"
	"github.com/dataembassy/embassy/images/disk"
	"github.com/dataembassy/embassy/images/predict"
	"github.com/dataembassy/embassy/images/uki"
	"github.com/dataembassy/embassy/initramfs"
	"github.com/dataembassy/embassy/internal/pki"
)

func init() {
	register(command{
		name:    "image",
		summary: "boot images: build a UKI + GPT disk image and its manifest, predict PCRs",
		run:     runImage,
	})
}

const imageUsage = `usage: embassyctl image <subcommand> [flags]

subcommands:
  build   --initrd F --release R --out DIR [flags]
                       write DIR/uki.efi, DIR/disk.img, DIR/manifest.json
                       (unsigned; sign with 'embassyctl release sign') and
                       DIR/events.txt (the predicted measurements)
  predict --uki F [--disk D] [--release R --manifest M.json] [--json]
                       predict the PCRs an existing UKI / disk image produces

Secure Boot: build --sign-key K --sign-cert C --sb-vars OVMF_VARS.fd signs the
UKI with sbsign and predicts PCR 7; predict takes --sign-cert C --sb-vars V.

Run 'embassyctl image <subcommand> --help' for its flags.
`

// defaultCmdline is the appliance's kernel command line: serial console,
// reboot on panic, few console messages (every byte is slow under TCG).
const defaultCmdline = "console=ttyS0,115200 panic=-1 quiet"

func runImage(args []string, stdout, stderr io.Writer) error {
	return subcommands(args, stdout, stderr, imageUsage, map[string]subcommand{
		"build":   imageBuild,
		"predict": imagePredict,
	})
}

// defaultKernelPath is the kernel scripts/fetch-kernel.sh cached, or "" if
// there is none (then --kernel is required).
func defaultKernelPath() string {
	k, err := initramfs.CachedKernel()
	if err != nil {
		return ""
	}
	return k.Vmlinuz
}

// defaultEpoch honours SOURCE_DATE_EPOCH, the reproducible-builds
// convention, and is 0 otherwise.
func defaultEpoch() int64 {
	if v, err := strconv.ParseInt(os.Getenv("SOURCE_DATE_EPOCH"), 10, 64); err == nil {
		return v
	}
	return 0
}

func imageBuild(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("image build", "--initrd F --release R --out DIR [flags]", stdout, stderr)
	kernel := fs.String("kernel", defaultKernelPath(), "Linux bzImage")
	initrd := fs.String("initrd", "", "initramfs (required)")
	cmdline := fs.String("cmdline", defaultCmdline, "kernel command line baked into the UKI")
	osrel := fs.String("osrel", "", "os-release file for .osrel (default: ID=embassy, VERSION_ID=<release>)")
	stub := fs.String("stub", uki.DefaultStubPath, "systemd EFI stub")
	rel := fs.String("release", "", "release version written into the manifest (required)")
	out := fs.String("out", "", "output directory; must not contain uki.efi/disk.img/manifest.json yet (required)")
	espMiB := fs.Int64("esp-mib", 0, "ESP size in MiB (0: 128 or what the UKI needs)")
	dataMiB := fs.Int64("data-mib", 64, "data (store) partition size in MiB")
	seed := fs.String("seed", "embassy", "seed of the disk and partition GUIDs; keep it across releases (PCR 5)")
	epoch := fs.Int64("epoch", defaultEpoch(), "timestamp (Unix seconds) of ESP files and of the manifest (default $SOURCE_DATE_EPOCH or 0)")
	failed := fs.Int("failed-boot-options", 0, "boot options the firmware tries before the disk (PCR 4)")
	withGPT := fs.Bool("include-gpt", false, "also list PCR 5 (GPT) in the manifest")
	signKey := fs.String("sign-key", "", "Secure Boot: sign the UKI with this PEM key (sbsign); needs --sign-cert and --sb-vars")
	signCert := fs.String("sign-cert", "", "Secure Boot: the signing certificate (PEM)")
	sbVars := fs.String("sb-vars", "", "Secure Boot: the firmware variables image with PK/KEK/db/dbx enrolled (predicts PCR 7)")
	withPCR7 := fs.Bool("include-pcr7", false, "also list PCR 7 (Secure Boot) in the manifest")
	withApp := fs.Bool("appliance-pcr", false, "also list PCR 15: the appliance's measurement of its binary and configuration, read from the initrd (an appliance initramfs)")
	if err := fs.require("initrd", "release", "out").parse(args); err != nil {
		return err
	}
	sbFlags := 0
	for _, f := range []string{*signKey, *signCert, *sbVars} {
		if f != "" {
			sbFlags++
		}
	}
	if sbFlags != 0 && sbFlags != 3 {
		return fs.usageError("--sign-key, --sign-cert and --sb-vars go together")
	}
	read := func(p string) ([]byte, error) {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("read %w", err)
		}
		return b, nil
	}
	o := images.Options{
		Cmdline:  *cmdline,
		Disk:     disk.Options{ESPSize: *espMiB << 20, DataSize: *dataMiB << 20, Seed: *seed, Epoch: *epoch},
		DiskPath: filepath.Join(*out, "disk.img"),
		Predict:  predict.Options{FailedBootOptions: *failed},
	}
	var err error
	if o.Stub, err = read(*stub); err != nil {
		return err
	}
	if o.Kernel, err = read(*kernel); err != nil {
		return err
	}
	if o.Initrd, err = read(*initrd); err != nil {
		return err
	}
	if *osrel != "" {
		b, err := read(*osrel)
		if err != nil {
			return err
		}
		o.OSRelease = string(b)
	} else {
		o.OSRelease = fmt.Sprintf("ID=embassy\nNAME=\"Embassy appliance\"\nVERSION_ID=%s\n", *rel)
	}
	if sbFlags == 3 {
		sb, err := secureBootInputs(*signCert, *sbVars)
		if err != nil {
			return err
		}
		o.Predict.SecureBoot = sb
		o.Sign = images.SignWithSbsign(*signKey, *signCert)
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	for _, name := range []string{"uki.efi", "disk.img", "manifest.json", "events.txt"} {
		if _, err := os.Stat(filepath.Join(*out, name)); err == nil {
			return fmt.Errorf("%s already exists", filepath.Join(*out, name))
		}
	}
	runtime, err := runtimePCRs(*withApp, o.Initrd)
	if err != nil {
		return err
	}
	r, err := images.Build(o)
	if err != nil {
		return err
	}
	m, err := r.Manifest(images.ManifestOptions{Release: *rel, Created: time.Unix(*epoch, 0), IncludeGPT: *withGPT, IncludeSecureBoot: *withPCR7, RuntimePCRs: runtime})
	if err != nil {
		return err
	}
	mj, err := m.Marshal()
	if err != nil {
		return err
	}
	if err := writeNew(filepath.Join(*out, "uki.efi"), r.UKI, 0o644); err != nil {
		return err
	}
	if err := writeNew(filepath.Join(*out, "manifest.json"), append(mj, '\n'), 0o644); err != nil {
		return err
	}
	if err := writeNew(filepath.Join(*out, "events.txt"), []byte(predict.Describe(r.Events)), 0o644); err != nil {
		return err
	}
	printPrediction(stdout, r, runtime)
	fmt.Fprintf(stdout, "wrote %s/{uki.efi,disk.img,manifest.json,events.txt}\n", *out)
	return nil
}

// predictionView is the --json output of image predict.
type predictionView struct {
	UKIAuthenticode string            `json:"uki_authenticode"`
	PCRs            map[string]string `json:"pcrs"`
	Components      any               `json:"components"`
	Events          []eventView       `json:"events"`
}

type eventView struct {
	PCR         int    `json:"pcr"`
	Type        string `json:"type"`
	Digest      string `json:"digest"`
	Description string `json:"description"`
}

func imagePredict(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("image predict", "--uki F [--disk D] [--release R --manifest M.json] [--json]", stdout, stderr)
	ukiPath := fs.String("uki", "", "the UKI (required)")
	diskPath := fs.String("disk", "", "the disk image carrying it (adds PCR 5 and its digest)")
	rel := fs.String("release", "", "release version, with --manifest")
	manifest := fs.String("manifest", "", "write the unsigned manifest here (must not exist)")
	failed := fs.Int("failed-boot-options", 0, "boot options the firmware tries before the disk (PCR 4)")
	withGPT := fs.Bool("include-gpt", false, "also list PCR 5 (GPT) in the manifest")
	signCert := fs.String("sign-cert", "", "Secure Boot: the certificate that signed the UKI (PEM or DER; with --sb-vars)")
	sbVars := fs.String("sb-vars", "", "Secure Boot: the firmware variables image (predicts PCR 7)")
	withPCR7 := fs.Bool("include-pcr7", false, "also list PCR 7 (Secure Boot) in the manifest")
	withApp := fs.Bool("appliance-pcr", false, "also predict PCR 15 from the appliance binary and configuration in the UKI's initrd")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.require("uki").parse(args); err != nil {
		return err
	}
	if (*manifest != "") != (*rel != "") || (*signCert == "") != (*sbVars == "") {
		return fs.usageError("--release goes with --manifest, --sign-cert with --sb-vars")
	}
	b, err := os.ReadFile(*ukiPath)
	if err != nil {
		return err
	}
	po := predict.Options{FailedBootOptions: *failed}
	if *sbVars != "" {
		if po.SecureBoot, err = secureBootInputs(*signCert, *sbVars); err != nil {
			return err
		}
	}
	r, err := images.Predict(b, *diskPath, po)
	if err != nil {
		return err
	}
	var runtime map[int][]byte
	if *withApp {
		secs, err := predict.Sections(b)
		if err != nil {
			return err
		}
		if runtime, err = runtimePCRs(true, secs[uki.SectionInitrd]); err != nil {
			return err
		}
	}
	if *manifest != "" {
		m, err := r.Manifest(images.ManifestOptions{Release: *rel, IncludeGPT: *withGPT, IncludeSecureBoot: *withPCR7, RuntimePCRs: runtime})
		if err != nil {
			return err
		}
		mj, err := m.Marshal()
		if err != nil {
			return err
		}
		if err := writeNew(*manifest, append(mj, '\n'), 0o644); err != nil {
			return err
		}
	}
	if *asJSON {
		v := predictionView{UKIAuthenticode: r.UKIAuthenticode, PCRs: map[string]string{}, Components: r.Components}
		for i, p := range r.PCRs {
			v.PCRs[strconv.Itoa(i)] = p
		}
		for i, p := range runtime {
			v.PCRs[strconv.Itoa(i)] = hex.EncodeToString(p)
		}
		for _, e := range r.Events {
			v.Events = append(v.Events, eventView{e.PCR, fmt.Sprintf("%#x", e.Type), fmt.Sprintf("%x", e.Digest), e.Description})
		}
		return printJSON(stdout, v)
	}
	printPrediction(stdout, r, runtime)
	return nil
}

// runtimePCRs predicts PCR 15 from an appliance initramfs when asked.
func runtimePCRs(want bool, initrd []byte) (map[int][]byte, error) {
	if !want {
		return nil, nil
	}
	v, err := predict.InitramfsPCR(initrd)
	if err != nil {
		return nil, fmt.Errorf("--appliance-pcr: %w", err)
	}
	return map[int][]byte{tpm.PCRAppliance: v}, nil
}

func printPrediction(w io.Writer, r *images.Release, runtime map[int][]byte) {
	fmt.Fprintf(w, "UKI Authenticode sha256: %s\n", r.UKIAuthenticode)
	idx := make([]int, 0, len(r.PCRs))
	for i := range r.PCRs {
		idx = append(idx, i)
	}
	sort.Ints(idx)
	for _, i := range idx {
		fmt.Fprintf(w, "PCR %-2d %s\n", i, r.PCRs[i])
	}
	for _, i := range slices.Sorted(maps.Keys(runtime)) {
		fmt.Fprintf(w, "PCR %-2d %x (appliance log)\n", i, runtime[i])
	}
	for _, c := range r.Components {
		fmt.Fprintf(w, "component %-8s %s %d bytes\n", c.Name, c.SHA256, c.Size)
	}
}

// secureBootInputs reads the signing certificate and firmware variables
// for a Secure Boot prediction.
func secureBootInputs(certPath, varsPath string) (*predict.SecureBoot, error) {
	cert, err := pki.ReadCertFile(certPath)
	if err != nil {
		return nil, err
	}
	vars, err := os.ReadFile(varsPath)
	if err != nil {
		return nil, err
	}
	return &predict.SecureBoot{VarStore: vars, Signer: cert}, nil
}
