// Package petest builds tiny synthetic PE32+ images for tests and fuzz seed
// corpora of the images packages.
package petest

import "encoding/binary"

// Section is one section of a synthetic image.
type Section struct {
	Name string
	Data []byte
}

// Minimal returns a valid PE32+ EFI application image with the given
// sections (file and section alignment 0x200, headers 0x200 bytes) and
// trailing bytes appended after the last section.
func Minimal(sections []Section, trailing []byte) []byte {
	const (
		peOff   = 0x40
		optSize = 240
		align   = 0x200
	)
	img := make([]byte, align)
	copy(img, "MZ")
	binary.LittleEndian.PutUint32(img[0x3c:], peOff)
	copy(img[peOff:], "PE\x00\x00")
	coff := img[peOff+4:]
	binary.LittleEndian.PutUint16(coff[0:], 0x8664)
	binary.LittleEndian.PutUint16(coff[2:], uint16(len(sections)))
	binary.LittleEndian.PutUint16(coff[16:], optSize)
	binary.LittleEndian.PutUint16(coff[18:], 0x206)
	opt := img[peOff+24:]
	binary.LittleEndian.PutUint16(opt[0:], 0x20b)
	binary.LittleEndian.PutUint32(opt[32:], align) // SectionAlignment
	binary.LittleEndian.PutUint32(opt[36:], align) // FileAlignment
	binary.LittleEndian.PutUint32(opt[60:], align) // SizeOfHeaders
	binary.LittleEndian.PutUint16(opt[68:], 10)    // EFI application
	binary.LittleEndian.PutUint32(opt[108:], 16)   // NumberOfRvaAndSizes
	va := uint32(align)
	for i, s := range sections {
		h := img[peOff+24+optSize+40*i:]
		copy(h[:8], s.Name)
		raw := (uint32(len(s.Data)) + align - 1) / align * align
		binary.LittleEndian.PutUint32(h[8:], uint32(len(s.Data)))
		binary.LittleEndian.PutUint32(h[12:], va)
		binary.LittleEndian.PutUint32(h[16:], raw)
		binary.LittleEndian.PutUint32(h[20:], uint32(len(img)))
		binary.LittleEndian.PutUint32(h[36:], 0x40000040)
		img = append(img, s.Data...)
		img = append(img, make([]byte, int(raw)-len(s.Data))...)
		va += (raw + 0xfff) / 0x1000 * 0x1000
	}
	binary.LittleEndian.PutUint32(opt[56:], va) // SizeOfImage
	return append(img, trailing...)
}
