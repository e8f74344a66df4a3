// Command pcrdump is a tiny Linux init for the images package's QEMU tests:
// it prints the guest's SHA-256 PCR values and the firmware event log to the
// console and, given pcrdump.nonce=HEX on the kernel command line, a TPM
// attestation (quote of all PCRs by a fresh attestation key over the nonce,
// with the event log), then powers the machine off. It lets the tests compare
// predicted PCRs with what OVMF, systemd-stub and the kernel really measured,
// without depending on the appliance.
package main

import (
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/dataembassy/embassy/attest/tpm"
	"github.com/google/go-tpm-tools/client"
	"google.golang.org/protobuf/proto"
)

// printB64 prints b base64-encoded on lines tagged tag.
func printB64(tag string, b []byte) {
	enc := base64.StdEncoding.EncodeToString(b)
	for len(enc) > 0 {
		n := min(len(enc), 96)
		fmt.Printf("%s %s\n", tag, enc[:n])
		enc = enc[n:]
	}
}

// attest quotes all PCRs with a fresh RSA attestation key over nonce.
func attest(nonce, eventLog []byte) ([]byte, error) {
	if _, err := os.Stat(tpm.DefaultDevice); err != nil {
		// A bare initramfs has no device nodes: mount devtmpfs.
		if err := syscall.Mount("devtmpfs", "/dev", "devtmpfs", 0, ""); err != nil {
			return nil, fmt.Errorf("mount devtmpfs: %w", err)
		}
	}
	rw, err := tpm.Open(tpm.DefaultDevice)
	if err != nil {
		return nil, err
	}
	defer rw.Close()
	ak, err := client.AttestationKeyRSA(rw)
	if err != nil {
		return nil, fmt.Errorf("attestation key: %w", err)
	}
	defer ak.Close()
	att, err := ak.Attest(client.AttestOpts{Nonce: nonce, TCGEventLog: eventLog, SkipTeeAttestation: true})
	if err != nil {
		return nil, fmt.Errorf("quote: %w", err)
	}
	return proto.Marshal(att)
}

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
	printB64("PCRDUMP-LOG", log)
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err == nil {
		fmt.Printf("PCRDUMP-CMDLINE %s\n", strings.TrimSpace(string(cmdline)))
	}
	for _, f := range strings.Fields(string(cmdline)) {
		v, ok := strings.CutPrefix(f, "pcrdump.nonce=")
		if !ok {
			continue
		}
		nonce, err := hex.DecodeString(v)
		if err != nil {
			fmt.Printf("PCRDUMP-ERROR nonce: %v\n", err)
			break
		}
		att, err := attest(nonce, log)
		if err != nil {
			fmt.Printf("PCRDUMP-ERROR attest: %v\n", err)
			break
		}
		printB64("PCRDUMP-ATT", att)
	}
	fmt.Println("PCRDUMP-DONE")
	// Let the serial console drain before the machine disappears.
	time.Sleep(2 * time.Second)
	syscall.Sync()
	syscall.Reboot(syscall.LINUX_REBOOT_CMD_POWER_OFF)
	select {}
}
