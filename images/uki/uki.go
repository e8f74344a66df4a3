// Package uki builds unified kernel images: the systemd EFI stub with the
// kernel, initramfs, command line and os-release appended as PE sections, so
// that firmware loads, measures (and, with Secure Boot, verifies) the whole
// boot payload as one EFI application.
//
// The builder writes the PE headers itself: it copies the stub's headers and
// sections, appends one section per payload, drops the stub's COFF symbol
// table, and fixes NumberOfSections, SizeOfImage, SizeOfInitializedData and
// the CheckSum. The output depends only on the inputs, byte for byte.
package uki

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"github.com/dataembassy/embassy/images/authenticode"
)

// DefaultStubPath is where Debian's systemd-boot-efi package installs the
// x86-64 Linux EFI stub.
const DefaultStubPath = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"

// Section names systemd-stub looks up. The order of Sections is the order in
// which systemd-stub (v252) measures them into PCR 11, which is also the
// order this package appends them in.
const (
	SectionLinux   = ".linux"
	SectionOSRel   = ".osrel"
	SectionCmdline = ".cmdline"
	SectionInitrd  = ".initrd"
	SectionSplash  = ".splash"
	SectionDTB     = ".dtb"
	SectionPCRSig  = ".pcrsig"
	SectionPCRPKey = ".pcrpkey"
)

// MeasuredSections lists, in measurement order, the sections systemd-stub
// v252 measures into PCR 11 (.pcrsig is deliberately not measured).
var MeasuredSections = []string{SectionLinux, SectionOSRel, SectionCmdline, SectionInitrd, SectionSplash, SectionDTB, SectionPCRPKey}

// ErrStub is returned (wrapped) when the stub is not a PE32+ image the
// builder can extend.
var ErrStub = errors.New("uki: unusable EFI stub")

// Options are the inputs of a UKI.
type Options struct {
	// Stub is the systemd EFI stub (linuxx64.efi.stub) image.
	Stub []byte
	// Linux is the kernel image (bzImage with its own EFI stub).
	Linux []byte
	// Initrd is the initramfs, placed in .initrd unchanged.
	Initrd []byte
	// Cmdline is the kernel command line, stored in .cmdline without a
	// trailing NUL (systemd-stub measures the section's exact bytes).
	Cmdline string
	// OSRelease is the os-release text for .osrel.
	OSRelease string
	// Empty Initrd, Cmdline or OSRelease leave their section out.
}

// Section is one appended payload section as laid out in the image.
type Section struct {
	// Name is the section name, e.g. ".linux".
	Name string
	// VirtualAddress is the section's RVA.
	VirtualAddress uint32
	// FileOffset is where the raw data starts in the file.
	FileOffset uint32
	// Data is the payload (VirtualSize == len(Data)).
	Data []byte
}

// Image is a built UKI.
type Image struct {
	// Bytes is the complete PE image.
	Bytes []byte
	// Sections are the payload sections appended to the stub, in order.
	Sections []Section
}

const (
	sectionEntrySize = 40
	// payloadAlign keeps payload sections page aligned in memory, as ukify
	// does, although the stub's own SectionAlignment is smaller.
	payloadAlign = 4096
	// maxImage bounds the image: PE offsets and RVAs are 32-bit.
	maxImage = 1<<32 - 1
	// scnInitializedDataRead is IMAGE_SCN_CNT_INITIALIZED_DATA|IMAGE_SCN_MEM_READ.
	scnInitializedDataRead = 0x40000040
)

