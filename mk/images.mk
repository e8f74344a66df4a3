# Boot images (images/): UKI + GPT disk image + predicted PCRs.
# The QEMU boot tests run in `make test` (go test ./...).

IMAGE_INITRD ?= $(BUILD)/initrd.gz
IMAGE_RELEASE ?= dev
IMAGE_OUT ?= $(BUILD)/release-$(IMAGE_RELEASE)

.PHONY: image test-images fuzz-images demo-disk e2e-disk

## image: build UKI, disk image and unsigned manifest from IMAGE_INITRD into IMAGE_OUT
image: build
	$(BUILD)/embassyctl image build -initrd $(IMAGE_INITRD) -release $(IMAGE_RELEASE) -out $(IMAGE_OUT)

## test-images: the images packages' tests only (QEMU boots included; the appliance booted from its disk image is qemu TestE2EDiskImage*)
test-images:
	$(GO) test -count=1 -timeout 20m ./images/... ./cmd/embassyctl/

## fuzz-images: run each images fuzz target for 30 s
fuzz-images:
	$(GO) test -run XXX -fuzz FuzzHash -fuzztime 30s ./images/authenticode/
	$(GO) test -run XXX -fuzz FuzzUKIEvents -fuzztime 30s ./images/predict/
	$(GO) test -run XXX -fuzz FuzzGPTEventData -fuzztime 30s ./images/predict/
	$(GO) test -run XXX -fuzz FuzzAppliancePCR -fuzztime 30s ./images/

## demo-disk: the demo booting the appliance from a UKI disk image through OVMF (release predicted from the files, signed 2 of 3)
demo-disk: deps
	$(GO) run ./qemu/cmd/embassy-demo -dir $(BUILD)/demo-disk -disk-image

## e2e-disk: only the QEMU scenarios that boot the appliance from its UKI disk image
e2e-disk: deps
	$(GO) test -count=1 -timeout 20m -run 'TestE2EDiskImage' -v ./qemu/
