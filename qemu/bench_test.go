package qemu_test

import (
	"context"
	"os/exec"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/dataembassy/embassy/initramfs"
	"github.com/dataembassy/embassy/internal/testenv"
	"github.com/dataembassy/embassy/qemu"
)

var (
	bareLine   = regexp.MustCompile(`^embassy-bare: userspace reached uptime=([0-9.]+)s`)
	startLine  = regexp.MustCompile(`msg="appliance program started" uptime_at_start=([0-9.]+)s`)
	servingRe  = regexp.MustCompile(`msg="serving NBD"`)
	bootWithin = 300 * time.Second
)

// bootTimes is one boot's marker line: At is when it reached the host
// (from QEMU start), Uptime the guest kernel's uptime printed on it. Only At
// is reported: under TCG the guest's early clock (jiffies before the TSC is
// calibrated) runs slow, so At-Uptime is not the firmware's share; Uptime
// is logged for the record.
type bootTimes struct{ At, Uptime time.Duration }

func waitMarker(b *testing.B, m *qemu.Machine, re *regexp.Regexp) bootTimes {
	b.Helper()
	l, err := m.WaitForLine(re, bootWithin)
	if err != nil {
		b.Fatal(err)
	}
	up, err := strconv.ParseFloat(re.FindStringSubmatch(l.Text)[1], 64)
	if err != nil {
		b.Fatalf("uptime in %q: %v", l.Text, err)
	}
	return bootTimes{At: l.At, Uptime: time.Duration(up * float64(time.Second))}
}