// Build joins the stub and the payloads into one PE image.
func Build(o Options) (*Image, error) {
	if len(o.Linux) == 0 {
		return nil, errors.New("uki: no kernel")
	}
	// systemd-stub and the kernel treat the command line as a C string.
	if strings.ContainsRune(o.Cmdline, 0) {
		return nil, errors.New("uki: NUL byte in the command line")
	}
	payloads := []struct {
		name string
		data []byte
	}{
		{SectionOSRel, []byte(o.OSRelease)},
		{SectionCmdline, []byte(o.Cmdline)},
		{SectionInitrd, o.Initrd},
		// The kernel goes last: it is the largest, and systemd-stub finds
		// sections by name, not position.
		{SectionLinux, o.Linux},
	}
	stub := o.Stub
	l, err := authenticode.Parse(stub)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStub, err)
	}
	if l.CertSize != 0 {
		return nil, fmt.Errorf("%w: stub is signed; sign the UKI instead", ErrStub)
	}
	peOff := int(binary.LittleEndian.Uint32(stub[0x3c:]))
	coffOff := peOff + 4
	nSections := int(binary.LittleEndian.Uint16(stub[coffOff+2:]))
	optSize := int(binary.LittleEndian.Uint16(stub[coffOff+16:]))
	optOff := coffOff + 20
	if binary.LittleEndian.Uint16(stub[coffOff:]) != 0x8664 || binary.LittleEndian.Uint16(stub[optOff:]) != 0x20b {
		return nil, fmt.Errorf("%w: not an x86-64 PE32+ image", ErrStub)
	}
	if nDirs := binary.LittleEndian.Uint32(stub[optOff+108:]); uint64(optSize) != 112+8*uint64(nDirs) {
		return nil, fmt.Errorf("%w: optional header size %d does not match %d data directories", ErrStub, optSize, nDirs)
	}
	sectionAlign := binary.LittleEndian.Uint32(stub[optOff+32:])
	fileAlign := binary.LittleEndian.Uint32(stub[optOff+36:])
	pow2 := func(v uint32) bool { return v != 0 && v&(v-1) == 0 }
	// PE/COFF: FileAlignment is a power of two from 512 to 64 KiB and
	// SectionAlignment is at least that; page-aligned payloads need
	// SectionAlignment to divide 4096.
	if !pow2(fileAlign) || fileAlign < 512 || fileAlign > 65536 || !pow2(sectionAlign) || sectionAlign < fileAlign || payloadAlign%sectionAlign != 0 {
		return nil, fmt.Errorf("%w: section alignment %#x / file alignment %#x", ErrStub, sectionAlign, fileAlign)
	}
	secTableOff := optOff + optSize

	// Existing sections: keep their names, check none clashes with ours.
	var hdrs [][]byte
	var endVA uint32
	for i := range nSections {
		h := append([]byte(nil), stub[secTableOff+i*sectionEntrySize:secTableOff+(i+1)*sectionEntrySize]...)
		name := string(bytes.TrimRight(h[:8], "\x00"))
		// Image sections carry no relocations or line numbers, and the
		// symbol table holding long names is dropped.
		if binary.LittleEndian.Uint32(h[32:]) != 0 || strings.HasPrefix(name, "/") {
			return nil, fmt.Errorf("%w: section %q has COFF relocations, line numbers or a long name", ErrStub, name)
		}
		for _, p := range payloads {
			if name == p.name {
				return nil, fmt.Errorf("%w: stub already has a %s section", ErrStub, name)
			}
		}
		vs := uint64(binary.LittleEndian.Uint32(h[8:]))
		va := uint64(binary.LittleEndian.Uint32(h[12:]))
		e := va + max(vs, uint64(binary.LittleEndian.Uint32(h[16:])))
		if e > maxImage {
			return nil, fmt.Errorf("%w: section %s ends beyond 4 GiB", ErrStub, name)
		}
		endVA = max(endVA, uint32(e))
		hdrs = append(hdrs, h)
	}
	var keep []struct {
		name string
		data []byte
	}
	for _, p := range payloads {
		// systemd-stub ignores empty sections; leave them out.
		if len(p.data) == 0 {
			continue
		}
		keep = append(keep, p)
	}

	// Headers grow by one entry per payload; if they no longer fit in
	// SizeOfHeaders, move every section's raw data down.
	newTableEnd := secTableOff + (nSections+len(keep))*sectionEntrySize
	oldHeaders := uint32(l.SizeOfHeaders)
	newHeaders := max(oldHeaders, alignUp(uint32(newTableEnd), fileAlign))
	shift := newHeaders - oldHeaders
	firstVA := ^uint32(0)
	for _, h := range hdrs {
		firstVA = min(firstVA, binary.LittleEndian.Uint32(h[12:]))
	}
	if newHeaders > firstVA {
		return nil, fmt.Errorf("%w: no room for %d more section headers", ErrStub, len(keep))
	}

	// End of the stub's section data in the file (the COFF symbol table
	// that may follow is dropped).
	var fileEnd uint32 = newHeaders
	for _, h := range hdrs {
		rs := binary.LittleEndian.Uint32(h[16:])
		if rs == 0 {
			continue
		}
		if binary.LittleEndian.Uint32(h[20:]) < oldHeaders {
			return nil, fmt.Errorf("%w: section raw data inside the headers", ErrStub)
		}
		ptr := binary.LittleEndian.Uint32(h[20:]) + shift
		binary.LittleEndian.PutUint32(h[20:], ptr)
		fileEnd = max(fileEnd, ptr+rs)
	}
	fileEnd = alignUp(fileEnd, fileAlign)

	total := uint64(alignUp(endVA, payloadAlign)) + uint64(fileEnd)
	for _, p := range keep {
		total += 2*uint64(len(p.data)) + 2*payloadAlign
	}
	if total > maxImage {
		return nil, fmt.Errorf("uki: image would exceed 4 GiB")
	}
	img := &Image{}
	va := alignUp(endVA, payloadAlign)
	off := fileEnd
	var addInit uint32
	for _, p := range keep {
		rawSize := alignUp(uint32(len(p.data)), fileAlign)
		h := make([]byte, sectionEntrySize)
		copy(h[:8], p.name)
		binary.LittleEndian.PutUint32(h[8:], uint32(len(p.data)))
		binary.LittleEndian.PutUint32(h[12:], va)
		binary.LittleEndian.PutUint32(h[16:], rawSize)
		if rawSize != 0 {
			binary.LittleEndian.PutUint32(h[20:], off)
		}
		binary.LittleEndian.PutUint32(h[36:], scnInitializedDataRead)
		hdrs = append(hdrs, h)
		img.Sections = append(img.Sections, Section{Name: p.name, VirtualAddress: va, FileOffset: off, Data: p.data})
		addInit += rawSize
		va = alignUp(va+max(uint32(len(p.data)), 1), payloadAlign)
		off += rawSize
	}

	out := make([]byte, off)
	// Headers up to the section table.
	copy(out, stub[:secTableOff])
	for i, h := range hdrs {
		copy(out[secTableOff+i*sectionEntrySize:], h)
	}
	// Stub sections at their (possibly shifted) offsets.
	for i := range nSections {
		oh := stub[secTableOff+i*sectionEntrySize:]
		rs := binary.LittleEndian.Uint32(oh[16:])
		if rs == 0 {
			continue
		}
		src := binary.LittleEndian.Uint32(oh[20:])
		copy(out[src+shift:], stub[src:src+rs])
	}
	for _, s := range img.Sections {
		copy(out[s.FileOffset:], s.Data)
	}

	// COFF header: section count; no symbol table.
	binary.LittleEndian.PutUint16(out[coffOff+2:], uint16(len(hdrs)))
	binary.LittleEndian.PutUint32(out[coffOff+8:], 0)
	binary.LittleEndian.PutUint32(out[coffOff+12:], 0)
	// Optional header.
	sizeInit := binary.LittleEndian.Uint32(out[optOff+8:])
	binary.LittleEndian.PutUint32(out[optOff+8:], sizeInit+addInit)
	binary.LittleEndian.PutUint32(out[optOff+56:], alignUp(va, sectionAlign)) // SizeOfImage
	binary.LittleEndian.PutUint32(out[optOff+60:], newHeaders)
	binary.LittleEndian.PutUint32(out[optOff+64:], 0)
	binary.LittleEndian.PutUint32(out[optOff+64:], authenticode.Checksum(out, optOff+64))
	img.Bytes = out
	return img, nil
}

func alignUp(v, a uint32) uint32 {
	return (v + a - 1) / a * a
}
