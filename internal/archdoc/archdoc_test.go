package archdoc

import (
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite docs/architecture.md's generated section (make architecture)")

func load(t *testing.T) (string, string, []Package) {
	t.Helper()
	root, module, err := ModuleRoot(".")
	if err != nil {
		t.Fatal(err)
	}
	pkgs, err := Load(root, module)
	if err != nil {
		t.Fatal(err)
	}
	return root, module, pkgs
}

// TestArchitectureDoc fails when docs/architecture.md's package graph
// differs from what go list says now; -update rewrites it.
func TestArchitectureDoc(t *testing.T) {
	root, module, pkgs := load(t)
	path := filepath.Join(root, "docs", "architecture.md")
	old, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	gen := Generate(module, pkgs)
	doc, err := Splice(string(old), gen)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if doc == string(old) {
		return
	}
	if *update {
		if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("rewrote %s", path)
		return
	}
	t.Errorf("docs/architecture.md's generated package graph is stale; run `make architecture` (go test -count=1 -run TestArchitectureDoc ./internal/archdoc/ -args -update). Diff (- in the file, + from go list):\n%s",
		lineDiff(string(old), doc))
}

// TestLayering checks the layering rules against go list's production
// imports and names every offending import.
func TestLayering(t *testing.T) {
	_, _, pkgs := load(t)
	for _, bad := range Check(Rules, pkgs) {
		t.Error(bad)
	}
}

func TestCheck(t *testing.T) {
	pkgs := []Package{
		{Path: "appliance", Imports: []string{"attest/agent", "storage"}},
		{Path: "attest/agent", Imports: []string{"attest/tpm"}},
		{Path: "storage/nbd", Imports: []string{"storage"}},
		{Path: "storage/nbd/internal/x", Imports: []string{"appliance/linux", "storage/nbd"}},
		{Path: "images", Imports: []string{"initramfs"}},
		{Path: "initramfs", Imports: []string{"images/disk"}},
		{Path: "qemu/cmd/demo", Imports: []string{"qemu"}},
		{Path: "cmd/ctl", Imports: []string{"qemu", "appliance"}},
	}
	want := []string{
		`storage/nbd/internal/x imports appliance/linux, against "appliance -> attest, storage: nothing under attest/ or storage/ imports appliance"`,
		`initramfs imports images/disk, against "images -> initramfs: initramfs does not import images"`,
		`cmd/ctl imports qemu, against "qemu is test and run infrastructure: no production package outside qemu/ imports it"`,
		`storage/nbd imports storage, against "storage/nbd serves any backend: nothing under storage/nbd imports storage"`,
	}
	if got := Check(Rules, pkgs); !slices.Equal(got, want) {
		t.Errorf("Check:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestMatch(t *testing.T) {
	for _, tc := range []struct {
		pattern, path string
		want          bool
	}{
		{"...", "a/b", true}, {"a/...", "a", true}, {"a/...", "a/b/c", true}, {"a/...", "ab", false},
		{"storage", "storage", true}, {"storage", "storage/nbd", false},
	} {
		if got := match(tc.pattern, tc.path); got != tc.want {
			t.Errorf("match(%q, %q) = %v", tc.pattern, tc.path, got)
		}
	}
}

func TestDecodeAndGenerate(t *testing.T) {
	const m = "example.com/m"
	in := `{"ImportPath": "example.com/m/a", "Doc": "Package a does | things.", "Imports": ["example.com/m/b", "fmt"]}
{"ImportPath": "example.com/m/b", "Doc": "Package b is b."}
`
	pkgs, err := decode(strings.NewReader(in), m)
	if err != nil {
		t.Fatal(err)
	}
	gen := Generate(m, pkgs)
	for _, row := range []string{"| `a` | Package a does \\| things. | `b` |\n", "| `b` | Package b is b. |  |\n"} {
		if !strings.Contains(gen, row) {
			t.Errorf("generated section lacks %q:\n%s", row, gen)
		}
	}
	doc := "# T\n\nhand\n" + BeginMarker + "\nold\n" + EndMarker + "\n\nmore hand\n"
	got, err := Splice(doc, gen)
	if err != nil {
		t.Fatal(err)
	}
	if want := "# T\n\nhand\n" + BeginMarker + "\n" + gen + EndMarker + "\n\nmore hand\n"; got != want {
		t.Errorf("Splice:\n%s\nwant\n%s", got, want)
	}
	if _, err := Splice("no markers", gen); err == nil {
		t.Error("Splice accepted a document without markers")
	}
}

func TestLineDiff(t *testing.T) {
	if got, want := lineDiff("a\nb\nc\n", "a\nx\nc\n"), "-2: b\n+2: x\n"; got != want {
		t.Errorf("lineDiff = %q, want %q", got, want)
	}
}
