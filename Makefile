# Embassy build, test and demo entry points. Each area adds its targets in
# mk/<area>.mk; this file holds what is shared.
SHELL := /bin/bash
export CGO_ENABLED ?= 0
GO ?= go
BUILD := build

.PHONY: all help deps build test vet bench soak demo clean architecture
## all: the default: build
all: build

## help: list every target with its one-line doc (fails on a target without one)
help:
	@$(GO) run ./internal/cmd/makehelp Makefile mk/*.mk

## deps: install system packages, the browser tests' npm packages and the guest kernel (idempotent)
deps:
	@scripts/install-deps.sh
	@scripts/install-browser-deps.sh
	@if [ -x scripts/fetch-kernel.sh ]; then scripts/fetch-kernel.sh; fi

## build: the three binaries into build/
build:
	@mkdir -p $(BUILD)
	$(GO) build -trimpath -o $(BUILD)/ ./cmd/...

## vet: gofmt and go vet
vet:
	@fmt=$$(gofmt -l $$(git ls-files '*.go' ; git ls-files --others --exclude-standard '*.go')); \
	  if [ -n "$$fmt" ]; then echo "gofmt needed: $$fmt"; exit 1; fi
	$(GO) vet ./...

## test: install what is needed and run every test, QEMU scenarios included
test: deps vet
	$(GO) test -count=1 -timeout 60m ./...
	EMBASSY_TEST_DB=postgres $(GO) test -count=1 -timeout 30m ./attest/verifier/
	CGO_ENABLED=1 $(GO) test -count=1 -race -timeout 30m $(RACE_PKGS)

RACE_PKGS ?= ./storage/...

## architecture: regenerate the generated section of docs/architecture.md from go list
architecture:
	$(GO) test -count=1 -run TestArchitectureDoc ./internal/archdoc/ -args -update

## clean: remove build/
clean:
	rm -rf $(BUILD)

-include mk/*.mk
