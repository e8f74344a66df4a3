package testenv

import (
	"bytes"

	"github.com/u-root/u-root/pkg/cpio"
)

// Newc returns recs as a newc archive, the format the kernel unpacks as an
// initramfs, with timestamps and inode numbers made reproducible: tests
// build small guest initramfs images and malformed-archive inputs with it.
func Newc(recs ...cpio.Record) ([]byte, error) {
	cpio.MakeAllReproducible(recs)
	var buf bytes.Buffer
	w := cpio.Newc.Writer(&buf)
	if err := cpio.WriteRecords(w, recs); err != nil {
		return nil, err
	}
	if err := cpio.WriteTrailer(w); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
