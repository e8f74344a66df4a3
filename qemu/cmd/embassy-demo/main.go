// Command embassy-demo runs the whole Embassy chain on this machine: it
// starts a verifier with its SQLite state in a local directory,
// manufactures a software TPM and enrolls it, builds the appliance image,
// publishes its release (predicted PCR 9 and 15, PCR 4 from the booted
// machine), boots the appliance under QEMU (OVMF, swtpm, TCG), waits until
// it serves NBD over mutual TLS, writes and reads data through nbdcopy,
// prints what happened and shuts everything down.
//
// With -disk-image the appliance boots as a rack does, from its own disk:
// the initramfs, kernel and command line are wrapped into a UKI on a GPT
// disk image (images/), every release PCR (4, 9, 11, 12, 13 and 15) is
// predicted from the files before the boot, the manifest is signed by 2 of
// 3 release officers and published, and QEMU boots the disk through OVMF
// (no -kernel); the store lives on the image's embassy-store partition.
//
// `make demo` runs it after installing the dependencies; `make demo-disk`
// runs the disk image variant.
package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"sort"
	"time"

	"github.com/dataembassy/embassy/attest/release"
	tpmpkg "github.com/dataembassy/embassy/attest/tpm"
	"github.com/dataembassy/embassy/images"
	"github.com/dataembassy/embassy/images/disk"
	"github.com/dataembassy/embassy/images/predict"
	"github.com/dataembassy/embassy/initramfs"
	"github.com/dataembassy/embassy/qemu"
)

const (
	applianceID = "lux-01"
	clientID    = "tallinn-client"
	nbdPort     = 10809
)

var start = time.Now()

