package images_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dataembassy/embassy/internal/testenv"
	"github.com/u-root/u-root/pkg/cpio"
)

// This file is a minimal QEMU boot helper for the images tests: swtpm +
// OVMF + qemu-system booting a disk image from its ESP (no -kernel), with a
// guest init (images/internal/pcrdump) that prints the PCRs and the firmware
// event log. It exists only because the images tests must prove what firmware
// measures; it is not a general harness.

const (
	ovmfCode = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	ovmfVars = "/usr/share/OVMF/OVMF_VARS_4M.fd"
)

// kernelPath returns the cached guest kernel fetched by scripts/fetch-kernel.sh.
func kernelPath(t *testing.T) string {
	t.Helper()
	home, err := os.UserHomeDir()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(home, ".cache/embassy/kernel/current/vmlinuz")
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("guest kernel missing (run scripts/fetch-kernel.sh): %v", err)
	}
	return p
}

var (
	initrdOnce sync.Once
	initrdData []byte
	initrdErr  error
)

// pcrdumpInitrd builds (once per test binary) a newc initramfs whose /init
// is images/internal/pcrdump.
func pcrdumpInitrd(t *testing.T) []byte {
	t.Helper()
	initrdOnce.Do(func() {
		dir, err := os.MkdirTemp("", "pcrdump")
		if err != nil {
			initrdErr = err
			return
		}
		defer os.RemoveAll(dir)
		bin := filepath.Join(dir, "init")
		cmd := exec.Command("go", "build", "-trimpath", "-o", bin, "github.com/dataembassy/embassy/images/internal/pcrdump")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOAMD64=v1")
		if out, err := cmd.CombinedOutput(); err != nil {
			initrdErr = fmt.Errorf("go build pcrdump: %v\n%s", err, out)
			return
		}
		b, err := os.ReadFile(bin)
		if err != nil {
			initrdErr = err
			return
		}
		recs := []cpio.Record{
			cpio.Directory("dev", 0o755),
			cpio.CharDev("dev/console", 0o600, 5, 1),
			cpio.Directory("proc", 0o755),
			cpio.Directory("sys", 0o755),
			cpio.StaticFile("init", string(b), 0o755),
		}
		cpio.MakeAllReproducible(recs)
		var buf bytes.Buffer
		w := cpio.Newc.Writer(&buf)
		if err := cpio.WriteRecords(w, recs); err != nil {
			initrdErr = err
			return
		}
		if err := cpio.WriteTrailer(w); err != nil {
			initrdErr = err
			return
		}
		initrdData = buf.Bytes()
	})
	if initrdErr != nil {
		t.Fatal(initrdErr)
	}
	return initrdData
}

// bootResult is what the guest reported.
type bootResult struct {
	// PCRs maps PCR index to its SHA-256 bank value.
	PCRs map[int][]byte
	// EventLog is the raw TCG2 firmware event log.
	EventLog []byte
	// Cmdline is /proc/cmdline in the guest.
	Cmdline string
	// Console is the whole serial output.
	Console string
}

