# Storage (storage/, embassyctl store): benchmarks and the crash soak.
# ./storage/... is already in RACE_PKGS (shared Makefile default).

.PHONY: bench-store soak-store test-store
BENCH_STORE_TIME ?= 1s
SOAK_SCHEDULES ?= 50000

## test-store: the storage package and its CLI, with -race on the package
test-store:
	$(GO) test -count=1 ./storage/ ./cmd/embassyctl/
	CGO_ENABLED=1 $(GO) test -count=1 -race ./storage/

## bench-store: store vs plain os.File I/O, side by side; prints ratios
bench-store:
	@mkdir -p $(BUILD)
	$(GO) test -run '^$$' -bench 'BenchmarkStore' -benchtime $(BENCH_STORE_TIME) ./storage/ | tee $(BUILD)/bench-store.txt
	@awk '/^BenchmarkStore\// { split($$1, p, "/"); t = p[4]; sub(/-[0-9]+$$/, "", t); \
	    key = p[2] " " p[3]; for (i = 1; i <= NF; i++) if ($$i == "MB/s") v[key, t] = $$(i-1); keys[key] = 1; order[++n] = key } \
	  END { printf "\n%-14s %-8s %12s %12s %7s\n", "workload", "conc", "plain MB/s", "store MB/s", "ratio"; \
	    for (i = 1; i <= n; i++) { k = order[i]; if (seen[k]++) continue; split(k, a, " "); \
	      printf "%-14s %-8s %12.0f %12.0f %7.2f\n", a[1], a[2], v[k, "plain"], v[k, "store"], v[k, "store"] / v[k, "plain"] } }' \
	  $(BUILD)/bench-store.txt

## soak-store: many more power-cut schedules (SOAK_SCHEDULES)
soak-store:
	STORAGE_CRASH_SCHEDULES=$(SOAK_SCHEDULES) $(GO) test -count=1 -timeout 0 -run 'TestCrashConsistency' ./storage/

soak: soak-store
