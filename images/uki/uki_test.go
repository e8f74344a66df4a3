package uki_test

import (
	"bytes"
	"crypto"
	"debug/pe"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dataembassy/embassy/images/authenticode"
	"github.com/dataembassy/embassy/images/internal/petest"
	"github.com/dataembassy/embassy/images/uki"
	"github.com/dataembassy/embassy/internal/testenv"
)

func stub(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile(uki.DefaultStubPath)
	if err != nil {
		t.Fatalf("systemd EFI stub: %v (install systemd-boot-efi)", err)
	}
	return b
}

// fakeKernel is opaque payload: the builder does not look inside .linux.
func options(t *testing.T) uki.Options {
	t.Helper()
	k := bytes.Repeat([]byte("kernel"), 300001)
	return uki.Options{
		Stub:      stub(t),
		Linux:     k,
		Initrd:    bytes.Repeat([]byte{0x07}, 5000),
		Cmdline:   "console=ttyS0 quiet",
		OSRelease: "ID=embassy\n",
	}
}

func TestBuildLayout(t *testing.T) {
	o := options(t)
	img, err := uki.Build(o)
	if err != nil {
		t.Fatal(err)
	}
	f, err := pe.NewFile(bytes.NewReader(img.Bytes))
	if err != nil {
		t.Fatalf("debug/pe cannot read the UKI: %v", err)
	}
	want := map[string][]byte{
		".osrel":   []byte(o.OSRelease),
		".cmdline": []byte(o.Cmdline),
		".initrd":  o.Initrd,
		".linux":   o.Linux,
	}
	oh := f.OptionalHeader.(*pe.OptionalHeader64)
	var prevEnd uint32
	for _, s := range f.Sections {
		if s.VirtualAddress < prevEnd {
			t.Errorf("section %s at %#x overlaps the previous one (ends %#x)", s.Name, s.VirtualAddress, prevEnd)
		}
		prevEnd = s.VirtualAddress + s.VirtualSize
		if s.Offset%oh.FileAlignment != 0 {
			t.Errorf("section %s file offset %#x not aligned", s.Name, s.Offset)
		}
		w, ok := want[s.Name]
		if !ok {
			continue
		}
		delete(want, s.Name)
		if s.VirtualSize != uint32(len(w)) {
			t.Errorf("%s VirtualSize %d, want %d", s.Name, s.VirtualSize, len(w))
		}
		got, err := io.ReadAll(io.NewSectionReader(s, 0, int64(s.VirtualSize)))
		if err != nil || !bytes.Equal(got, w) {
			t.Errorf("%s contents differ (err %v)", s.Name, err)
		}
		if s.VirtualAddress%4096 != 0 {
			t.Errorf("%s not page aligned: %#x", s.Name, s.VirtualAddress)
		}
	}
	if len(want) != 0 {
		t.Errorf("sections missing: %v", want)
	}
	if oh.SizeOfImage < prevEnd || oh.SizeOfImage%oh.SectionAlignment != 0 {
		t.Errorf("SizeOfImage %#x, sections end at %#x", oh.SizeOfImage, prevEnd)
	}
	if f.FileHeader.PointerToSymbolTable != 0 || f.FileHeader.NumberOfSymbols != 0 {
		t.Error("stub symbol table kept")
	}
	l, err := authenticode.Parse(img.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := binary.LittleEndian.Uint32(img.Bytes[l.ChecksumOffset:]), authenticode.Checksum(img.Bytes, l.ChecksumOffset); got != want || got == 0 {
		t.Errorf("CheckSum %#x, want %#x", got, want)
	}
	if _, err := authenticode.Hash(img.Bytes, crypto.SHA256); err != nil {
		t.Errorf("Authenticode: %v", err)
	}
}

// TestBuildReadByObjdump: binutils reads the result as a PE with the same
// sections.
func TestBuildReadByObjdump(t *testing.T) {
	objdump := testenv.Tool(t, "objdump")
	img, err := uki.Build(options(t))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "uki.efi")
	if err := os.WriteFile(p, img.Bytes, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(objdump, "-h", p).CombinedOutput()
	if err != nil {
		t.Fatalf("objdump: %v\n%s", err, out)
	}
	for _, s := range []string{".text", ".sbat", ".osrel", ".cmdline", ".initrd", ".linux", "pei-x86-64"} {
		if !strings.Contains(string(out), s) {
			t.Errorf("objdump -h lacks %s:\n%s", s, out)
		}
	}
}

func TestBuildReproducible(t *testing.T) {
	a, err := uki.Build(options(t))
	if err != nil {
		t.Fatal(err)
	}
	b, err := uki.Build(options(t))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes, b.Bytes) {
		t.Fatal("two builds of the same inputs differ")
	}
	o := options(t)
	o.Cmdline += " x"
	c, err := uki.Build(o)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(a.Bytes, c.Bytes) {
		t.Fatal("different command line, same image")
	}
}

