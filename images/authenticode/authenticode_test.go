package authenticode_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/dataembassy/embassy/images/authenticode"
	"github.com/dataembassy/embassy/initramfs"
	"github.com/dataembassy/embassy/internal/testenv"
)

const stubPath = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"

func readFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (install systemd-boot-efi / run scripts/fetch-kernel.sh)", err)
	}
	return b
}

// signingKey writes a throwaway self-signed certificate and key for sbsign.
func signingKey(t *testing.T) (certPath, keyPath string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "embassy authenticode test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certPath, keyPath = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certPath, keyPath
}

var digestRE = regexp.MustCompile(`(?m)^(Current|Calculated) message digest\s*:\s*([0-9A-Fa-f]+)`)

// TestHashMatchesReferenceTools signs real EFI images with sbsign and checks
// our digest against the one osslsigncode finds in the signature and
// recomputes, for the unsigned and the signed file.
func TestHashMatchesReferenceTools(t *testing.T) {
	sbsign := testenv.Tool(t, "sbsign")
	ossl := testenv.Tool(t, "osslsigncode")
	cert, key := signingKey(t)
	kernel, err := initramfs.CachedKernel()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, path string }{
		// The stub has a COFF symbol table after its sections (trailing
		// data); Debian's kernel is already signed (certificate table).
		{"systemd-stub", stubPath},
		{"signed-kernel", kernel.Vmlinuz},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := readFile(t, tc.path)
			l, err := authenticode.Parse(img)
			if err != nil {
				t.Fatal(err)
			}
			signed := tc.path
			if l.CertSize == 0 {
				signed = filepath.Join(t.TempDir(), "signed.efi")
				if out, err := exec.Command(sbsign, "--key", key, "--cert", cert, "--output", signed, tc.path).CombinedOutput(); err != nil {
					t.Fatalf("sbsign: %v\n%s", err, out)
				}
			}
			out, err := exec.Command(ossl, "verify", "-in", signed).CombinedOutput()
			m := digestRE.FindAllStringSubmatch(string(out), -1)
			if len(m) != 2 {
				t.Fatalf("osslsigncode verify (%v) printed no digests:\n%s", err, out)
			}
			current, calculated := strings.ToLower(m[0][2]), strings.ToLower(m[1][2])
			if current != calculated {
				t.Fatalf("osslsigncode: signature digest %s != calculated %s", current, calculated)
			}
			sb := readFile(t, signed)
			got, err := authenticode.Hash(sb, crypto.SHA256)
			if err != nil {
				t.Fatal(err)
			}
			if hex.EncodeToString(got) != calculated {
				t.Errorf("signed image: Hash = %x, osslsigncode %s", got, calculated)
			}
			// sbsign pads the image to 8 bytes before appending the
			// certificate; the padding counts as trailing data, so the
			// unsigned digest matches only for an 8-byte aligned image.
			if l.CertSize == 0 && len(img)%8 == 0 {
				got, err := authenticode.Hash(img, crypto.SHA256)
				if err != nil {
					t.Fatal(err)
				}
				if hex.EncodeToString(got) != calculated {
					t.Errorf("unsigned image: Hash = %x, signed digest %s", got, calculated)
				}
			}
		})
	}
}

func TestChecksumMatchesLinker(t *testing.T) {
	img := readFile(t, stubPath)
	l, err := authenticode.Parse(img)
	if err != nil {
		t.Fatal(err)
	}
	want := binary.LittleEndian.Uint32(img[l.ChecksumOffset:])
	if want == 0 {
		t.Fatal("stub has no checksum to compare with")
	}
	if got := authenticode.Checksum(img, l.ChecksumOffset); got != want {
		t.Errorf("Checksum = %#x, linker wrote %#x", got, want)
	}
}

// TestHashIgnoresChecksumAndCertEntry: changing the checksum field does not
// change the digest; changing a section byte does.
func TestHashIgnoresChecksumAndCertEntry(t *testing.T) {
	img := readFile(t, stubPath)
	l, err := authenticode.Parse(img)
	if err != nil {
		t.Fatal(err)
	}
	base, err := authenticode.Hash(img, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	mod := append([]byte(nil), img...)
	mod[l.ChecksumOffset] ^= 0xff
	if h, _ := authenticode.Hash(mod, crypto.SHA256); hex.EncodeToString(h) != hex.EncodeToString(base) {
		t.Error("checksum field changed the digest")
	}
	mod = append([]byte(nil), img...)
	mod[l.Sections[0].Offset+7] ^= 0x01
	if h, _ := authenticode.Hash(mod, crypto.SHA256); hex.EncodeToString(h) == hex.EncodeToString(base) {
		t.Error("a changed section byte left the digest unchanged")
	}
}

func TestParseRejectsMalformed(t *testing.T) {
	stub := readFile(t, stubPath)
	peOff := int(binary.LittleEndian.Uint32(stub[0x3c:]))
	corrupt := func(f func(b []byte)) []byte {
		b := append([]byte(nil), stub...)
		f(b)
		return b
	}
	for _, tc := range []struct {
		name string
		img  []byte
	}{
		{"empty", nil},
		{"no MZ", corrupt(func(b []byte) { b[0] = 'X' })},
		{"PE offset past end", corrupt(func(b []byte) { binary.LittleEndian.PutUint32(b[0x3c:], 0x7fffffff) })},
		{"no PE signature", corrupt(func(b []byte) { b[peOff] = 'X' })},
		{"bad magic", corrupt(func(b []byte) { binary.LittleEndian.PutUint16(b[peOff+24:], 0x999) })},
		{"too many sections", corrupt(func(b []byte) { binary.LittleEndian.PutUint16(b[peOff+6:], 0xffff) })},
		{"section past end", corrupt(func(b []byte) {
			binary.LittleEndian.PutUint32(b[peOff+24+240+16:], 0x7fffffff)
		})},
		{"certificate table past end", corrupt(func(b []byte) {
			binary.LittleEndian.PutUint32(b[peOff+24+144:], 0x100)
			binary.LittleEndian.PutUint32(b[peOff+24+148:], 0x7fffffff)
		})},
		{"truncated", stub[:0x200]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := authenticode.Hash(tc.img, crypto.SHA256)
			if !errors.Is(err, authenticode.ErrMalformed) {
				t.Fatalf("Hash error = %v, want ErrMalformed", err)
			}
		})
	}
}

// FuzzHash: arbitrary bytes give a digest or ErrMalformed, never a panic.
func FuzzHash(f *testing.F) {
	if b, err := os.ReadFile(stubPath); err == nil {
		f.Add(b[:min(len(b), 4096)])
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := authenticode.Hash(b, crypto.SHA256)
		if err != nil {
			if !errors.Is(err, authenticode.ErrMalformed) {
				t.Fatalf("unexpected error type: %v", err)
			}
			return
		}
		if len(h) != 32 {
			t.Fatalf("digest length %d", len(h))
		}
	})
}