// bootDisk boots the disk image under OVMF with a fresh swtpm and returns
// what pcrdump printed. withCDROM keeps q35's default empty CD-ROM drive,
// which OVMF tries (and fails) before the disk.
func bootDisk(t *testing.T, diskPath string, withCDROM bool) *bootResult {
	t.Helper()
	qemu := testenv.Tool(t, "qemu-system-x86_64")
	swtpm := testenv.Tool(t, "swtpm")
	for _, f := range []string{ovmfCode, ovmfVars} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("OVMF missing (install ovmf): %v", err)
		}
	}
	// Unix socket paths must stay short.
	dir, err := os.MkdirTemp("", "imgboot")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	vars := filepath.Join(dir, "vars.fd")
	b, err := os.ReadFile(ovmfVars)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(vars, b, 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "tpm.sock")
	state := filepath.Join(dir, "tpm")
	if err := os.Mkdir(state, 0o700); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	t.Cleanup(cancel)
	tpm := exec.CommandContext(ctx, swtpm, "socket", "--tpm2", "--tpmstate", "dir="+state,
		"--ctrl", "type=unixio,path="+sock, "--log", "level=0")
	tpm.Stdout, tpm.Stderr = io.Discard, io.Discard
	if err := tpm.Start(); err != nil {
		t.Fatalf("start swtpm: %v", err)
	}
	t.Cleanup(func() { tpm.Process.Kill(); tpm.Wait() })
	for i := 0; ; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if i > 100 {
			t.Fatal("swtpm socket did not appear")
		}
		time.Sleep(50 * time.Millisecond)
	}

	args := []string{"-machine", "q35", "-m", "768", "-smp", "1", "-vga", "none"}
	if !withCDROM {
		// No default CD-ROM: OVMF's first boot attempt is the disk.
		args = append(args, "-nodefaults")
	}
	q := exec.CommandContext(ctx, qemu, append(args,
		"-display", "none", "-monitor", "none", "-serial", "stdio",
		"-no-reboot", "-net", "none",
		"-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+ovmfCode,
		"-drive", "if=pflash,format=raw,unit=1,file="+vars,
		"-drive", "if=virtio,format=raw,snapshot=on,file="+diskPath,
		"-chardev", "socket,id=chrtpm,path="+sock,
		"-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
		"-device", "tpm-crb,tpmdev=tpm0",
	)...)
	out, err := q.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	q.Stderr = &stderr
	if err := q.Start(); err != nil {
		t.Fatalf("start qemu: %v", err)
	}
	t.Cleanup(func() { q.Process.Kill(); q.Wait() })

	res := &bootResult{PCRs: map[int][]byte{}}
	var console, logB64 strings.Builder
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	done := false
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		console.WriteString(line + "\n")
		i := strings.Index(line, "PCRDUMP")
		if i < 0 {
			continue
		}
		f := strings.Fields(line[i:])
		switch f[0] {
		case "PCRDUMP":
			if len(f) != 3 {
				continue
			}
			n, err1 := strconv.Atoi(f[1])
			v, err2 := hex.DecodeString(f[2])
			if err1 == nil && err2 == nil {
				res.PCRs[n] = v
			}
		case "PCRDUMP-LOG":
			if len(f) == 2 {
				logB64.WriteString(f[1])
			}
		case "PCRDUMP-CMDLINE":
			res.Cmdline = strings.TrimSpace(strings.TrimPrefix(line[i:], "PCRDUMP-CMDLINE"))
		case "PCRDUMP-DONE":
			done = true
		}
		if done {
			break
		}
	}
	res.Console = console.String()
	if !done {
		q.Process.Kill()
		q.Wait()
		t.Fatalf("guest did not finish (ctx %v); qemu stderr:\n%s\nconsole:\n%s", ctx.Err(), stderr.String(), tail(res.Console, 4000))
	}
	res.EventLog, err = base64.StdEncoding.DecodeString(logB64.String())
	if err != nil {
		t.Fatalf("event log base64: %v", err)
	}
	if len(res.PCRs) != 24 {
		t.Fatalf("guest printed %d PCRs, want 24; console:\n%s", len(res.PCRs), tail(res.Console, 4000))
	}
	return res
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}

// describeLog renders a TCG2 crypto-agile event log (PCR, type, SHA-256
// digest, a short data excerpt) for failure messages.
func describeLog(t *testing.T, log []byte) string {
	t.Helper()
	var b strings.Builder
	defer func() {
		if r := recover(); r != nil {
			fmt.Fprintf(&b, "(event log truncated: %v)\n", r)
		}
	}()
	le := func(o, n int) uint64 {
		var v uint64
		for i := n - 1; i >= 0; i-- {
			v = v<<8 | uint64(log[o+i])
		}
		return v
	}
	// The first event is in the SHA-1 format: skip it.
	off := 32 + int(le(28, 4))
	sizes := map[uint64]int{0x4: 20, 0xb: 32, 0xc: 48, 0xd: 64, 0x12: 32}
	for off < len(log) {
		pcr, typ, n := le(off, 4), le(off+4, 4), int(le(off+8, 4))
		off += 12
		var sha256 []byte
		for range n {
			alg := le(off, 2)
			off += 2
			if alg == 0xb {
				sha256 = log[off : off+32]
			}
			off += sizes[alg]
		}
		size := int(le(off, 4))
		data := log[off+4 : off+4+size]
		off += 4 + size
		if pcr != 4 && pcr != 5 && pcr != 9 && pcr < 11 {
			continue
		}
		fmt.Fprintf(&b, "PCR%-2d %#010x %x %q\n", pcr, typ, sha256, data[:min(len(data), 48)])
	}
	return b.String()
}
