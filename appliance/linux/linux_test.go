//go:build linux

package linux_test

import (
	"bytes"
	"errors"
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

// errEmpty marks the case where any error is right.
var errEmpty = errors.New("any error")

func TestFindPartition(t *testing.T) {
	uevent := func(t *testing.T, dir, name, content string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name, "uevent"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// What Linux 6.1 writes for a virtio disk holding a disk image.
	base := func(t *testing.T) string {
		t.Helper()
		dir := t.TempDir()
		uevent(t, dir, "vda", "MAJOR=254\nMINOR=0\nDEVNAME=vda\nDEVTYPE=disk\nDISKSEQ=1\n")
		uevent(t, dir, "vda1", "MAJOR=254\nMINOR=1\nDEVNAME=vda1\nDEVTYPE=partition\nDISKSEQ=1\nPARTN=1\nPARTNAME=EFI System\n")
		uevent(t, dir, "vda2", "MAJOR=254\nMINOR=2\nDEVNAME=vda2\nDEVTYPE=partition\nDISKSEQ=1\nPARTN=2\nPARTNAME=embassy-store\n")
		return dir
	}
	tests := []struct {
		name    string
		extra   func(t *testing.T, dir string)
		label   string
		want    string
		wantErr error
	}{
		{name: "found", label: "embassy-store", want: "/dev/vda2"},
		{name: "other label", label: "EFI System", want: "/dev/vda1"},
		{name: "missing", label: "nothing", wantErr: os.ErrNotExist},
		{name: "prefix is not a match", label: "embassy", wantErr: os.ErrNotExist},
		{name: "unnamed partition", label: "", wantErr: errEmpty,
			extra: func(t *testing.T, dir string) {
				uevent(t, dir, "vda3", "DEVNAME=vda3\nDEVTYPE=partition\nPARTN=3\n")
			}},
		{name: "second disk with the same name", label: "embassy-store", wantErr: linux.ErrAmbiguousPartition,
			extra: func(t *testing.T, dir string) {
				uevent(t, dir, "vdb2", "DEVNAME=vdb2\nDEVTYPE=partition\nPARTN=2\nPARTNAME=embassy-store\n")
			}},
		{name: "path escape refused", label: "evil", wantErr: os.ErrNotExist,
			extra: func(t *testing.T, dir string) {
				uevent(t, dir, "x", "DEVNAME=../etc/passwd\nDEVTYPE=partition\nPARTNAME=evil\n")
			}},
		{name: "unreadable entries skipped", label: "embassy-store", want: "/dev/vda2",
			extra: func(t *testing.T, dir string) {
				if err := os.MkdirAll(filepath.Join(dir, "loop0"), 0o755); err != nil {
					t.Fatal(err)
				}
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := base(t)
			if tc.extra != nil {
				tc.extra(t, dir)
			}
			if tc.wantErr == errEmpty {
				if got, err := linux.FindPartition(dir, tc.label); err == nil {
					t.Fatalf("FindPartition(%q) = %q, want an error", tc.label, got)
				}
				return
			}
			got, err := linux.FindPartition(dir, tc.label)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("FindPartition(%q) = %q, %v; want error %v", tc.label, got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("FindPartition(%q) = %q, %v; want %q", tc.label, got, err, tc.want)
			}
		})
	}
	if _, err := linux.FindPartition(filepath.Join(t.TempDir(), "absent"), "x"); err == nil {
		t.Error("missing sysfs directory accepted")
	}
}
