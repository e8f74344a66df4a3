package images_test

import (
	"context"
	"crypto"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dataembassy/embassy/initramfs"
	"github.com/dataembassy/embassy/internal/testenv"
	"github.com/dataembassy/embassy/qemu"
	attestpb "github.com/google/go-tpm-tools/proto/attest"
	tpmpb "github.com/google/go-tpm-tools/proto/tpm"
	tpmquote "github.com/google/go-tpm-tools/quote"
	"github.com/google/go-tpm-tools/server"
	"github.com/google/go-tpm/legacy/tpm2"
	"github.com/u-root/u-root/pkg/cpio"
	"google.golang.org/protobuf/proto"
)

// The images tests boot disk images with the qemu harness and a guest init
// (images/internal/pcrdump) that prints the PCRs and the firmware event log,
// to prove that predictions equal what firmware, systemd-stub and Linux
// really measure.

// kernelPath returns the cached guest kernel fetched by scripts/fetch-kernel.sh.
func kernelPath(t *testing.T) string {
	t.Helper()
	k, err := initramfs.CachedKernel()
	if err != nil {
		t.Fatal(err)
	}
	return k.Vmlinuz
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
		initrdData, initrdErr = testenv.Newc(recs...)
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
	// Attestation is the serialized go-tpm-tools Attestation the guest
	// printed when booted with pcrdump.nonce= (nil otherwise).
	Attestation []byte
	// Console is the whole serial output.
	Console string
}

// bootDisk boots the disk image through OVMF (no -kernel) with the qemu
// harness and a fresh swtpm, and returns what pcrdump printed.
func bootDisk(t *testing.T, diskPath string) *bootResult {
	t.Helper()
	return bootDiskWith(t, diskPath, nil)
}

// secureBootFirmware switches a machine to Debian's Secure Boot OVMF build
// with the "snakeoil" test keys enrolled (PK = KEK = db = the certificate in
// /usr/share/ovmf/PkKek-1-snakeoil.pem); that build needs SMM.
func secureBootFirmware(cfg *qemu.Config) {
	cfg.OVMFCode = "/usr/share/OVMF/OVMF_CODE_4M.snakeoil.fd"
	cfg.OVMFVars = snakeoilVars
	cfg.ExtraArgs = append(cfg.ExtraArgs, "-machine", "smm=on", "-global", "driver=cfi.pflash01,property=secure,value=on")
}

const snakeoilVars = "/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd"

// startDisk starts a machine booting diskPath; mod may adjust the config.
func startDisk(t *testing.T, diskPath string, mod func(*qemu.Config)) *qemu.Machine {
	t.Helper()
	cfg := qemu.Config{
		BootDisk:  diskPath,
		NoNetwork: true,
		MemoryMiB: 768,
		QEMU:      testenv.Tool(t, "qemu-system-x86_64"),
		SWTPM:     testenv.Tool(t, "swtpm"),
	}
	if mod != nil {
		mod(&cfg)
	}
	// Unix socket paths must stay short: not under t.TempDir().
	dir, err := os.MkdirTemp("", "imgboot")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cfg.Dir = dir
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	m, err := qemu.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// bootDiskWith is bootDisk with a config modifier.
func bootDiskWith(t *testing.T, diskPath string, mod func(*qemu.Config)) *bootResult {
	t.Helper()
	m := startDisk(t, diskPath, mod)
	var err error
	_, waitErr := m.WaitForLine(regexp.MustCompile(`PCRDUMP-DONE`), 4*time.Minute)

	res := &bootResult{PCRs: map[int][]byte{}}
	var console, logB64, attB64 strings.Builder
	for _, l := range m.Lines() {
		line := strings.TrimRight(l.Text, "\r")
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
		case "PCRDUMP-ATT":
			if len(f) == 2 {
				attB64.WriteString(f[1])
			}
		case "PCRDUMP-CMDLINE":
			res.Cmdline = strings.TrimSpace(strings.TrimPrefix(line[i:], "PCRDUMP-CMDLINE"))
		}
	}
	res.Console = console.String()
	if waitErr != nil {
		t.Fatalf("guest did not finish: %v\nconsole:\n%s", waitErr, tail(res.Console, 4000))
	}
	// The event log is for diagnostics only; the PCR values decide.
	if res.EventLog, err = base64.StdEncoding.DecodeString(logB64.String()); err != nil {
		t.Logf("event log unreadable (console line garbled?): %v", err)
	}
	if attB64.Len() > 0 {
		if res.Attestation, err = base64.StdEncoding.DecodeString(attB64.String()); err != nil {
			t.Fatalf("attestation base64: %v", err)
		}
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

// verifyQuote checks the guest's attestation the way the verifier does: the
// SHA-256 quote verifies with the attestation key over nonce, and the
// firmware event log replays to the quoted PCRs (go-tpm-tools server). It
// returns the quoted PCR values. The AK is taken from the attestation
// itself: these tests check measurements, not AK enrollment.
func verifyQuote(t *testing.T, raw, nonce []byte) map[int][]byte {
	t.Helper()
	if raw == nil {
		t.Fatal("guest printed no attestation")
	}
	var att attestpb.Attestation
	if err := proto.Unmarshal(raw, &att); err != nil {
		t.Fatalf("attestation: %v", err)
	}
	pub, err := tpm2.DecodePublic(att.GetAkPub())
	if err != nil {
		t.Fatalf("AK public: %v", err)
	}
	ak, err := pub.Key()
	if err != nil {
		t.Fatal(err)
	}
	var quote *tpmpb.Quote
	for _, q := range att.GetQuotes() {
		if tpm2.Algorithm(q.GetPcrs().GetHash()) == tpm2.AlgSHA256 {
			quote = q
		}
	}
	if quote == nil {
		t.Fatal("no SHA-256 quote")
	}
	if err := tpmquote.Verify(quote, ak, nonce); err != nil {
		t.Fatalf("quote does not verify over the nonce: %v", err)
	}
	att.Quotes = []*tpmpb.Quote{quote}
	if _, err := server.VerifyAttestation(&att, server.VerifyOpts{
		Nonce:                         nonce,
		TrustedAKs:                    []crypto.PublicKey{ak},
		HashAlgo:                      tpm2.AlgSHA256,
		Loader:                        server.UnsupportedLoader,
		AllowEFIAppBeforeCallingEvent: true,
		AllowEmptySBVar:               true,
	}); err != nil {
		t.Fatalf("event log does not replay to the quoted PCRs: %v", err)
	}
	pcrs := map[int][]byte{}
	for k, v := range quote.GetPcrs().GetPcrs() {
		pcrs[int(k)] = v
	}
	return pcrs
}