func step(format string, a ...any) {
	fmt.Printf("[%6.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, a...))
}

func main() {
	dir := flag.String("dir", "build/demo", "working directory (verifier state, TPM, disk, image, logs)")
	sizeMiB := flag.Int("mib", 64, "MiB of random data to write and read back")
	verbose := flag.Bool("console", false, "stream the appliance's serial console")
	buildOnly := flag.Bool("build-only", false, "only build the appliance image (with a demo configuration)")
	diskImage := flag.Bool("disk-image", false, "boot from a UKI disk image through the firmware, release predicted from the files and signed 2 of 3")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, *dir, *sizeMiB, *verbose, *buildOnly, *diskImage); err != nil {
		fmt.Fprintln(os.Stderr, "embassy-demo: FAILED:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, dir string, sizeMiB int, verbose, buildOnly, diskImage bool) error {
	root, err := qemu.ModuleRoot(".")
	if err != nil {
		return err
	}
	if dir, err = filepath.Abs(dir); err != nil {
		return err
	}
	// A fresh run every time: new TPM, new disk, new verifier state. Only
	// a directory an earlier demo made (it holds the marker) is removed.
	marker := filepath.Join(dir, ".embassy-demo")
	if _, err := os.Stat(dir); err == nil {
		if _, err := os.Stat(marker); err != nil {
			return fmt.Errorf("%s exists and was not made by embassy-demo; choose another -dir", dir)
		}
		if err := os.RemoveAll(dir); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(marker, nil, 0o600); err != nil {
		return err
	}
	for _, d := range []string{"verifier", "tpm", "certs", "image", "vm"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return err
		}
	}
	k, err := initramfs.CachedKernel()
	if err != nil {
		return err
	}
	step("kernel %s (sha256 %s…)", k.Version, k.SHA256[:16])

	v, err := qemu.StartVerifier(ctx, qemu.VerifierOptions{Dir: filepath.Join(dir, "verifier"), Lease: 2 * time.Minute, Admin: true})
	if err != nil {
		return fmt.Errorf("starting the verifier: %w", err)
	}
	defer v.Close()
	step("verifier up: state %s, appliance sees it at %s", filepath.Join(dir, "verifier", "verifier.db"), v.GuestURL)

	certs := filepath.Join(dir, "certs")
	clientCA, err := qemu.ClientPKI(certs, clientID)
	if err != nil {
		return err
	}
	step("client PKI: %q may read and write export \"registers\"", clientID)

	co := qemu.ConfigOptions{
		Identity: applianceID, VerifierURL: v.GuestURL, VerifierCAPEM: v.CAPEM,
		ClientCAPEM: clientCA, ClientIdentity: clientID,
	}
	if diskImage {
		co.DiskDevice = qemu.StorePartition
	}
	config, err := qemu.ApplianceConfig(co)
	if err != nil {
		return err
	}
	step("building the appliance image (u-root init + embassy-appliance + virtio modules + config)…")
	img, err := qemu.BuildImage(ctx, qemu.ImageOptions{
		ModuleDir: root, OutDir: filepath.Join(dir, "image"), Config: config,
		Modules: initramfs.DefaultModules,
	})
	if err != nil {
		return err
	}
	step("initrd %s: %.1f MiB compressed (%.1f MiB cpio), sha256 %x…, built in %v",
		img.Initrd, float64(img.Initramfs.Size)/(1<<20), float64(img.Initramfs.UncompressedSize)/(1<<20),
		img.Initramfs.SHA256[:8], img.BuildTime.Round(time.Millisecond))
	if buildOnly {
		return nil
	}

	tpm, err := qemu.ManufactureTPM(ctx, filepath.Join(dir, "tpm"))
	if err != nil {
		return err
	}
	if err := v.Enroll(ctx, applianceID, tpm); err != nil {
		return err
	}
	step("software TPM manufactured (EK certificate from a local CA) and enrolled as %q", applianceID)

	var console io.Writer
	if verbose {
		console = os.Stdout
	}
	initrd, err := os.ReadFile(img.Initrd)
	if err != nil {
		return err
	}
	var m *qemu.Machine
	if diskImage {
		m, err = bootDiskImage(ctx, dir, img, initrd, v, tpm, console)
	} else {
		m, err = bootKernel(ctx, dir, img, initrd, config, v, tpm, console)
	}
	if err != nil {
		return err
	}
	defer m.Close()
	wait := func(re string, d time.Duration) (qemu.Line, error) {
		return m.WaitForLine(regexp.MustCompile(re), d)
	}

	served, err := wait(`msg="serving NBD"`, 5*time.Minute)
	if err != nil {
		return err
	}
	if l, err := wait(`msg="verifier granted the key"`, time.Second); err == nil {
		step("verifier decision: %s", l.Text[bytes.Index([]byte(l.Text), []byte("msg=")):])
	}
	step("SERVING NBD over mutual TLS %.1fs after QEMU start", served.At.Seconds())
	// Clients pin the server identity the appliance reported under a
	// quote, not the one on the console (which runs in the host country).
	fp, err := v.PinServerIdentity(ctx, m, applianceID, 0, certs, 2*time.Minute)
	if err != nil {
		return err
	}
	step("server identity sha256 %s… recorded by the verifier from a quoted heartbeat (= console); clients pin it", fp[:16])

	uri := fmt.Sprintf("nbds://%s/registers?tls-certificates=%s", m.HostAddr(nbdPort), certs)
	data := make([]byte, sizeMiB<<20)
	rand.Read(data)
	src := filepath.Join(dir, "vm", "written.bin")
	if err := os.WriteFile(src, data, 0o600); err != nil {
		return err
	}
	t0 := time.Now()
	if err := nbdcopy("--flush", src, uri); err != nil {
		return err
	}
	wd := time.Since(t0)
	step("wrote %d MiB with nbdcopy in %v (%.1f MiB/s)", sizeMiB, wd.Round(time.Millisecond), float64(sizeMiB)/wd.Seconds())
	dst := filepath.Join(dir, "vm", "read.bin")
	os.WriteFile(dst, nil, 0o600)
	t0 = time.Now()
	if err := nbdcopy(uri, dst); err != nil {
		return err
	}
	rd := time.Since(t0)
	got, err := os.ReadFile(dst)
	if err != nil {
		return err
	}
	if len(got) < len(data) || !bytes.Equal(got[:len(data)], data) {
		return errors.New("data read back differs from what was written")
	}
	step("read the whole export back (%d MiB) in %v: the %d MiB written are identical", len(got)>>20, rd.Round(time.Millisecond), sizeMiB)

	recs, err := v.Audit(ctx, applianceID)
	if err != nil {
		return err
	}
	step("verifier audit log for %s:", applianceID)
	for _, r := range recs {
		extra := ""
		if r.Check != "" {
			extra = fmt.Sprintf(" check=%s pcr=%d", r.Check, r.PCR)
		}
		step("  #%d %s %-10s %-8s%s %s", r.Seq, r.Time.Format("15:04:05"), r.Action, r.Outcome, extra, r.Detail)
	}
	if err := operatorView(ctx, v, applianceID); err != nil {
		return err
	}
	m.Close()
	step("shut down: QEMU and swtpm stopped, verifier closed. Everything is in %s", dir)
	return nil
}

func nbdcopy(args ...string) error {
	cmd := exec.Command("/usr/bin/nbdcopy", args...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nbdcopy %v: %w\n%s", args, err, out)
	}
	return nil
}

// bootKernel boots the appliance with -kernel/-initrd and a raw data disk,
// checks the measured PCR 9 and 15 against their predictions and
// publishes the release (PCR 4 from this boot: QEMU patches the kernel it
// loads).
func bootKernel(ctx context.Context, dir string, img qemu.Image, initrd, config []byte, v *qemu.Verifier, tpm *qemu.TPM, console io.Writer) (*qemu.Machine, error) {
	disk := filepath.Join(dir, "vm", "data.img")
	if err := os.WriteFile(disk, nil, 0o600); err != nil {
		return nil, err
	}
	if err := os.Truncate(disk, 256<<20); err != nil {
		return nil, err
	}
	m, err := qemu.Start(ctx, qemu.Config{
		Dir: filepath.Join(dir, "vm"), Kernel: img.Kernel, Initrd: img.Initrd, Append: qemu.DefaultAppend,
		DataDisk: disk, TPMState: tpm.StateDir, Forwards: []qemu.Forward{{GuestPort: nbdPort}}, Console: console,
	})
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			m.Close()
		}
	}()
	step("QEMU started (q35, TCG, OVMF, swtpm, 256 MiB data disk); console: %s", m.ConsolePath())
	pcrs, err := measuredPCRs(m)
	if err != nil {
		return nil, err
	}
	binary, err := os.ReadFile(filepath.Join(dir, "image", "embassy-appliance"))
	if err != nil {
		return nil, err
	}
	p9 := predict.KernelBootPCR9(qemu.DefaultAppend, initrd)
	p15, err := predict.AppliancePCR(binary, config)
	if err != nil {
		return nil, err
	}
	for _, i := range []int{4, 9, 15} {
		note := ""
		switch i {
		case 9:
			note = map[bool]string{true: "= predicted from cmdline + initrd", false: "!= PREDICTED"}[bytes.Equal(pcrs[9], p9)]
		case 15:
			note = map[bool]string{true: "= predicted from binary + config", false: "!= PREDICTED"}[bytes.Equal(pcrs[15], p15)]
		case 4:
			note = "(kernel as QEMU loaded it: taken from this boot)"
		}
		step("  measured PCR %2d = %x %s", i, pcrs[i], note)
	}
	if !bytes.Equal(pcrs[9], p9) || !bytes.Equal(pcrs[15], p15) {
		return nil, errors.New("measured PCRs differ from the predictions")
	}
	if err := v.Publish(ctx, "demo.1", initrd, map[int][]byte{4: pcrs[4], 9: p9, 15: p15}); err != nil {
		return nil, err
	}
	step("release demo.1 signed and published (PCR 4, 9, 15)")
	ok = true
	return m, nil
}

