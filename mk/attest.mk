# Attestation and key release (attest/, cmd/embassy-verifier).
.PHONY: test-attest bench-verifier bench-verifier-handler fuzz-attest

RACE_PKGS += ./attest/verifier/ ./attest/agent/ ./attest/tpm/ ./attest/admin/

## test-attest: attest packages and the verifier CLI tests (real swtpm), the verifier suite again on PostgreSQL
test-attest:
	$(GO) test -count=1 -timeout 20m ./attest/... ./cmd/embassy-verifier/...
	EMBASSY_TEST_DB=postgres $(GO) test -count=1 -timeout 20m ./attest/verifier/
	$(GO) test -count=1 -run 'TestEnrollListRevokeAudit|TestReleasePublishThreshold|TestHelpEverywhere|TestAPIMode' ./cmd/embassyctl/

# Load test knobs (see attest/verifier/bench_test.go).
BENCH_ATTESTATIONS ?= 2000
BENCH_CLIENTS ?= 8
BENCH_APPLIANCES ?= 4

BENCH_UNLOCKS ?= 60

## bench-verifier: verifier load test (quotes made ahead on several swtpm, concurrent HTTPS clients; attestations/s, p50/p99, CPU per process) on SQLite in-process, one and two embassy-verifier processes on one PostgreSQL, and its threshold mode (agent unlock latency against 3 verifiers, 2 of 3, beside 1)
bench-verifier:
	@out=$$(mktemp); for p in unlock heartbeat; do \
	  EMBASSY_BENCH_PURPOSE=$$p EMBASSY_BENCH_ATTESTATIONS=$(BENCH_ATTESTATIONS) \
	  EMBASSY_BENCH_CLIENTS=$(BENCH_CLIENTS) EMBASSY_BENCH_APPLIANCES=$(BENCH_APPLIANCES) \
	  EMBASSY_BENCH_CONFIGS=sqlite,postgres:1,postgres:2 \
	  $(GO) test -run '^$$' -bench BenchmarkVerifierLoad -benchtime=1x -count=1 -timeout 30m ./attest/verifier/ >$$out 2>&1; rc=$$?; \
	  grep -E 'Benchmark|attestations|FAIL' $$out; [ $$rc = 0 ] || { cat $$out; rm -f $$out; exit 1; }; \
	done; rm -f $$out
	@EMBASSY_BENCH_UNLOCKS=$(BENCH_UNLOCKS) $(GO) test -run '^$$' -bench BenchmarkUnlockVerifiers -benchtime=1x -count=1 ./attest/verifier/ | grep -E 'Benchmark|unlocks each|FAIL'

## bench-verifier-handler: the server's own CPU per full verification (no TLS/HTTP/clients), quotes made ahead
bench-verifier-handler:
	@for p in unlock heartbeat; do \
	  EMBASSY_BENCH_PURPOSE=$$p $(GO) test -run '^$$' -bench BenchmarkAttestHandler -benchtime=300x -count=1 ./attest/verifier/ | grep -E 'Benchmark|FAIL' || exit 1; \
	done

## fuzz-attest: run each attestation parser's fuzz target (key shares, protocol, logs, releases, verifier handler, admin API) for 30 s
fuzz-attest:
	$(GO) test -run XXX -fuzz FuzzParseShare -fuzztime 30s ./attest/keys/
	@for f in FuzzAttestRequest FuzzNonceRequest FuzzEnrollChallengeRequest FuzzEnrollActivateRequest; do \
	  $(GO) test -run XXX -fuzz "^$$f\$$" -fuzztime 30s ./attest/protocol/ || exit 1; done
	$(GO) test -run XXX -fuzz FuzzParse -fuzztime 30s ./attest/measure/
	$(GO) test -run XXX -fuzz FuzzParseEnvelope -fuzztime 30s ./attest/release/
	$(GO) test -run XXX -fuzz FuzzParseManifest -fuzztime 30s ./attest/release/
	$(GO) test -run XXX -fuzz FuzzHandler -fuzztime 30s ./attest/admin/
	$(GO) test -run XXX -fuzz FuzzAttestHandler -fuzztime 30s ./attest/verifier/
