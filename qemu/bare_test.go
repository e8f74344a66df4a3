package qemu_test

import (
	"context"
	"errors"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/dataembassy/embassy/internal/testenv"
	"github.com/dataembassy/embassy/qemu"
)

// tools fails the test unless every program the harness runs is installed.
func tools(t testing.TB) {
	t.Helper()
	testenv.Tool(t, "qemu-system-x86_64")
	testenv.Tool(t, "swtpm")
}

func moduleRoot(t testing.TB) string {
	t.Helper()
	root, err := qemu.ModuleRoot(".")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// startT starts a machine and stops it when the test ends.
func startT(t testing.TB, cfg qemu.Config) *qemu.Machine {
	t.Helper()
	if cfg.Dir == "" {
		cfg.Dir = t.TempDir()
	}
	m, err := qemu.Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		m.Close()
		if t.Failed() {
			for _, l := range m.Lines() {
				t.Logf("console %6.2fs | %s", l.At.Seconds(), l.Text)
			}
		}
	})
	return m
}

// TestBareBoot boots the kernel with a uinit that only prints a line and
// powers off: the baseline the appliance's boot time is compared with.
func TestBareBoot(t *testing.T) {
	tools(t)
	img, err := qemu.BuildImage(context.Background(), qemu.ImageOptions{
		ModuleDir:    moduleRoot(t),
		OutDir:       t.TempDir(),
		UinitPackage: "github.com/dataembassy/embassy/qemu/internal/bareuinit",
	})
	if err != nil {
		t.Fatal(err)
	}
	m := startT(t, qemu.Config{Kernel: img.Kernel, Initrd: img.Initrd, Append: qemu.DefaultAppend, NoNetwork: true})
	l, err := m.WaitForLine(regexp.MustCompile(`^embassy-bare: userspace reached`), 120*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("bare boot: userspace %.2fs after QEMU start (initrd %d bytes)", l.At.Seconds(), img.Initramfs.Size)
	if err := m.Wait(30 * time.Second); err != nil {
		t.Fatalf("guest did not power off cleanly: %v", err)
	}
}

// TestStartFailureReported checks that a QEMU that cannot boot (no such
// kernel) ends WaitForLine with ErrExited and QEMU's message, not a hang.
func TestStartFailureReported(t *testing.T) {
	tools(t)
	m := startT(t, qemu.Config{Kernel: "/nonexistent/vmlinuz", NoNetwork: true, NoTPM: true})
	_, err := m.WaitForLine(regexp.MustCompile(`never printed`), 60*time.Second)
	if !errors.Is(err, qemu.ErrExited) {
		t.Fatalf("WaitForLine = %v, want ErrExited", err)
	}
	if !strings.Contains(err.Error(), "nonexistent") {
		t.Errorf("error %q does not carry QEMU's message", err)
	}
	if err := m.Wait(time.Second); err == nil {
		t.Error("Wait reported a clean exit for a failed start")
	}
}
