package initramfs

import (
	"bufio"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// ErrModuleNotFound reports that a requested kernel module (or one of its
// dependencies) is neither a loadable .ko in the module tree nor built in.
var ErrModuleNotFound = errors.New("initramfs: kernel module not found")

// Module is one loadable kernel module resolved from a module tree.
type Module struct {
	// Name is the module's canonical name (dashes folded to underscores).
	Name string
	// Path is the .ko file on the build host.
	Path string
	// Depends lists the loadable modules this one needs, by canonical name.
	Depends []string
}

// DefaultModules are the loadable modules the appliance needs on a q35
// machine: virtio PCI transport, the data disk and the network card. Their
// dependencies are added by ResolveModules.
var DefaultModules = []string{"virtio_pci", "virtio_blk", "virtio_net"}

// canonical folds a module name the way the kernel does: '-' and '_' are the
// same character in module names.
func canonical(name string) string {
	return strings.ReplaceAll(strings.TrimSuffix(name, ".ko"), "-", "_")
}

// ResolveModules finds the named modules under dir (a lib/modules/<version>
// directory) and returns them together with their dependencies in load
// order: every module after all of its dependencies; ties broken by name so
// the order is deterministic. Dependencies come from each .ko's .modinfo
// "depends=" entry, so no modules.dep (depmod) is needed. Modules the kernel
// has built in (modules.builtin) are satisfied without a file.
//
// Compressed modules (.ko.xz, .ko.zst) are not supported: Debian's cloud
// kernel ships plain .ko files and finit_module would need the kernel's
// decompression support.
func ResolveModules(dir string, names []string) ([]Module, error) {
	index := map[string]string{}
	err := filepath.WalkDir(filepath.Join(dir, "kernel"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(p, ".ko") {
			index[canonical(filepath.Base(p))] = p
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("initramfs: scanning module tree %s: %w", dir, err)
	}
	builtin, err := readBuiltin(filepath.Join(dir, "modules.builtin"))
	if err != nil {
		return nil, err
	}

	resolved := map[string]*Module{}
	var visit func(name string, chain []string) error
	visit = func(name string, chain []string) error {
		name = canonical(name)
		if _, ok := resolved[name]; ok || builtin[name] {
			return nil
		}
		for _, c := range chain {
			if c == name {
				return fmt.Errorf("initramfs: module dependency cycle: %s -> %s", strings.Join(chain, " -> "), name)
			}
		}
		p, ok := index[name]
		if !ok {
			return fmt.Errorf("%w: %s (needed by %v) in %s", ErrModuleNotFound, name, chain, dir)
		}
		deps, err := moduleDepends(p)
		if err != nil {
			return err
		}
		for _, d := range deps {
			if err := visit(d, append(chain, name)); err != nil {
				return err
			}
		}
		m := &Module{Name: name, Path: p}
		for _, d := range deps {
			if !builtin[canonical(d)] {
				m.Depends = append(m.Depends, canonical(d))
			}
		}
		sort.Strings(m.Depends)
		resolved[name] = m
		return nil
	}
	sorted := append([]string(nil), names...)
	sort.Strings(sorted)
	for _, n := range sorted {
		if err := visit(n, nil); err != nil {
			return nil, err
		}
	}
	return topoOrder(resolved), nil
}

// topoOrder returns modules so that each follows its dependencies, choosing
// the alphabetically first ready module at each step (Kahn's algorithm).
func topoOrder(mods map[string]*Module) []Module {
	done := map[string]bool{}
	var out []Module
	for len(out) < len(mods) {
		var ready []string
		for name, m := range mods {
			if done[name] {
				continue
			}
			ok := true
			for _, d := range m.Depends {
				if !done[d] {
					ok = false
					break
				}
			}
			if ok {
				ready = append(ready, name)
			}
		}
		sort.Strings(ready)
		// ready is never empty: cycles were rejected while resolving.
		done[ready[0]] = true
		out = append(out, *mods[ready[0]])
	}
	return out
}

func readBuiltin(path string) (map[string]bool, error) {
	b := map[string]bool{}
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return b, nil
	}
	if err != nil {
		return nil, fmt.Errorf("initramfs: %w", err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if line := strings.TrimSpace(s.Text()); line != "" {
			b[canonical(filepath.Base(line))] = true
		}
	}
	return b, s.Err()
}

// moduleDepends reads the "depends=" entry of a module's .modinfo section.
func moduleDepends(path string) ([]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("initramfs: module %s: %w", path, err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("initramfs: module %s has no .modinfo section", path)
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("initramfs: module %s: reading .modinfo: %w", path, err)
	}
	return parseDepends(data), nil
}

// parseDepends extracts the module names of the "depends=" entry from the
// NUL-separated key=value strings of a .modinfo section.
func parseDepends(modinfo []byte) []string {
	var deps []string
	for _, kv := range bytes.Split(modinfo, []byte{0}) {
		v, ok := bytes.CutPrefix(kv, []byte("depends="))
		if !ok {
			continue
		}
		for _, d := range strings.Split(string(v), ",") {
			if d = strings.TrimSpace(d); d != "" {
				deps = append(deps, d)
			}
		}
	}
	return deps
}