// BenchmarkBoot boots, side by side in each iteration:
//
//  1. the bare image (u-root init + a uinit that prints one line with the
//     kernel's uptime) with no disk and no NIC: bare-min-s;
//  2. the same bare image on the appliance's virtual hardware (a virtio data
//     disk of the same size, the virtio NIC with the same port forward, the
//     TPM, the same memory, CPU and machine flags): bare-hw-s. This is the
//     fair baseline: the bare kernel does not load the virtio drivers (the
//     appliance loads them as modules, counted in its own time), but the
//     firmware binds the same devices;
//  3. the appliance image built with an uncompressed initrd, on the same
//     hardware, up to the moment its program starts (it would then fail
//     attestation: its PCR 9 is not published): app-start-raw-s;
//  4. the appliance (gzip initrd) up to the first successful NBD answer
//     (nbdinfo over TLS through the port forward) from the attested,
//     unlocked appliance: appliance-nbd-s.
//
// extra-s is appliance-nbd-s - bare-hw-s (target: under 5 s); extra-min-s
// is the same against the minimal bare boot. The appliance boot is split at
// its program's first line: app-start-s (QEMU start to "appliance program
// started": firmware, kernel, initrd, u-root init, reading the config),
// app-serving-s (that line to "serving NBD": measure, modules, network,
// attest, unlock, open the store) and nbd-answer-s ("serving NBD" to
// nbdinfo's first answer). initrd-MiB, initrd-raw-MiB and bare-initrd-MiB
// are the archives' sizes (target: under 15).
//
// A reference boot before the timed iterations provisions the disk and
// learns PCR 4 for the release. Run with:
// go test -run '^$' -bench BenchmarkBoot -benchtime 1x ./qemu
func BenchmarkBoot(b *testing.B) {
	ctx := context.Background()
	bare, err := qemu.BuildImage(ctx, qemu.ImageOptions{
		ModuleDir: moduleRoot(b), OutDir: b.TempDir(),
		UinitPackage: "github.com/dataembassy/embassy/qemu/internal/bareuinit",
	})
	if err != nil {
		b.Fatal(err)
	}
	c := newChain(b, 0)
	raw, err := qemu.BuildImage(ctx, qemu.ImageOptions{
		ModuleDir: moduleRoot(b), OutDir: b.TempDir(), Config: c.config,
		Modules: []string{"virtio_pci", "virtio_blk", "virtio_net"}, Name: "initrd.cpio",
		Compression: initramfs.CompressNone,
	})
	if err != nil {
		b.Fatal(err)
	}
	nbdinfo := testenv.Tool(b, "nbdinfo")
	// The appliance's hardware, minus its TPM state and disk contents.
	sameHW := func(initrd string) qemu.Config {
		return qemu.Config{
			Dir: b.TempDir(), Kernel: bare.Kernel, Initrd: initrd, Append: qemu.DefaultAppend,
			DataDisk: dataDisk(b, 256<<20), Forwards: []qemu.Forward{{GuestPort: nbdPort}},
		}
	}

	// Reference boot: publish the release, provision the disk.
	ref := c.boot(b, "")
	c.publish(b, ref)
	if _, err := ref.WaitForLine(servingRe, bootWithin); err != nil {
		b.Fatal(err)
	}
	ref.Close()

	var bareMin, bareHW, rawStart, appStart bootTimes
	var serving, nbd, appAnswer time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		m := startT(b, qemu.Config{Dir: b.TempDir(), Kernel: bare.Kernel, Initrd: bare.Initrd, Append: qemu.DefaultAppend, NoNetwork: true})
		t := waitMarker(b, m, bareLine)
		bareMin.At, bareMin.Uptime = bareMin.At+t.At, bareMin.Uptime+t.Uptime
		m.Close()

		m = startT(b, sameHW(bare.Initrd))
		t = waitMarker(b, m, bareLine)
		bareHW.At, bareHW.Uptime = bareHW.At+t.At, bareHW.Uptime+t.Uptime
		m.Close()

		m = startT(b, sameHW(raw.Initrd))
		t = waitMarker(b, m, startLine)
		rawStart.At, rawStart.Uptime = rawStart.At+t.At, rawStart.Uptime+t.Uptime
		m.Close()

		m = c.boot(b, "")
		t = waitMarker(b, m, startLine)
		appStart.At, appStart.Uptime = appStart.At+t.At, appStart.Uptime+t.Uptime
		s := c.waitServing(b, m, 0)
		serving += s.At - t.At
		for {
			cmd := exec.Command(nbdinfo, "--size", c.uri(m))
			cmd.Env = testenv.SystemPathEnv()
			if cmd.Run() == nil {
				break
			}
			if time.Since(m.StartedAt()) > bootWithin {
				b.Fatal("no NBD answer")
			}
			time.Sleep(20 * time.Millisecond)
		}
		answered := time.Since(m.StartedAt())
		nbd += answered
		appAnswer += answered - s.At
		m.Close()
	}
	b.StopTimer()
	b.Logf("guest uptime at the marker, mean (slow early clock, for the record): bare-min %v, bare-hw %v, appliance %v, appliance raw initrd %v",
		bareMin.Uptime/time.Duration(b.N), bareHW.Uptime/time.Duration(b.N), appStart.Uptime/time.Duration(b.N), rawStart.Uptime/time.Duration(b.N))
	n := float64(b.N)
	sec := func(d time.Duration) float64 { return d.Seconds() / n }
	b.ReportMetric(sec(bareMin.At), "bare-min-s")
	b.ReportMetric(sec(bareHW.At), "bare-hw-s")
	b.ReportMetric(sec(nbd), "appliance-nbd-s")
	b.ReportMetric(sec(nbd-bareHW.At), "extra-s")
	b.ReportMetric(sec(nbd-bareMin.At), "extra-min-s")
	b.ReportMetric(sec(appStart.At), "app-start-s")
	b.ReportMetric(sec(rawStart.At), "app-start-raw-s")
	b.ReportMetric(sec(serving), "app-serving-s")
	b.ReportMetric(sec(appAnswer), "nbd-answer-s")
	b.ReportMetric(float64(c.img.Initramfs.Size)/(1<<20), "initrd-MiB")
	b.ReportMetric(float64(raw.Initramfs.Size)/(1<<20), "initrd-raw-MiB")
	b.ReportMetric(float64(bare.Initramfs.Size)/(1<<20), "bare-initrd-MiB")
}
