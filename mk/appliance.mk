# Appliance initramfs, QEMU harness and demo.
.PHONY: initramfs e2e e2e-threshold bench-verifier-boot

APPLIANCE_DEMO := $(GO) run ./qemu/cmd/embassy-demo

## demo: the whole chain under QEMU: verifier, enrollment, release, boot, NBD I/O
demo: deps
	$(APPLIANCE_DEMO) -dir $(BUILD)/demo

## initramfs: build the appliance initramfs (demo configuration) into build/demo/image
initramfs:
	$(APPLIANCE_DEMO) -dir $(BUILD)/demo -build-only

## e2e: only the QEMU end-to-end scenarios
e2e:
	$(GO) test -count=1 -timeout 60m -v -run 'TestE2E|TestBareBoot|TestApplianceBoot|TestVerifierProcess' ./qemu/

## e2e-threshold: only the QEMU scenarios with real verifier processes: k of n key grants (kill one, then two) and the upgrade that keeps the store
e2e-threshold: deps
	$(GO) test -count=1 -timeout 30m -v -run 'TestVerifierProcess|TestE2EThreshold|TestE2EUpgrade' ./qemu/

## bench-verifier-boot: QEMU start to serving NBD against 3 verifier processes (2 of 3) beside 1 (1 of 1)
bench-verifier-boot: deps
	$(GO) test -run '^$$' -bench BenchmarkBootVerifiers -benchtime 1x -timeout 30m ./qemu/ | grep -E 'Benchmark|FAIL|ok'

RACE_PKGS += ./appliance/...
