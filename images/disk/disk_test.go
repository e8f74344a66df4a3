package disk_test

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/partition/gpt"

	"github.com/dataembassy/embassy/images/disk"
)

func payload() []byte {
	b := make([]byte, 3<<20+12345)
	for i := range b {
		b[i] = byte(i * 7 / 3)
	}
	return b
}

func build(t *testing.T, o disk.Options) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.img")
	if err := disk.Build(p, o); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestBuildReproducible(t *testing.T) {
	o := disk.Options{UKI: payload(), ESPSize: 48 << 20, DataSize: 8 << 20, Seed: "s", Epoch: 1700000000}
	a, err := os.ReadFile(build(t, o))
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(build(t, o))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Fatal("two builds with the same inputs differ")
	}
	o.Epoch += 86400 // FAT times have a 2 s resolution
	c, err := os.ReadFile(build(t, o))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(a, c) {
		t.Fatal("the FAT timestamps ignore Epoch")
	}
	if os.Getenv("SOURCE_DATE_EPOCH") == "1700086400" {
		t.Fatal("SOURCE_DATE_EPOCH leaked out of Build")
	}
}

func TestBuildReadBack(t *testing.T) {
	uki := payload()
	p := build(t, disk.Options{UKI: uki, ESPSize: 48 << 20, DataSize: 8 << 20, Seed: "read-back", Epoch: 1})
	d, err := diskfs.Open(p, diskfs.WithOpenMode(diskfs.ReadOnly))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if d.Size != (1+48+8+1)<<20 {
		t.Errorf("disk size %d", d.Size)
	}
	pt, err := d.GetPartitionTable()
	if err != nil {
		t.Fatal(err)
	}
	tbl, ok := pt.(*gpt.Table)
	if !ok {
		t.Fatalf("partition table is %T, want GPT", pt)
	}
	diskGUID, espGUID, dataGUID := disk.GUIDs("read-back")
	if !strings.EqualFold(tbl.GUID, diskGUID) {
		t.Errorf("disk GUID %s, want %s", tbl.GUID, diskGUID)
	}
	var parts []*gpt.Partition
	for _, pp := range tbl.Partitions {
		if pp.Type != gpt.Unused {
			parts = append(parts, pp)
		}
	}
	if len(parts) != 2 {
		t.Fatalf("%d partitions, want 2", len(parts))
	}
	esp, data := parts[0], parts[1]
	if esp.Type != gpt.EFISystemPartition || !strings.EqualFold(esp.GUID, espGUID) || esp.Start != 2048 || esp.Size != 48<<20 {
		t.Errorf("ESP entry %+v", esp)
	}
	if !strings.EqualFold(string(data.Type), disk.StoreType) || !strings.EqualFold(data.GUID, dataGUID) || data.Name != disk.DataPartitionName || data.Size != 8<<20 {
		t.Errorf("data entry %+v", data)
	}
	fs, err := d.GetFilesystem(disk.ESPIndex)
	if err != nil {
		t.Fatal(err)
	}
	f, err := fs.OpenFile(disk.BootPath, os.O_RDONLY)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, uki) {
		t.Fatalf("BOOTX64.EFI differs from the UKI (%d vs %d bytes)", len(got), len(uki))
	}
}

func TestBuildErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    disk.Options
		want error
	}{
		{"ESP too small for UKI", disk.Options{UKI: make([]byte, 60<<20), ESPSize: 48 << 20}, disk.ErrTooSmall},
		{"ESP below FAT32 minimum", disk.Options{UKI: payload(), ESPSize: 8 << 20}, nil},
		{"unaligned data size", disk.Options{UKI: payload(), DataSize: 12345}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "disk.img")
			err := disk.Build(p, tc.o)
			if err == nil {
				t.Fatal("Build succeeded")
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("error %v, want %v", err, tc.want)
			}
			if _, serr := os.Stat(p); serr == nil {
				t.Error("a failed Build left the image behind")
			}
		})
	}
}
