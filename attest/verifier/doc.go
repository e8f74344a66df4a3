// Package verifier is Embassy's remote attestation verifier: the service
// the home state runs (cmd/embassy-verifier) that enrolls appliances, checks
// their TPM quotes and event logs against policy, and grants the remote
// key share only to an appliance that booted a signed release on its
// enrolled TPM.
//
// State lives in SQLite or PostgreSQL (DB): appliances and their EKs,
// activated AKs, firmware baselines, single-use nonces, store epochs,
// leases, revocations, release keys and published releases, and an
// append-only, hash-chained audit log. The operator CLI (embassyctl) uses DB directly on
// the verifier host. Every SQL statement is a DB method (files db*.go, one
// per table family); the Server never sees SQL.
//
// Server serves the appliance-facing HTTPS JSON API (package protocol):
// server.go holds the HTTP plumbing, enroll.go the AK enrolment, nonce.go
// the nonces, attest.go the attestation flow, whose checks of evidence
// (evidence.go) and of the release policy (policy.go) need no database;
// grant.go builds the key grant and lease.go records the decision;
// metrics.go counts the decisions for Prometheus (Metrics, docs/metrics.md).
// Every attestation decision is written to the audit log; every refusal
// names the check that failed and, where one did, the PCR that differed.
// The protocol, the checks and the threat model as built are documented in
// docs/attestation.md.
//
// "Release" always means a signed software release (package
// attest/release); handing the remote share over is a "grant".
package verifier
