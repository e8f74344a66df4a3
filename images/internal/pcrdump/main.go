// Command pcrdump is a tiny Linux init for the images package's QEMU tests:
// it prints the guest's SHA-256 PCR values and the firmware event log to the
// console, then powers the machine off. It lets the tests compare predicted
// PCRs with what OVMF, systemd-stub and the kernel really measured, without
// depending on the appliance.
package main

import (
	"encoding/base64"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"
)

func main() {
	mount := func(src, dst, typ string) {
		os.MkdirAll(dst, 0o755)
		if err := syscall.Mount(src, dst, typ, 0, ""); err != nil {
			fmt.Printf("pcrdump: mount %s: %v\n", dst, err)
		}
	}
	mount("proc", "/proc", "proc")
	mount("sysfs", "/sys", "sysfs")
	mount("securityfs", "/sys/kernel/security", "securityfs")
	// Keep kernel messages off the console so they cannot split our lines.
	if err := os.WriteFile("/proc/sys/kernel/printk", []byte("1"), 0o644); err != nil {
		fmt.Printf("pcrdump: quiet console: %v\n", err)
	}

	const pcrDir = "/sys/class/tpm/tpm0/pcr-sha256"
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(pcrDir); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	for i := range 24 {
		b, err := os.ReadFile(fmt.Sprintf("%s/%d", pcrDir, i))
		if err != nil {
			fmt.Printf("PCRDUMP-ERROR pcr %d: %v\n", i, err)
			continue
		}
		fmt.Printf("PCRDUMP %d %s\n", i, strings.ToLower(strings.TrimSpace(string(b))))
	}
	log, err := os.ReadFile("/sys/kernel/security/tpm0/binary_bios_measurements")
	if err != nil {
		fmt.Printf("PCRDUMP-ERROR eventlog: %v\n", err)
	}
	enc := base64.StdEncoding.EncodeToString(log)
	for len(enc) > 0 {
		n := min(len(enc), 96)
		fmt.Printf("PCRDUMP-LOG %s\n", enc[:n])
		enc = enc[n:]
	}
	if cmdline, err := os.ReadFile("/proc/cmdline"); err == nil {
		fmt.Printf("PCRDUMP-CMDLINE %s\n", strings.TrimSpace(string(cmdline)))
	}
	fmt.Println("PCRDUMP-DONE")
	// Let the serial console drain before the machine disappears.
	time.Sleep(2 * time.Second)
	syscall.Sync()
	syscall.Reboot(syscall.LINUX_REBOOT_CMD_POWER_OFF)
	select {}
}
