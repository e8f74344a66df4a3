package qemu_test

import (
	"context"
	"os/exec"
	"regexp"
	"testing"
	"time"

	"github.com/dataembassy/embassy/internal/testenv"
	"github.com/dataembassy/embassy/qemu"
)

// BenchmarkBoot boots, side by side in each iteration, the bare image (u-root
// init + a uinit that prints one line) and the appliance, and reports:
//
//   - bare-userspace-s: QEMU start to the bare uinit's line;
//   - appliance-nbd-s: QEMU start to the first successful NBD answer
//     (nbdinfo over TLS through the port forward) from the attested,
//     unlocked appliance;
//   - extra-s: the difference (target: under 5 s);
//   - initrd-MiB: the appliance initramfs, compressed (target: under 15).
//
// A reference boot before the timed iterations provisions the disk and
// learns PCR 4 for the release. Run with: go test -run XXX -bench Boot
// -benchtime 1x ./qemu
func BenchmarkBoot(b *testing.B) {
	bare, err := qemu.BuildImage(context.Background(), qemu.ImageOptions{
		ModuleDir: moduleRoot(b), OutDir: b.TempDir(),
		UinitPackage: "github.com/dataembassy/embassy/qemu/internal/bareuinit",
	})
	if err != nil {
		b.Fatal(err)
	}
	c := newChain(b, 0)
	nbdinfo := testenv.Tool(b, "nbdinfo")

	// Reference boot: publish the release, provision the disk.
	ref := c.boot(b, "")
	c.publish(b, ref)
	if _, err := ref.WaitForLine(regexp.MustCompile(`msg="serving NBD"`), 300*time.Second); err != nil {
		b.Fatal(err)
	}
	ref.Close()

	var bareSum, nbdSum time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		m := startT(b, qemu.Config{Dir: b.TempDir(), Kernel: bare.Kernel, Initrd: bare.Initrd, Append: qemu.DefaultAppend, NoNetwork: true})
		l, err := m.WaitForLine(regexp.MustCompile(`^embassy-bare: userspace reached`), 300*time.Second)
		if err != nil {
			b.Fatal(err)
		}
		bareSum += l.At
		m.Close()

		m = c.boot(b, "")
		c.waitServing(b, m, 0)
		for {
			cmd := exec.Command(nbdinfo, "--size", c.uri(m))
			cmd.Env = testenv.SystemPathEnv()
			if cmd.Run() == nil {
				break
			}
			if time.Since(m.StartedAt()) > 300*time.Second {
				b.Fatal("no NBD answer")
			}
			time.Sleep(50 * time.Millisecond)
		}
		nbdSum += time.Since(m.StartedAt())
		m.Close()
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(bareSum.Seconds()/n, "bare-userspace-s")
	b.ReportMetric(nbdSum.Seconds()/n, "appliance-nbd-s")
	b.ReportMetric((nbdSum-bareSum).Seconds()/n, "extra-s")
	b.ReportMetric(float64(c.img.Initramfs.Size)/(1<<20), "initrd-MiB")
	b.ReportMetric(float64(bare.Initramfs.Size)/(1<<20), "bare-initrd-MiB")
}
