// Command bareuinit is the trivial uinit of the baseline boot: it prints one
// line as soon as userspace runs and powers the machine off, so the harness
// can time a bare kernel boot to userspace.
package main

import (
	"fmt"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	// The kernel's uptime splits the harness's time into firmware and
	// kernel (BenchmarkBoot reads it).
	up := "?"
	if b, err := os.ReadFile("/proc/uptime"); err == nil {
		if f := strings.Fields(string(b)); len(f) > 0 {
			up = f[0] + "s"
		}
	}
	fmt.Fprintln(os.Stdout, "embassy-bare: userspace reached uptime="+up)
	// The serial console loses output printed right before power-off.
	time.Sleep(500 * time.Millisecond)
	unix.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
		fmt.Fprintln(os.Stderr, "embassy-bare: power off:", err)
	}
}
