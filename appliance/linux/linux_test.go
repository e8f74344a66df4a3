//go:build linux

package linux_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/dataembassy/embassy/appliance/linux"
)

func TestSysfsPCRs(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "15"), []byte("00FF"+string(bytes.Repeat([]byte("0"), 60))+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "9"), []byte("zz\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := linux.SysfsPCRs{Dir: dir}.ReadPCRs([]int{15})
	if err != nil {
		t.Fatal(err)
	}
	if len(got[15]) != 32 || got[15][1] != 0xff {
		t.Errorf("PCR 15 = %x", got[15])
	}
	if _, err := (linux.SysfsPCRs{Dir: dir}).ReadPCRs([]int{9}); err == nil {
		t.Error("malformed PCR file accepted")
	}
	if _, err := (linux.SysfsPCRs{Dir: dir}).ReadPCRs([]int{4}); err == nil {
		t.Error("missing PCR file accepted")
	}
}
