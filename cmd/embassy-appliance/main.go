// Command embassy-appliance is the on-rack program. u-root's init starts it
// as its uinit (bin/uinit links to it) with the serial console as stdout.
// It measures itself and its configuration into PCR 15, loads its kernel
// modules, brings up the network, attests to the verifier, unlocks the
// authenticated store on the data disk and serves it over NBD with mutual
// TLS, renewing its lease until it is refused or revoked. See
// docs/appliance.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/dataembassy/embassy/appliance"
	"github.com/dataembassy/embassy/appliance/linux"
	"github.com/dataembassy/embassy/appliance/metrics"
	"github.com/dataembassy/embassy/appliance/wiring"
	"github.com/dataembassy/embassy/attest/measure"
	"github.com/dataembassy/embassy/attest/tpm"
)

func main() {
	// An own flag set: dependencies register flags of theirs (SEV, TDX
	// devices) on flag.CommandLine that mean nothing here.
	fs := flag.NewFlagSet("embassy-appliance", flag.ExitOnError)
	configPath := fs.String("config", measure.ConfigPath, "appliance configuration (JSON; measured as "+measure.ConfigPath+")")
	tpmPath := fs.String("tpm", tpm.DefaultDevice, "TPM device")
	fs.Parse(os.Args[1:])

	log := appliance.ConsoleLogger(os.Stdout)
	slog.SetDefault(log)
	err := run(context.Background(), log, *configPath, *tpmPath)
	// Never return to init: with no shell in a production image the kernel
	// would panic and the machine reboot-loop. Stay up and say why.
	log.Error("HALTED", "err", err)
	select {}
}

func run(ctx context.Context, log *slog.Logger, configPath, tpmPath string) error {
	start := time.Now()
	if err := linux.MountSystem(); err != nil {
		return err
	}
	cfgBytes, err := os.ReadFile(configPath)
	if err != nil {
		return fmt.Errorf("reading configuration: %w", err)
	}
	self, err := os.ReadFile(measure.BinaryPath)
	if err != nil {
		return fmt.Errorf("reading own binary: %w", err)
	}
	cfg, err := appliance.ParseConfig(cfgBytes)
	if err != nil {
		return err
	}

	// Separate TPM handles (the kernel resource manager gives each its own
	// context) so the attestation agent and the rollback counter never
	// interleave commands.
	agentTPM, err := openTPM(tpmPath)
	if err != nil {
		return err
	}
	counterTPM, err := openTPM(tpmPath)
	if err != nil {
		return err
	}
	counter, err := tpm.OpenNVCounter(counterTPM, tpm.DefaultCounterIndex)
	if err != nil {
		return fmt.Errorf("rollback counter: %w", err)
	}

	measurer, attester, err := wiring.NewAttestation(cfg, agentTPM, log)
	if err != nil {
		return err
	}
	defer attester.Close()
	// The measurement plan is the one images/predict predicts PCR 15 from.
	var measurements []appliance.Measurement
	for _, s := range measure.AppliancePlan(self, cfgBytes) {
		measurements = append(measurements, appliance.Measurement(s))
	}
	exporter := &wiring.Exporter{Config: cfg.NBD, Logger: log}
	var monitor appliance.Monitor
	if cfg.Metrics != nil {
		m, err := metrics.New(metrics.Options{Config: cfg.Metrics, Logger: log})
		if err != nil {
			return err
		}
		defer m.Close()
		exporter.Observer, monitor = m, m
	}
	a, err := appliance.New(appliance.Options{
		Config:       cfg,
		Measurements: measurements,
		// The release PCRs of a UKI boot from disk (docs/disk-image.md), the
		// phase and the appliance log: operators compare them with a release.
		ReportPCRs: []int{4, 9, 11, 12, 13, tpm.PCRPhase, tpm.PCRAppliance},
		Platform:   &linux.Platform{Logger: log},
		Measurer:   measurer,
		PCRs:       linux.SysfsPCRs{},
		Attester:   attester,
		Storage:    &wiring.Storage{Counter: counter, Logger: log},
		Exporter:   exporter,
		Monitor:    monitor,
		Logger:     log,
	})
	if err != nil {
		return err
	}
	log.Info("appliance program started", "uptime_at_start", uptime(), "config_parse", time.Since(start).Round(time.Millisecond))
	err = a.Run(ctx)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// openTPM waits briefly for the TPM device node (devtmpfs populates it as
// the driver binds) and opens it.
func openTPM(path string) (io.ReadWriteCloser, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		rw, err := tpm.Open(path)
		if err == nil {
			return rw, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("opening TPM %s: %w", path, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// uptime is the kernel's uptime: how long the machine took to get here.
func uptime() string {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return "?"
	}
	var up float64
	fmt.Sscanf(string(b), "%f", &up)
	return fmt.Sprintf("%.2fs", up)
}
