package initramfs

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Kernel is a guest kernel cached by scripts/fetch-kernel.sh.
type Kernel struct {
	// Dir is the cache directory (…/kernel/current).
	Dir string
	// Version is the kernel release, e.g. 6.1.0-56-cloud-amd64.
	Version string
	// Vmlinuz is the kernel image.
	Vmlinuz string
	// ModulesDir is lib/modules/<Version> inside Dir.
	ModulesDir string
	// SHA256 is the hex sha256 of Vmlinuz recorded at fetch time.
	SHA256 string
}

// CachedKernel locates the kernel scripts/fetch-kernel.sh cached: under
// $EMBASSY_CACHE, else $XDG_CACHE_HOME/embassy, else ~/.cache/embassy.
func CachedKernel() (Kernel, error) {
	base := os.Getenv("EMBASSY_CACHE")
	if base == "" {
		cache := os.Getenv("XDG_CACHE_HOME")
		if cache == "" {
			home, err := os.UserHomeDir()
			if err != nil {
				return Kernel{}, fmt.Errorf("initramfs: locating kernel cache: %w", err)
			}
			cache = filepath.Join(home, ".cache")
		}
		base = filepath.Join(cache, "embassy")
	}
	dir := filepath.Join(base, "kernel", "current")
	f, err := os.Open(filepath.Join(dir, "kernel.env"))
	if err != nil {
		return Kernel{}, fmt.Errorf("initramfs: no cached kernel (run scripts/fetch-kernel.sh): %w", err)
	}
	defer f.Close()
	k := Kernel{Dir: dir, Vmlinuz: filepath.Join(dir, "vmlinuz")}
	s := bufio.NewScanner(f)
	for s.Scan() {
		key, val, _ := strings.Cut(s.Text(), "=")
		switch key {
		case "VERSION":
			k.Version = val
		case "SHA256":
			k.SHA256 = val
		}
	}
	if err := s.Err(); err != nil {
		return Kernel{}, fmt.Errorf("initramfs: reading kernel.env: %w", err)
	}
	if k.Version == "" {
		return Kernel{}, fmt.Errorf("initramfs: %s/kernel.env has no VERSION", dir)
	}
	k.ModulesDir = filepath.Join(dir, "lib", "modules", k.Version)
	if _, err := os.Stat(k.Vmlinuz); err != nil {
		return Kernel{}, fmt.Errorf("initramfs: cached kernel incomplete: %w", err)
	}
	return k, nil
}
