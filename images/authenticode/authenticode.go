// Package authenticode computes the Authenticode digest of a PE/COFF image:
// the digest UEFI firmware extends into PCR 4 (EV_EFI_BOOT_SERVICES_APPLICATION)
// when it loads an EFI application, and the digest a Secure Boot signature
// covers.
//
// The algorithm follows the PE/COFF specification ("Calculating the PE Image
// Hash") the way EDK2's measured-boot code applies it: hash the headers
// without the CheckSum field and the Certificate Table data directory entry,
// then every section's raw data in file-offset order, then any data after
// the last section except the attribute certificate table.
package authenticode

import (
	"crypto"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
)

// ErrMalformed is returned (wrapped) for input that is not a well-formed PE
// image.
var ErrMalformed = errors.New("authenticode: malformed PE image")

const (
	dosMagic         = 0x5a4d // "MZ"
	peSignature      = 0x00004550
	pe32Magic        = 0x10b
	pe32PlusMagic    = 0x20b
	coffHeaderSize   = 20
	sectionEntrySize = 40
	securityDirIndex = 4
)

// Layout is the part of a PE image's structure that Authenticode hashing
// (and PE checksumming) needs. Offsets are file offsets.
type Layout struct {
	// ChecksumOffset is the file offset of the optional header's CheckSum.
	ChecksumOffset int
	// SecurityDirOffset is the file offset of the Certificate Table data
	// directory entry, or -1 if the image has too few data directories.
	SecurityDirOffset int
	// SizeOfHeaders is the optional header's SizeOfHeaders.
	SizeOfHeaders int
	// CertOffset and CertSize locate the attribute certificate table (0, 0
	// when the image is unsigned).
	CertOffset, CertSize int
	// Sections are the raw-data extents of the sections with raw data, in
	// file-offset order.
	Sections []Extent
}

// Extent is a byte range of the file.
type Extent struct {
	Offset, Size int
}

// Parse reads the layout of a PE32 or PE32+ image, checking that every
// extent lies inside the file.
func Parse(img []byte) (*Layout, error) {
	if len(img) < 0x40 || binary.LittleEndian.Uint16(img) != dosMagic {
		return nil, fmt.Errorf("%w: no MZ header", ErrMalformed)
	}
	peOff := int(binary.LittleEndian.Uint32(img[0x3c:]))
	if peOff < 0x40 || peOff > len(img)-4-coffHeaderSize {
		return nil, fmt.Errorf("%w: PE header offset %#x out of range", ErrMalformed, peOff)
	}
	if binary.LittleEndian.Uint32(img[peOff:]) != peSignature {
		return nil, fmt.Errorf("%w: no PE signature", ErrMalformed)
	}
	coff := img[peOff+4:]
	nSections := int(binary.LittleEndian.Uint16(coff[2:]))
	optSize := int(binary.LittleEndian.Uint16(coff[16:]))
	optOff := peOff + 4 + coffHeaderSize
	if optOff+optSize > len(img) || optSize < 2 {
		return nil, fmt.Errorf("%w: optional header out of range", ErrMalformed)
	}
	opt := img[optOff : optOff+optSize]
	var dirCountOff int
	switch binary.LittleEndian.Uint16(opt) {
	case pe32Magic:
		dirCountOff = 92
	case pe32PlusMagic:
		dirCountOff = 108
	default:
		return nil, fmt.Errorf("%w: unknown optional header magic %#x", ErrMalformed, binary.LittleEndian.Uint16(opt))
	}
	if optSize < dirCountOff+4 {
		return nil, fmt.Errorf("%w: optional header too short", ErrMalformed)
	}
	l := &Layout{
		ChecksumOffset:    optOff + 64,
		SecurityDirOffset: -1,
		SizeOfHeaders:     int(binary.LittleEndian.Uint32(opt[60:])),
	}
	nDirs := int(binary.LittleEndian.Uint32(opt[dirCountOff:]))
	if nDirs > (optSize-dirCountOff-4)/8 {
		return nil, fmt.Errorf("%w: %d data directories do not fit the optional header", ErrMalformed, nDirs)
	}
	if nDirs > securityDirIndex {
		l.SecurityDirOffset = optOff + dirCountOff + 4 + 8*securityDirIndex
		l.CertOffset = int(binary.LittleEndian.Uint32(img[l.SecurityDirOffset:]))
		l.CertSize = int(binary.LittleEndian.Uint32(img[l.SecurityDirOffset+4:]))
		if l.CertSize == 0 {
			l.CertOffset = 0
		} else if l.CertOffset < 0 || l.CertSize < 0 || l.CertOffset > len(img) || l.CertSize > len(img)-l.CertOffset {
			return nil, fmt.Errorf("%w: certificate table out of range", ErrMalformed)
		}
	}
	secOff := optOff + optSize
	if nSections > (len(img)-secOff)/sectionEntrySize {
		return nil, fmt.Errorf("%w: section table out of range", ErrMalformed)
	}
	if l.SizeOfHeaders < secOff+nSections*sectionEntrySize || l.SizeOfHeaders > len(img) {
		return nil, fmt.Errorf("%w: SizeOfHeaders %#x inconsistent", ErrMalformed, l.SizeOfHeaders)
	}
	for i := range nSections {
		s := img[secOff+i*sectionEntrySize:]
		size := int(binary.LittleEndian.Uint32(s[16:]))
		off := int(binary.LittleEndian.Uint32(s[20:]))
		if size == 0 {
			continue
		}
		if off < 0 || size < 0 || off > len(img) || size > len(img)-off {
			return nil, fmt.Errorf("%w: section %d raw data out of range", ErrMalformed, i)
		}
		l.Sections = append(l.Sections, Extent{Offset: off, Size: size})
	}
	sort.SliceStable(l.Sections, func(i, j int) bool { return l.Sections[i].Offset < l.Sections[j].Offset })
	return l, nil
}

