# Appliance initramfs, QEMU harness and demo.
.PHONY: initramfs e2e

APPLIANCE_DEMO := $(GO) run ./qemu/cmd/embassy-demo

## demo: the whole chain under QEMU: verifier, enrollment, release, boot, NBD I/O
demo: deps
	$(APPLIANCE_DEMO) -dir $(BUILD)/demo

## initramfs: build the appliance initramfs (demo configuration) into build/demo/image
initramfs:
	$(APPLIANCE_DEMO) -dir $(BUILD)/demo -build-only

## e2e: only the QEMU end-to-end scenarios
e2e:
	$(GO) test -count=1 -timeout 60m -v -run 'TestE2E|TestBareBoot|TestApplianceBoot' ./qemu/

RACE_PKGS += ./appliance/...
