package archdoc

import (
	"fmt"
	"strings"
)

// Rule forbids packages matching From to import packages matching To.
// A pattern "x/..." matches x and every package below it, "..." every
// package; any other pattern one package. Packages matching Except are
// exempt from the rule.
type Rule struct {
	Name     string
	From, To []string
	Except   []string
}

// Rules are the layering rules of docs/architecture.md (from DESIGN.md's
// "dependencies point one way").
var Rules = []Rule{
	{Name: "appliance -> attest, storage: nothing under attest/ or storage/ imports appliance",
		From: []string{"attest/...", "storage/..."}, To: []string{"appliance/..."}},
	{Name: "cmd -> appliance: nothing outside cmd/ imports a command",
		From: []string{"..."}, Except: []string{"cmd/..."}, To: []string{"cmd/..."}},
	{Name: "images -> initramfs: initramfs does not import images",
		From: []string{"initramfs/..."}, To: []string{"images/..."}},
	{Name: "qemu is test and run infrastructure: no production package outside qemu/ imports it",
		From: []string{"..."}, Except: []string{"qemu/..."}, To: []string{"qemu/..."}},
	{Name: "storage/nbd serves any backend: nothing under storage/nbd imports storage",
		From: []string{"storage/nbd/..."}, To: []string{"storage"}},
}

func match(pattern, path string) bool {
	if pattern == "..." {
		return true
	}
	if base, ok := strings.CutSuffix(pattern, "/..."); ok {
		return path == base || strings.HasPrefix(path, base+"/")
	}
	return path == pattern
}

func matchAny(patterns []string, path string) bool {
	for _, p := range patterns {
		if match(p, path) {
			return true
		}
	}
	return false
}

// Check returns one line per import that breaks a rule, naming the rule,
// the importing package and the import.
func Check(rules []Rule, pkgs []Package) []string {
	var bad []string
	for _, r := range rules {
		for _, p := range pkgs {
			if !matchAny(r.From, p.Path) || matchAny(r.Except, p.Path) {
				continue
			}
			for _, imp := range p.Imports {
				if matchAny(r.To, imp) {
					bad = append(bad, fmt.Sprintf("%s imports %s, against %q", p.Path, imp, r.Name))
				}
			}
		}
	}
	return bad
}
