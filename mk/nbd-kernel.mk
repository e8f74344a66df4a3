# The Linux kernel NBD client against our server (storage/nbd, QEMU guest).
# Part of `make test` already (go test ./storage/nbd); these run it alone.
# ./storage/nbd/... (the kernelclient handshake tests) is in RACE_PKGS via
# mk/nbd.mk; the QEMU test itself is built with !race.

.PHONY: test-nbd-kernel fuzz-nbd-kernel

## test-nbd-kernel: only the kernel client QEMU test and the client's handshake tests
test-nbd-kernel:
	$(GO) test -count=1 -v -run 'TestLinuxKernelClient' ./storage/nbd/
	$(GO) test -count=1 ./storage/nbd/internal/kernelclient/

## fuzz-nbd-kernel: fuzz the kernel client's handshake parser for 30 s
fuzz-nbd-kernel:
	$(GO) test -run XXX -fuzz FuzzNegotiate -fuzztime 30s ./storage/nbd/internal/kernelclient/
