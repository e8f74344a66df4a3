package initramfs_test

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/dataembassy/embassy/initramfs"
	"github.com/u-root/mkuimage/cpio"
)

// fakeBinaries writes stand-in init and appliance files: Build does not
// care whether they are ELF.
func fakeBinaries(t *testing.T) (initPath, appPath string) {
	t.Helper()
	dir := t.TempDir()
	initPath = filepath.Join(dir, "init")
	appPath = filepath.Join(dir, "app")
	if err := os.WriteFile(initPath, []byte("init-binary"), 0o700); err != nil {
		t.Fatal(err)
	}
	// A different mode on the input must not change the output.
	if err := os.WriteFile(appPath, []byte("appliance-binary"), 0o777); err != nil {
		t.Fatal(err)
	}
	return initPath, appPath
}

func readArchive(t *testing.T, gz []byte) map[string]cpio.Record {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(raw)))
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]cpio.Record{}
	for _, r := range recs {
		m[r.Name] = r
	}
	return m
}

func recordContent(t *testing.T, r cpio.Record) string {
	t.Helper()
	b, err := io.ReadAll(io.NewSectionReader(r.ReaderAt, 0, int64(r.FileSize)))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestBuildReproducible(t *testing.T) {
	initPath, appPath := fakeBinaries(t)
	opts := initramfs.Options{
		Init:      initPath,
		Appliance: appPath,
		Config:    []byte(`{"version":1}`),
		Extra:     map[string][]byte{"etc/b": []byte("b"), "etc/a": []byte("a")},
	}
	var first, second bytes.Buffer
	r1, err := initramfs.Build(opts, &first)
	if err != nil {
		t.Fatal(err)
	}
	// Touch the inputs: new mtimes and modes must not matter.
	if err := os.Chmod(appPath, 0o700); err != nil {
		t.Fatal(err)
	}
	r2, err := initramfs.Build(opts, &second)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(first.Bytes(), second.Bytes()) {
		t.Fatalf("two builds differ: %v vs %v", r1, r2)
	}
	if r1.SHA256 != sha256.Sum256(first.Bytes()) || r1.Size != int64(first.Len()) {
		t.Errorf("Result %v does not describe the written archive", r1)
	}

	// A changed config changes the archive.
	opts.Config = []byte(`{"version":2}`)
	var third bytes.Buffer
	if _, err := initramfs.Build(opts, &third); err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(first.Bytes(), third.Bytes()) {
		t.Fatal("config change did not change the archive")
	}
}

func TestBuildLayout(t *testing.T) {
	initPath, appPath := fakeBinaries(t)
	for _, tc := range []struct {
		name      string
		shell     string
		wantShell bool
	}{
		{name: "production"},
		{name: "debug", shell: initPath, wantShell: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			_, err := initramfs.Build(initramfs.Options{
				Init: initPath, Appliance: appPath, Config: []byte(`{"x":1}`), Shell: tc.shell,
				Modules: []initramfs.Module{{Name: "m_one", Path: initPath}},
			}, &buf)
			if err != nil {
				t.Fatal(err)
			}
			recs := readArchive(t, buf.Bytes())
			if got := recordContent(t, recs[initramfs.AppliancePath]); got != "appliance-binary" {
				t.Errorf("appliance content %q", got)
			}
			if r := recs[initramfs.AppliancePath]; r.Mode&0o777 != 0o755 || r.MTime != 0 || r.UID != 0 {
				t.Errorf("appliance record not normalised: mode %o mtime %d uid %d", r.Mode, r.MTime, r.UID)
			}
			if got := recordContent(t, recs[initramfs.ConfigPath]); got != `{"x":1}` {
				t.Errorf("config content %q", got)
			}
			if got := recordContent(t, recs[initramfs.ModulesOrder]); got != "m_one.ko\n" {
				t.Errorf("module order %q", got)
			}
			if _, ok := recs["bin/uinit"]; !ok {
				t.Error("no bin/uinit symlink")
			}
			if got := recordContent(t, recs["bin/uinit"]); got != "embassy-appliance" {
				t.Errorf("bin/uinit -> %q", got)
			}
			if got := recordContent(t, recs["init"]); got != "bin/init" {
				t.Errorf("init -> %q", got)
			}
			if _, ok := recs[initramfs.ShellPath]; ok != tc.wantShell {
				t.Errorf("shell present = %v, want %v", ok, tc.wantShell)
			}
			if _, ok := recs["dev/console"]; !ok {
				t.Error("no dev/console")
			}
		})
	}
}

func TestBuildRequiresBinaries(t *testing.T) {
	if _, err := initramfs.Build(initramfs.Options{}, io.Discard); err == nil {
		t.Fatal("Build without binaries succeeded")
	}
}

func TestResolveModulesCachedKernel(t *testing.T) {
	k, err := initramfs.CachedKernel()
	if err != nil {
		t.Fatal(err)
	}
	mods, err := initramfs.ResolveModules(k.ModulesDir, initramfs.DefaultModules)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	pos := map[string]int{}
	for i, m := range mods {
		names = append(names, m.Name)
		pos[m.Name] = i
	}
	for _, want := range []string{"virtio_pci", "virtio_blk", "virtio_net", "virtio", "virtio_ring", "net_failover", "failover"} {
		if !slices.Contains(names, want) {
			t.Errorf("resolved %v lacks %s", names, want)
		}
	}
	for _, m := range mods {
		for _, d := range m.Depends {
			if pos[d] >= pos[m.Name] {
				t.Errorf("%s loads before its dependency %s: %v", m.Name, d, names)
			}
		}
	}
	if _, err := initramfs.ResolveModules(k.ModulesDir, []string{"no_such_module"}); err == nil {
		t.Error("unknown module resolved")
	}
}

// TestInitramfsCompression: the uncompressed archive is exactly the cpio the
// gzip archive inflates to, both are reproducible, and an unknown
// compression is refused.
func TestInitramfsCompression(t *testing.T) {
	initPath, appPath := fakeBinaries(t)
	build := func(c initramfs.Compression) ([]byte, initramfs.Result) {
		t.Helper()
		var buf bytes.Buffer
		res, err := initramfs.Build(initramfs.Options{Init: initPath, Appliance: appPath, Compression: c}, &buf)
		if err != nil {
			t.Fatal(err)
		}
		if res.Size != int64(buf.Len()) || res.SHA256 != sha256.Sum256(buf.Bytes()) {
			t.Fatalf("%s: result %v does not describe the %d written bytes", c, res, buf.Len())
		}
		return buf.Bytes(), res
	}
	gz, gzRes := build(initramfs.CompressGzip)
	raw, rawRes := build(initramfs.CompressNone)
	raw2, _ := build(initramfs.CompressNone)
	if !bytes.Equal(raw, raw2) {
		t.Fatal("uncompressed archive is not reproducible")
	}
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		t.Fatal(err)
	}
	inflated, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(inflated, raw) {
		t.Fatal("uncompressed archive differs from the inflated gzip archive")
	}
	if rawRes.UncompressedSize != rawRes.Size || gzRes.UncompressedSize != rawRes.Size {
		t.Fatalf("sizes: gzip %v, none %v", gzRes, rawRes)
	}
	var buf bytes.Buffer
	if _, err := initramfs.Build(initramfs.Options{Init: initPath, Appliance: appPath, Compression: "lz5"}, &buf); !errors.Is(err, initramfs.ErrCompression) {
		t.Fatalf("unknown compression: got %v, want ErrCompression", err)
	}
}
