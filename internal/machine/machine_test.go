//go:build linux

package machine_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/dataembassy/embassy/internal/machine"
)

func TestWaitFor(t *testing.T) {
	n := 0
	if !machine.WaitFor(context.Background(), time.Second, func() bool { n++; return n == 3 }) || n != 3 {
		t.Errorf("WaitFor gave up after %d polls", n)
	}
	if machine.WaitFor(context.Background(), 30*time.Millisecond, func() bool { return false }) {
		t.Error("WaitFor of a condition never met returned true")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if machine.WaitFor(ctx, time.Minute, func() bool { return false }) {
		t.Error("WaitFor with a cancelled context returned true")
	}
}

// TestLoadModulesWithoutModules covers what needs no finit_module: a
// directory without an order file, an empty order, a module file missing.
func TestLoadModulesWithoutModules(t *testing.T) {
	dir := t.TempDir()
	if _, err := machine.LoadModules(dir, nil); !errors.Is(err, machine.ErrNoModuleOrder) {
		t.Errorf("no order file: %v, want ErrNoModuleOrder", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "order"), []byte("\n \n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if n, err := machine.LoadModules(dir, nil); n != 0 || err != nil {
		t.Errorf("empty order: %d, %v", n, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "order"), []byte("absent.ko\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := machine.LoadModules(dir, nil); err == nil || errors.Is(err, machine.ErrNoModuleOrder) {
		t.Errorf("missing module file: %v, want an error other than ErrNoModuleOrder", err)
	}
}

func TestConfigureNetworkMissingInterface(t *testing.T) {
	_, err := machine.ConfigureNetwork(context.Background(), machine.Network{Interface: "embassy-none0", Mode: machine.Static, Address: "10.0.2.15/24"}, 30*time.Millisecond)
	if err == nil {
		t.Error("an interface that does not exist was configured")
	}
}
