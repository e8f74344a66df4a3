package images

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// SignWithSbsign returns a signing function for Options.Sign that signs a
// UKI for Secure Boot with sbsign (sbsigntool) using the PEM key and
// certificate at keyPath and certPath. The key must not be passphrase
// protected.
func SignWithSbsign(keyPath, certPath string) func([]byte) ([]byte, error) {
	return func(uki []byte) ([]byte, error) {
		dir, err := os.MkdirTemp("", "embassy-sign")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		in, out := filepath.Join(dir, "uki.efi"), filepath.Join(dir, "uki.signed.efi")
		if err := os.WriteFile(in, uki, 0o600); err != nil {
			return nil, err
		}
		cmd := exec.Command("sbsign", "--key", keyPath, "--cert", certPath, "--output", out, in)
		if b, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("sbsign: %w: %s", err, b)
		}
		return os.ReadFile(out)
	}
}