func TestBuildErrors(t *testing.T) {
	signed := stub(t)
	signed = append([]byte(nil), signed...)
	l, err := authenticode.Parse(signed)
	if err != nil {
		t.Fatal(err)
	}
	binary.LittleEndian.PutUint32(signed[l.SecurityDirOffset:], uint32(len(signed)-8))
	binary.LittleEndian.PutUint32(signed[l.SecurityDirOffset+4:], 8)
	for _, tc := range []struct {
		name string
		mod  func(*uki.Options)
		want error
	}{
		{"no kernel", func(o *uki.Options) { o.Linux = nil }, nil},
		{"garbage stub", func(o *uki.Options) { o.Stub = []byte("MZ not really") }, uki.ErrStub},
		{"signed stub", func(o *uki.Options) { o.Stub = signed }, uki.ErrStub},
		{"NUL in cmdline", func(o *uki.Options) { o.Cmdline = "a\x00b" }, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := options(t)
			tc.mod(&o)
			_, err := uki.Build(o)
			if err == nil {
				t.Fatal("Build succeeded")
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("error %v, want %v", err, tc.want)
			}
		})
	}
}

// TestBuildGrowsHeaders: a stub whose headers have no room for four more
// section entries gets its raw data moved down, contents intact.
func TestBuildGrowsHeaders(t *testing.T) {
	text := bytes.Repeat([]byte{0xc3}, 100)
	stub := petest.Minimal([]petest.Section{{Name: ".text", Data: text}}, nil)
	// Move .text to RVA 0x1000 so the headers may grow in memory.
	const secHdr = 0x40 + 24 + 240
	binary.LittleEndian.PutUint32(stub[secHdr+12:], 0x1000)
	binary.LittleEndian.PutUint32(stub[0x40+24+56:], 0x1200)
	img, err := uki.Build(uki.Options{Stub: stub, Linux: []byte("kernel"), Cmdline: "x", Initrd: []byte("i"), OSRelease: "ID=x\n"})
	if err != nil {
		t.Fatal(err)
	}
	f, err := pe.NewFile(bytes.NewReader(img.Bytes))
	if err != nil {
		t.Fatal(err)
	}
	s := f.Section(".text")
	if s == nil || s.Offset == 0x200 {
		t.Fatalf(".text not moved: %+v", s)
	}
	got, _ := s.Data()
	if !bytes.Equal(got[:len(text)], text) {
		t.Error(".text contents changed")
	}
	if l := f.Section(".linux"); l == nil {
		t.Error("no .linux")
	}

	// Without room in memory either, Build refuses.
	tight := petest.Minimal([]petest.Section{{Name: ".text", Data: text}}, nil)
	if _, err := uki.Build(uki.Options{Stub: tight, Linux: []byte("kernel"), Cmdline: "x", Initrd: []byte("i"), OSRelease: "ID=x\n"}); !errors.Is(err, uki.ErrStub) {
		t.Errorf("no room for headers: error %v, want ErrStub", err)
	}
}

// FuzzBuild: arbitrary stub bytes give an image debug/pe can read, or an
// error; never a panic.
func FuzzBuild(f *testing.F) {
	f.Add(petest.Minimal([]petest.Section{{Name: ".text", Data: []byte{0xc3}}}, nil))
	f.Fuzz(func(t *testing.T, stub []byte) {
		img, err := uki.Build(uki.Options{Stub: stub, Linux: []byte("kernel"), Initrd: []byte("initrd"), Cmdline: "c"})
		if err != nil {
			return
		}
		if _, err := pe.NewFile(bytes.NewReader(img.Bytes)); err != nil {
			t.Fatalf("built an unreadable PE: %v", err)
		}
	})
}
