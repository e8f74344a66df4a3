# Storage (storage/, embassyctl store): benchmarks and the crash soak.
# ./storage/... is already in RACE_PKGS (shared Makefile default).

.PHONY: bench-store soak-store test-store
BENCH_STORE_TIME ?= 500ms
SOAK_SCHEDULES ?= 50000

## test-store: the storage package and its CLI, with -race on the package
test-store:
	$(GO) test -count=1 ./storage/ ./cmd/embassyctl/
	CGO_ENABLED=1 $(GO) test -count=1 -race ./storage/

## bench-store: store vs plain os.File I/O and vs the pure AES-GCM ceiling (no I/O), side by side; prints the medians of per-round ratios
# Each plain/gcm/store (and, with BENCH_STORE_PREAD=1, the default,
# store-pread: a store reading with pread instead of through its file
# mapping) group runs back to back, BENCH_STORE_ROUNDS times alternating;
# internal/cmd/benchtable prints the medians of the per-round ratios (the
# machine is shared, so single runs drift).
BENCH_STORE_ROUNDS ?= 3
BENCH_STORE_PREAD ?= 1
bench-store:
	@mkdir -p $(BUILD)
	STORAGE_BENCH_PREAD=$(BENCH_STORE_PREAD) STORAGE_BENCH_ROUNDS=$(BENCH_STORE_ROUNDS) $(GO) test -run '^$$' -bench 'BenchmarkStore' -benchtime $(BENCH_STORE_TIME) ./storage/ | tee $(BUILD)/bench-store.txt
	@$(GO) run ./internal/cmd/benchtable $(BUILD)/bench-store.txt

## soak-store: many more power-cut schedules (SOAK_SCHEDULES)
soak-store:
	STORAGE_CRASH_SCHEDULES=$(SOAK_SCHEDULES) $(GO) test -count=1 -timeout 0 -run 'TestCrashConsistency' ./storage/

## soak: the long soaks (soak-store)
soak: soak-store