// bootDiskImage builds the release disk image (UKI on the ESP, the store
// partition as the data disk), predicts and publishes its release signed by
// 2 of 3 officers before anything boots, then boots the disk through the
// firmware and shows the measured PCRs beside the manifest's.
func bootDiskImage(ctx context.Context, dir string, img qemu.Image, initrd []byte, v *qemu.Verifier, tpm *qemu.TPM, console io.Writer) (*qemu.Machine, error) {
	kernel, err := os.ReadFile(img.Kernel)
	if err != nil {
		return nil, err
	}
	diskPath := filepath.Join(dir, "vm", "disk.img")
	t0 := time.Now()
	r, err := images.Build(images.Options{
		Kernel: kernel, Initrd: initrd, Cmdline: qemu.DefaultAppend,
		OSRelease: "ID=embassy\nNAME=\"Embassy appliance\"\nVERSION_ID=demo.1\n",
		Disk:      disk.Options{DataSize: 256 << 20, Seed: "embassy-demo", Epoch: 1700000000},
		DiskPath:  diskPath,
	})
	if err != nil {
		return nil, err
	}
	step("disk image %s: UKI %.1f MiB on the ESP + 256 MiB embassy-store partition, built in %v",
		diskPath, float64(len(r.UKI))/(1<<20), time.Since(t0).Round(time.Millisecond))
	p15, err := predict.InitramfsPCR(initrd)
	if err != nil {
		return nil, err
	}
	man, err := r.Manifest(images.ManifestOptions{Release: "demo.1", Created: time.Unix(1700000000, 0),
		RuntimePCRs: map[int][]byte{tpmpkg.PCRAppliance: p15}})
	if err != nil {
		return nil, err
	}
	var pubs []ed25519.PublicKey
	var privs []ed25519.PrivateKey
	for range 3 {
		pub, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, err
		}
		pubs, privs = append(pubs, pub), append(privs, priv)
	}
	if err := v.AddReleaseOfficers(ctx, 2, pubs...); err != nil {
		return nil, err
	}
	env, err := release.NewEnvelope(man)
	if err != nil {
		return nil, err
	}
	env.Sign(privs[0])
	env.Sign(privs[2])
	digest, err := v.PublishEnvelope(ctx, env)
	if err != nil {
		return nil, err
	}
	want, err := man.PCRValues()
	if err != nil {
		return nil, err
	}
	step("release demo.1 (%.16s…) predicted from the files, signed by officers 1 and 3 of 3 (threshold 2), published: PCR 4, 9, 11, 12, 13, 15", digest)

	m, err := qemu.Start(ctx, qemu.Config{
		Dir: filepath.Join(dir, "vm"), BootDisk: diskPath, TPMState: tpm.StateDir,
		Forwards: []qemu.Forward{{GuestPort: nbdPort}}, Console: console,
	})
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			m.Close()
		}
	}()
	step("QEMU started (q35, TCG, OVMF, swtpm) booting %s through the firmware (no -kernel); console: %s", filepath.Base(diskPath), m.ConsolePath())
	pcrs, err := measuredPCRs(m)
	if err != nil {
		return nil, err
	}
	idx := make([]int, 0, len(want))
	for i := range want {
		idx = append(idx, int(i))
	}
	sort.Ints(idx)
	for _, i := range idx {
		note := map[bool]string{true: "= manifest", false: "!= MANIFEST"}[bytes.Equal(pcrs[i], want[uint32(i)])]
		step("  measured PCR %2d = %x %s", i, pcrs[i], note)
	}
	if l, err := m.WaitForLine(regexp.MustCompile(`msg="data disk"`), time.Minute); err == nil {
		step("data disk: %s", l.Text[bytes.Index([]byte(l.Text), []byte("device=")):])
	}
	ok = true
	return m, nil
}

// measuredPCRs waits for the appliance to report its PCRs after measuring
// itself.
func measuredPCRs(m *qemu.Machine) (map[int][]byte, error) {
	if l, err := m.WaitForLine(regexp.MustCompile(`msg="appliance program started"`), 5*time.Minute); err != nil {
		return nil, err
	} else {
		step("appliance program running (%.1fs after QEMU start)", l.At.Seconds())
	}
	if _, err := m.WaitForLine(regexp.MustCompile(`msg=pcr when="after measuring" index=15`), time.Minute); err != nil {
		return nil, err
	}
	return m.MeasuredPCRs(), nil
}
