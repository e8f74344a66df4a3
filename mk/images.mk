# Boot images (images/): UKI + GPT disk image + predicted PCRs.
# The QEMU boot tests run in `make test` (go test ./...).

# `make image` builds the initrd it boots (initramfs-disk) unless
# IMAGE_INITRD names another one.
IMAGE_INITRD_DIR := $(BUILD)/initramfs-disk
DEFAULT_IMAGE_INITRD := $(IMAGE_INITRD_DIR)/image/initrd.gz
IMAGE_INITRD ?= $(DEFAULT_IMAGE_INITRD)
IMAGE_RELEASE ?= dev
IMAGE_DATA_MIB ?= 256
IMAGE_OUT ?= $(BUILD)/release-$(IMAGE_RELEASE)

.PHONY: image initramfs-disk test-images fuzz-images demo-disk e2e-disk

## initramfs-disk: build the appliance initramfs for a disk image (demo configuration, store on the embassy-store partition) into build/initramfs-disk/image
initramfs-disk:
	$(APPLIANCE_DEMO) -dir $(IMAGE_INITRD_DIR) -build-only -disk-image

## image: UKI, GPT disk image and unsigned manifest (PCR 15 pinned) of IMAGE_INITRD (default: initramfs-disk's) into IMAGE_OUT, replacing an earlier build there
image: build $(if $(filter $(DEFAULT_IMAGE_INITRD),$(IMAGE_INITRD)),initramfs-disk)
	rm -f $(addprefix $(IMAGE_OUT)/,uki.efi disk.img manifest.json events.txt)
	$(BUILD)/embassyctl image build -initrd $(IMAGE_INITRD) -appliance-pcr -data-mib $(IMAGE_DATA_MIB) -release $(IMAGE_RELEASE) -out $(IMAGE_OUT)

## test-images: the images packages' tests only (QEMU boots included; the appliance booted from its disk image is qemu TestE2EDiskImage*)
test-images:
	$(GO) test -count=1 -timeout 20m ./images/... ./cmd/embassyctl/

## fuzz-images: run each images fuzz target for 30 s
fuzz-images:
	$(GO) test -run XXX -fuzz FuzzHash -fuzztime 30s ./images/authenticode/
	$(GO) test -run XXX -fuzz FuzzUKIEvents -fuzztime 30s ./images/predict/
	$(GO) test -run XXX -fuzz FuzzGPTEventData -fuzztime 30s ./images/predict/
	$(GO) test -run XXX -fuzz FuzzInitramfsPCR -fuzztime 30s ./images/predict/

## demo-disk: the demo booting the appliance from a UKI disk image through OVMF (release predicted from the files, signed 2 of 3)
demo-disk: deps
	$(APPLIANCE_DEMO) -dir $(BUILD)/demo-disk -disk-image

## e2e-disk: only the QEMU scenarios that boot the appliance from its UKI disk image
e2e-disk: deps
	$(GO) test -count=1 -timeout 20m -run 'TestE2EDiskImage' -v ./qemu/
