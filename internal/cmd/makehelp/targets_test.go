package main

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// root is the module root, from this package's directory.
const root = "../../.."

func writeFile(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "Makefile")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name, text string
		help       string // Write's output
		bad        string // in Check's error, "" for none
	}{
		{"documented", "## a: does a\na: b\n\techo a: b\n## b: does b\nb:\n", "  a  does a\n  b  does b\n", ""},
		{"assignments are no rules", "X := y\nY ?= a:b\nexport Z = 1\n## a: A\na:\n", "  a  A\n", ""},
		{"special and variable targets", ".PHONY: a\n$(BUILD)/x: y\n## a: A\na::\n", "  a  A\n", ""},
		{"several targets on one rule", "## a: A\n## b: B\na b: c\n", "  a  A\n  b  B\n", ""},
		{"undocumented", "## a: A\na:\nb: a\n", "  a  A\n  b  \n", "target b has no"},
		{"doc without rule", "## a: A\n## gone: G\na:\n", "  a  A\n", "doc for gone, which no rule defines"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			targets, err := ParseFiles(writeFile(t, tc.text))
			if err != nil {
				t.Fatal(err)
			}
			var b strings.Builder
			Write(&b, targets)
			if b.String() != tc.help {
				t.Errorf("help:\n%q\nwant\n%q", b.String(), tc.help)
			}
			err = Check(targets)
			switch {
			case tc.bad == "" && err != nil:
				t.Errorf("Check: %v", err)
			case tc.bad != "" && (err == nil || !strings.Contains(err.Error(), tc.bad)):
				t.Errorf("Check: %v, want an error with %q", err, tc.bad)
			}
		})
	}
}

func TestSecondDoc(t *testing.T) {
	if _, err := ParseFiles(writeFile(t, "## a: A\n## a: again\na:\n")); err == nil {
		t.Fatal("two docs for one target accepted")
	}
}

func repoTargets(t *testing.T) []Target {
	t.Helper()
	mk, err := filepath.Glob(filepath.Join(root, "mk", "*.mk"))
	if err != nil {
		t.Fatal(err)
	}
	targets, err := ParseFiles(append([]string{filepath.Join(root, "Makefile")}, mk...)...)
	if err != nil {
		t.Fatal(err)
	}
	return targets
}

// TestRepoTargetsDocumented is `make help`'s check on this repository's
// make files, so that `go test ./...` shows an undocumented target.
func TestRepoTargetsDocumented(t *testing.T) {
	if err := Check(repoTargets(t)); err != nil {
		t.Fatal(err)
	}
}

// TestReadmeTargets keeps the README's targets table and `make help` in
// step: the table names every target once, and only targets.
func TestReadmeTargets(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, table, ok := strings.Cut(string(readme), "### `make test` and other targets\n")
	if !ok {
		t.Fatal("README.md has no \"### `make test` and other targets\" section")
	}
	table, _, _ = strings.Cut(table, "\n###")
	var inReadme []string
	cell := regexp.MustCompile("^\\| ([^|]+) \\|")
	name := regexp.MustCompile("`make ([A-Za-z0-9_.-]+)`")
	for _, line := range strings.Split(table, "\n") {
		if m := cell.FindStringSubmatch(line); m != nil {
			for _, n := range name.FindAllStringSubmatch(m[1], -1) {
				inReadme = append(inReadme, n[1])
			}
		}
	}
	var inMake []string
	for _, tg := range repoTargets(t) {
		if tg.Defined {
			inMake = append(inMake, tg.Name)
		}
	}
	slices.Sort(inReadme)
	slices.Sort(inMake)
	for _, n := range inMake {
		if !slices.Contains(inReadme, n) {
			t.Errorf("README.md's targets table lacks `make %s`", n)
		}
	}
	for i, n := range inReadme {
		if !slices.Contains(inMake, n) {
			t.Errorf("README.md's targets table names `make %s`, which no make file defines", n)
		}
		if i > 0 && inReadme[i-1] == n {
			t.Errorf("README.md's targets table names `make %s` twice", n)
		}
	}
}
