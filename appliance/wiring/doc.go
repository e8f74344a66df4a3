// Package wiring adapts Embassy's real components to the interfaces the
// appliance's boot sequence consumes, and to each other: the authenticated
// store (storage.Format/Open, bound to a monotonic counter; storage.go),
// the store as an NBD backend (backend.go), the NBD server over mutual TLS
// (storage/nbd; export.go) and attestation to the verifier (attest/measure
// and attest/agent; attest.go). Packages storage, storage/nbd and
// attest/agent know nothing of each other or of the appliance: this is
// the one place they meet.
package wiring
