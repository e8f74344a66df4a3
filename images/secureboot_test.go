package images_test

import (
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/dataembassy/embassy/images"
	"github.com/dataembassy/embassy/images/predict"
	"github.com/dataembassy/embassy/internal/testenv"
)

const (
	snakeoilKey  = "/usr/share/ovmf/PkKek-1-snakeoil.key"
	snakeoilCert = "/usr/share/ovmf/PkKek-1-snakeoil.pem"
)

// snakeoilSigner returns a usable copy of Debian's OVMF test key (shipped
// encrypted with the passphrase "snakeoil") and its certificate.
func snakeoilSigner(t *testing.T) (keyPath string, cert *x509.Certificate) {
	t.Helper()
	openssl := testenv.Tool(t, "openssl")
	testenv.Tool(t, "sbsign")
	keyPath = filepath.Join(t.TempDir(), "db.key")
	if out, err := exec.Command(openssl, "pkey", "-in", snakeoilKey, "-passin", "pass:snakeoil", "-out", keyPath).CombinedOutput(); err != nil {
		t.Fatalf("decrypt snakeoil key: %v\n%s", err, out)
	}
	b, err := os.ReadFile(snakeoilCert)
	if err != nil {
		t.Fatalf("%v (install ovmf)", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatal("snakeoil certificate is not PEM")
	}
	if cert, err = x509.ParseCertificate(blk.Bytes); err != nil {
		t.Fatal(err)
	}
	return keyPath, cert
}

// TestBootSecureBoot signs the UKI with a key enrolled in the firmware's
// db, boots it with Secure Boot enforced, and checks the prediction of
// PCR 7 (Secure Boot variables + the db authority) along with the others.
// The unsigned image of the same release does not boot at all.
func TestBootSecureBoot(t *testing.T) {
	key, cert := snakeoilSigner(t)
	vars, err := os.ReadFile(snakeoilVars)
	if err != nil {
		t.Fatal(err)
	}
	sb := &predict.SecureBoot{VarStore: vars, Signer: cert}
	r, path := buildRelease(t, images.Options{
		Sign:    images.SignWithSbsign(key, snakeoilCert),
		Predict: predict.Options{SecureBoot: sb},
	})
	unsigned, unsignedPath := buildRelease(t, images.Options{})
	if r.UKIAuthenticode != unsigned.UKIAuthenticode {
		t.Errorf("signing changed the Authenticode digest: %s vs %s", r.UKIAuthenticode, unsigned.UKIAuthenticode)
	}
	if _, ok := r.PCRs[predict.PCRSecureBoot]; !ok || len(r.PCRs) != 7 {
		t.Fatalf("predicted PCRs %v, want 4, 5, 7, 9, 11, 12, 13", r.PCRs)
	}

	res := bootDiskWith(t, path, secureBootFirmware)
	measured := map[int]string{}
	for i, v := range res.PCRs {
		measured[i] = hex.EncodeToString(v)
	}
	if err := r.Compare(measured); err != nil {
		t.Errorf("%v\npredicted:\n%s\nmeasured event log:\n%s", err, predict.Describe(r.Events), describeLog(t, res.EventLog))
	}
	m, err := r.Manifest(images.ManifestOptions{Release: "sb", IncludeSecureBoot: true})
	if err != nil {
		t.Fatal(err)
	}
	if m.PCRs["7"] != measured[7] {
		t.Errorf("manifest PCR 7 %s, measured %s", m.PCRs["7"], measured[7])
	}

	// The unsigned UKI is refused by the firmware.
	mach := startDisk(t, unsignedPath, secureBootFirmware)
	if _, err := mach.WaitForLine(regexp.MustCompile(`failed to load Boot.*Access Denied`), 3*time.Minute); err != nil {
		t.Fatalf("unsigned UKI was not refused under Secure Boot: %v", err)
	}
	for _, l := range mach.Lines() {
		if regexp.MustCompile(`PCRDUMP|Linux version`).MatchString(l.Text) {
			t.Fatalf("unsigned UKI ran under Secure Boot: %q", l.Text)
		}
	}
}
