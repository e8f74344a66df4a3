// Package disk writes the appliance's bootable GPT disk image with
// github.com/diskfs/go-diskfs: an EFI System Partition (FAT32) holding the
// UKI as \EFI\BOOT\BOOTX64.EFI (the removable-media path firmware boots
// without any boot variable), and an empty data partition for the store.
//
// The image is reproducible: disk and partition GUIDs are fixed (derived from
// a caller-chosen seed), the FAT volume id is zero, and file timestamps come
// from Options.Epoch instead of the clock.
package disk

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/disk"
	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/partition/gpt"
	"github.com/google/uuid"
)

// Layout constants of the image.
const (
	// SectorSize is the logical sector size of the image.
	SectorSize = 512
	// BootPath is where the UKI sits on the ESP (the removable-media
	// default for x86-64).
	BootPath = "/EFI/BOOT/BOOTX64.EFI"
	// ESPIndex and DataIndex are the 1-based GPT partition numbers.
	ESPIndex  = 1
	DataIndex = 2
	// DataPartitionName is the GPT name of the store partition; the
	// appliance finds its store by this name and StoreType.
	DataPartitionName = "embassy-store"
	// ESPName is the GPT name of the ESP.
	ESPName = "EFI System"
	// StoreType is the GPT partition type GUID of the store partition
	// (Embassy's own, so no OS auto-mounts it).
	StoreType = "6E8B1A2F-3C5D-4E7A-9B1C-2D4E6F8A0B3C"

	mib        = 1 << 20
	firstStart = 2048 // first partition starts at 1 MiB
)

// ErrTooSmall is returned when the UKI does not fit the ESP.
var ErrTooSmall = errors.New("disk: ESP too small for the UKI")

// Options describe a disk image.
type Options struct {
	// UKI is the unified kernel image written to BootPath.
	UKI []byte
	// ESPSize is the ESP size in bytes (a multiple of 1 MiB, at least
	// 40 MiB so FAT32 has enough clusters). Zero picks 128 MiB or enough
	// for the UKI.
	ESPSize int64
	// DataSize is the data partition size in bytes (a multiple of 1 MiB).
	// Zero picks 64 MiB; the appliance may use the rest of a larger disk.
	DataSize int64
	// Seed determines the disk and partition GUIDs. Different releases may
	// share a seed; the GUIDs only need to be stable, not secret.
	Seed string
	// Epoch is the timestamp (Unix seconds) of every FAT directory entry.
	Epoch int64
}

// GUIDs returns the disk, ESP and data partition GUIDs derived from seed.
func GUIDs(seed string) (diskGUID, espGUID, dataGUID string) {
	g := func(what string) string {
		sum := sha256.Sum256([]byte("embassy disk guid\x00" + seed + "\x00" + what))
		u, _ := uuid.FromBytes(sum[:16])
		// Make it a well-formed version 4 (random) UUID.
		u[6] = u[6]&0x0f | 0x40
		u[8] = u[8]&0x3f | 0x80
		return u.String()
	}
	return g("disk"), g("esp"), g("data")
}

// Size returns the total image size for o.
func (o Options) sizes() (esp, data, total int64, err error) {
	esp, data = o.ESPSize, o.DataSize
	if esp == 0 {
		esp = max(128*mib, (int64(len(o.UKI))*5/4+8*mib)/mib*mib)
	}
	if data == 0 {
		data = 64 * mib
	}
	if esp%mib != 0 || data%mib != 0 || esp < 40*mib || data < mib {
		return 0, 0, 0, fmt.Errorf("disk: ESP size %d and data size %d must be MiB multiples, ESP at least 40 MiB", esp, data)
	}
	if int64(len(o.UKI))+4*mib > esp {
		return 0, 0, 0, fmt.Errorf("%w: UKI %d bytes, ESP %d bytes", ErrTooSmall, len(o.UKI), esp)
	}
	// 1 MiB before, 1 MiB after for the backup GPT.
	return esp, data, mib + esp + data + mib, nil
}

// envMu serialises Build: go-diskfs reads FAT timestamps from the
// SOURCE_DATE_EPOCH environment variable, which Build sets while it runs.
var envMu sync.Mutex

// Build writes the disk image to path, which must not exist.
func Build(path string, o Options) (err error) {
	espSize, dataSize, total, err := o.sizes()
	if err != nil {
		return err
	}
	diskGUID, espGUID, dataGUID := GUIDs(o.Seed)

	envMu.Lock()
	defer envMu.Unlock()
	prev, had := os.LookupEnv("SOURCE_DATE_EPOCH")
	os.Setenv("SOURCE_DATE_EPOCH", strconv.FormatInt(o.Epoch, 10))
	defer func() {
		if had {
			os.Setenv("SOURCE_DATE_EPOCH", prev)
		} else {
			os.Unsetenv("SOURCE_DATE_EPOCH")
		}
	}()

	d, err := diskfs.Create(path, total, diskfs.SectorSize512)
	if err != nil {
		return fmt.Errorf("disk: create %s: %w", path, err)
	}
	defer func() {
		if cerr := d.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("disk: close: %w", cerr)
		}
		if err != nil {
			os.Remove(path)
		}
	}()
	espStart := uint64(firstStart)
	espEnd := espStart + uint64(espSize/SectorSize) - 1
	dataStart := espEnd + 1
	dataEnd := dataStart + uint64(dataSize/SectorSize) - 1
	table := &gpt.Table{
		LogicalSectorSize:  SectorSize,
		PhysicalSectorSize: SectorSize,
		ProtectiveMBR:      true,
		GUID:               diskGUID,
		Partitions: []*gpt.Partition{
			{Index: ESPIndex, Start: espStart, End: espEnd, Type: gpt.EFISystemPartition, Name: ESPName, GUID: espGUID},
			{Index: DataIndex, Start: dataStart, End: dataEnd, Type: StoreType, Name: DataPartitionName, GUID: dataGUID},
		},
	}
	if err := d.Partition(table); err != nil {
		return fmt.Errorf("disk: partition: %w", err)
	}
	fs, err := d.CreateFilesystem(disk.FilesystemSpec{
		Partition:    ESPIndex,
		FSType:       filesystem.TypeFat32,
		VolumeLabel:  "EMBASSY",
		Reproducible: true,
	})
	if err != nil {
		return fmt.Errorf("disk: create ESP filesystem: %w", err)
	}
	for _, dir := range []string{"/EFI", "/EFI/BOOT"} {
		if err := fs.Mkdir(dir); err != nil {
			return fmt.Errorf("disk: mkdir %s: %w", dir, err)
		}
	}
	f, err := fs.OpenFile(BootPath, os.O_CREATE|os.O_RDWR)
	if err != nil {
		return fmt.Errorf("disk: open %s: %w", BootPath, err)
	}
	if _, err := f.Write(o.UKI); err != nil {
		return fmt.Errorf("disk: write %s: %w", BootPath, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("disk: close %s: %w", BootPath, err)
	}
	return nil
}
