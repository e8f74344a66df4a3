# NBD server (storage/nbd): race tests and the fio comparison benchmark.
RACE_PKGS += ./storage/nbd/...

.PHONY: bench-nbd
## bench: the NBD benchmark (bench-nbd)
bench: bench-nbd
## bench-nbd: build, then compare our NBD server with nbdkit using fio (writes docs/performance-nbd.md)
bench-nbd:
	scripts/bench-nbd.sh
