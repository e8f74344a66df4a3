// Command embassy-demo runs the whole Embassy chain on this machine: it
// starts a verifier with its SQLite state in a local directory,
// manufactures a software TPM and enrolls it, builds the appliance image,
// publishes its release (predicted PCR 9 and 15, PCR 4 from the booted
// machine), boots the appliance under QEMU (OVMF, swtpm, TCG), waits until
// it serves NBD over mutual TLS, writes and reads data through nbdcopy,
// prints what happened and shuts everything down.
//
// `make demo` runs it after installing the dependencies.
package main

import (
	"bytes"
	"context"
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
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, *dir, *sizeMiB, *verbose, *buildOnly); err != nil {
		fmt.Fprintln(os.Stderr, "embassy-demo: FAILED:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, dir string, sizeMiB int, verbose, buildOnly bool) error {
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

	v, err := qemu.StartVerifier(ctx, qemu.VerifierOptions{Dir: filepath.Join(dir, "verifier"), Lease: 2 * time.Minute})
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

	config, err := qemu.ApplianceConfig(qemu.ConfigOptions{
		Identity: applianceID, VerifierURL: v.GuestURL, VerifierCAPEM: v.CAPEM,
		ClientCAPEM: clientCA, ClientIdentity: clientID,
	})
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

	disk := filepath.Join(dir, "vm", "data.img")
	if err := os.WriteFile(disk, nil, 0o600); err != nil {
		return err
	}
	if err := os.Truncate(disk, 256<<20); err != nil {
		return err
	}
	var console io.Writer
	if verbose {
		console = os.Stdout
	}
	m, err := qemu.Start(ctx, qemu.Config{
		Dir: filepath.Join(dir, "vm"), Kernel: img.Kernel, Initrd: img.Initrd, Append: qemu.DefaultAppend,
		DataDisk: disk, TPMState: tpm.StateDir, Forwards: []qemu.Forward{{GuestPort: nbdPort}}, Console: console,
	})
	if err != nil {
		return err
	}
	defer m.Close()
	step("QEMU started (q35, TCG, OVMF, swtpm, 256 MiB data disk); console: %s", m.ConsolePath())

	wait := func(re string, d time.Duration) (qemu.Line, error) {
		return m.WaitForLine(regexp.MustCompile(re), d)
	}
	if l, err := wait(`msg="appliance program started"`, 5*time.Minute); err != nil {
		return err
	} else {
		step("appliance program running (%.1fs after QEMU start)", l.At.Seconds())
	}
	if _, err := wait(`msg=pcr when="after measuring" index=15`, time.Minute); err != nil {
		return err
	}
	pcrs := m.MeasuredPCRs()
	initrd, err := os.ReadFile(img.Initrd)
	if err != nil {
		return err
	}
	binary, err := os.ReadFile(filepath.Join(dir, "image", "embassy-appliance"))
	if err != nil {
		return err
	}
	p9 := qemu.PredictPCR9(qemu.DefaultAppend, initrd)
	p15, err := qemu.PredictPCR15(binary, config)
	if err != nil {
		return err
	}
	idx := make([]int, 0, len(pcrs))
	for i := range pcrs {
		idx = append(idx, i)
	}
	sort.Ints(idx)
	for _, i := range idx {
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
		return errors.New("measured PCRs differ from the predictions")
	}
	if err := v.Publish(ctx, "demo.1", initrd, map[int][]byte{4: pcrs[4], 9: p9, 15: p15}); err != nil {
		return err
	}
	step("release demo.1 signed and published (PCR 4, 9, 15)")

	served, err := wait(`msg="serving NBD"`, 5*time.Minute)
	if err != nil {
		return err
	}
	if l, err := wait(`msg="verifier released the key"`, time.Second); err == nil {
		step("verifier decision: %s", l.Text[bytes.Index([]byte(l.Text), []byte("msg=")):])
	}
	step("SERVING NBD over mutual TLS %.1fs after QEMU start", served.At.Seconds())
	// Clients pin the server identity the appliance reported under a
	// quote, not the one on the console (which runs in the host country).
	if _, err := wait(`msg="server identity reported to the verifier"`, 2*time.Minute); err != nil {
		return err
	}
	pemCert, fp, err := v.ServerIdentity(ctx, applianceID)
	if err != nil {
		return err
	}
	if _, consoleFP, err := m.ServerIdentity(0); err != nil || consoleFP != fp {
		return fmt.Errorf("console shows server identity %s (%v), the verifier recorded %s", consoleFP, err, fp)
	}
	if err := os.WriteFile(filepath.Join(certs, "ca-cert.pem"), pemCert, 0o600); err != nil {
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