// Hash returns the Authenticode digest of img using hash h (crypto.SHA256
// for PCR 4 in a SHA-256 bank).
func Hash(img []byte, h crypto.Hash) ([]byte, error) {
	if !h.Available() {
		return nil, fmt.Errorf("authenticode: hash %v not available", h)
	}
	l, err := Parse(img)
	if err != nil {
		return nil, err
	}
	d := h.New()
	// Headers, minus CheckSum and the Certificate Table entry.
	d.Write(img[:l.ChecksumOffset])
	if l.SecurityDirOffset >= 0 {
		d.Write(img[l.ChecksumOffset+4 : l.SecurityDirOffset])
		d.Write(img[l.SecurityDirOffset+8 : l.SizeOfHeaders])
	} else {
		d.Write(img[l.ChecksumOffset+4 : l.SizeOfHeaders])
	}
	hashed := l.SizeOfHeaders
	for _, s := range l.Sections {
		d.Write(img[s.Offset : s.Offset+s.Size])
		hashed += s.Size
	}
	// Trailing data (for example a COFF symbol table), up to but not
	// including the certificate table, as EDK2 does.
	if len(img) > hashed+l.CertSize {
		d.Write(img[hashed : len(img)-l.CertSize])
	}
	return d.Sum(nil), nil
}

// Checksum returns the PE image checksum of img (the optional header's
// CheckSum field is treated as zero): the 16-bit one's-complement-style sum
// with carries folded, plus the file length.
func Checksum(img []byte, checksumOffset int) uint32 {
	var sum uint64
	for i := 0; i+1 < len(img); i += 2 {
		if i == checksumOffset || i == checksumOffset+2 {
			continue
		}
		sum += uint64(binary.LittleEndian.Uint16(img[i:]))
		sum = (sum & 0xffff) + (sum >> 16)
	}
	if len(img)%2 == 1 {
		sum += uint64(img[len(img)-1])
		sum = (sum & 0xffff) + (sum >> 16)
	}
	sum = (sum & 0xffff) + (sum >> 16)
	return uint32(sum) + uint32(len(img))
}
