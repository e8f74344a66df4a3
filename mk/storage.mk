# Storage (storage/, embassyctl store): benchmarks and the crash soak.
# ./storage/... is already in RACE_PKGS (shared Makefile default).

.PHONY: bench-store soak-store test-store
BENCH_STORE_TIME ?= 500ms
SOAK_SCHEDULES ?= 50000

## test-store: the storage package and its CLI, with -race on the package
test-store:
	$(GO) test -count=1 ./storage/ ./cmd/embassyctl/
	CGO_ENABLED=1 $(GO) test -count=1 -race ./storage/

## bench-store: store vs plain os.File I/O and vs the pure AES-GCM ceiling
## (no I/O), side by side; prints ratios. Each plain/gcm/store (and, with
## BENCH_STORE_PREAD=1, the default, store-pread: a store reading with
## pread instead of through its file mapping) group runs back to back,
## BENCH_STORE_ROUNDS times alternating; the table shows the medians of the
## per-round ratios (the machine is shared, so single runs drift).
BENCH_STORE_ROUNDS ?= 3
BENCH_STORE_PREAD ?= 1
bench-store:
	@mkdir -p $(BUILD)
	STORAGE_BENCH_PREAD=$(BENCH_STORE_PREAD) STORAGE_BENCH_ROUNDS=$(BENCH_STORE_ROUNDS) $(GO) test -run '^$$' -bench 'BenchmarkStore' -benchtime $(BENCH_STORE_TIME) ./storage/ | tee $(BUILD)/bench-store.txt
	@awk 'function med(a, n,   i, j, t) { for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j-1] > a[j]; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t } \
	      return n % 2 ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2 } \
	  /^BenchmarkStore/ && /MB\/s/ { n = split($$1, p, "/"); t = p[n]; sub(/-[0-9]+$$/, "", t); sub(/#[0-9]+$$/, "", t); \
	    key = p[2]; for (i = 3; i < n; i++) key = key " " p[i]; \
	    for (i = 1; i <= NF; i++) if ($$i == "MB/s") v = $$(i-1); \
	    if (!(key in seen)) { seen[key] = 1; order[++m] = key } \
	    if (t == "plain") { last[key] = v; delete gcm[key] } \
	    else if (t == "gcm") gcm[key] = v; \
	    else if (t == "store-pread" && key in last) { q = ++pc[key]; PR[key, q] = v / last[key] } \
	    else if (t == "store" && key in last) { c = ++cnt[key]; R[key, c] = v / last[key]; P[key, c] = last[key]; S[key, c] = v; \
	      if (key in gcm) { hasg[key] = 1; G[key, c] = gcm[key]; RG[key, c] = v / gcm[key] } } } \
	  END { printf "\n%-28s %11s %11s %11s %11s %11s %11s %5s\n", "workload", "plain MB/s", "gcm MB/s", "store MB/s", "store/plain", "store/gcm", "pread/plain", "runs"; \
	    for (i = 1; i <= m; i++) { k = order[i]; c = cnt[k]; delete r; delete pp; delete ss; delete gg; delete rg; delete pr; \
	      for (j = 1; j <= c; j++) { r[j] = R[k, j]; pp[j] = P[k, j]; ss[j] = S[k, j]; gg[j] = G[k, j]; rg[j] = RG[k, j] } \
	      for (j = 1; j <= pc[k]; j++) pr[j] = PR[k, j]; \
	      g1 = (k in hasg) ? sprintf("%11.1f", med(gg, c)) : sprintf("%11s", "-"); g2 = (k in hasg) ? sprintf("%11.2f", med(rg, c)) : sprintf("%11s", "-"); \
	      p1 = pc[k] ? sprintf("%11.2f", med(pr, pc[k])) : sprintf("%11s", "-"); \
	      printf "%-28s %11.1f %s %11.1f %11.2f %s %s %5d\n", k, med(pp, c), g1, med(ss, c), med(r, c), g2, p1, c } }' \
	  $(BUILD)/bench-store.txt

## soak-store: many more power-cut schedules (SOAK_SCHEDULES)
soak-store:
	STORAGE_CRASH_SCHEDULES=$(SOAK_SCHEDULES) $(GO) test -count=1 -timeout 0 -run 'TestCrashConsistency' ./storage/

soak: soak-store
