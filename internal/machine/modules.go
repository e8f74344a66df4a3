//go:build linux

package machine

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrNoModuleOrder reports a modules directory without its "order" file:
// the image ships no modules.
var ErrNoModuleOrder = errors.New("machine: no module order file")

// LoadModules loads, with finit_module and in order, the modules named one
// a line (file names, e.g. nbd.ko) in dir/order, passing params[name] (name
// without .ko) as a module's parameters. An already loaded (or built-in)
// module is fine. It returns how many modules it loaded.
func LoadModules(dir string, params map[string]string) (int, error) {
	f, err := os.Open(filepath.Join(dir, "order"))
	if errors.Is(err, os.ErrNotExist) {
		return 0, fmt.Errorf("%w: %w", ErrNoModuleOrder, err)
	}
	if err != nil {
		return 0, fmt.Errorf("machine: %w", err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	n := 0
	for s.Scan() {
		file := strings.TrimSpace(s.Text())
		if file == "" {
			continue
		}
		if err := loadModule(filepath.Join(dir, file), params[strings.TrimSuffix(file, ".ko")]); err != nil {
			return n, err
		}
		n++
	}
	if err := s.Err(); err != nil {
		return n, fmt.Errorf("machine: reading module order: %w", err)
	}
	return n, nil
}

func loadModule(path, params string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("machine: module %s: %w", path, err)
	}
	defer f.Close()
	if err := unix.FinitModule(int(f.Fd()), params, 0); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("machine: loading module %s: %w", filepath.Base(path), err)
	}
	return nil
}
