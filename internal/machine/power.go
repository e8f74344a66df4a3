//go:build linux

package machine

import (
	"time"

	"golang.org/x/sys/unix"
)

// consoleDrain is how long to wait before a reset: output printed right
// before it is lost on the serial console.
const consoleDrain = 500 * time.Millisecond

// Reboot syncs and restarts the machine.
func Reboot() error {
	unix.Sync()
	time.Sleep(consoleDrain)
	return unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
}

// PowerOff syncs and powers the machine off.
func PowerOff() error {
	unix.Sync()
	time.Sleep(consoleDrain)
	return unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
}
