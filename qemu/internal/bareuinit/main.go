// Command bareuinit is the trivial uinit of the baseline boot: it prints one
// line as soon as userspace runs and powers the machine off, so the harness
// can time a bare kernel boot to userspace.
package main

import (
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	fmt.Fprintln(os.Stdout, "embassy-bare: userspace reached")
	// The serial console loses output printed right before power-off.
	time.Sleep(500 * time.Millisecond)
	unix.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
		fmt.Fprintln(os.Stderr, "embassy-bare: power off:", err)
	}
}
