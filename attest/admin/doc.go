// Package admin is the verifier's operator API: versioned HTTPS/JSON under
// /admin/v1/, on a listener of its own (never the appliances' API), with
// mutual TLS against the operators' CA.
//
// An operator is a client certificate issued by that CA: its subject's
// common name is the operator's identity, its OrganizationalUnit values
// are the operator's roles (internal/pki LeafOptions.Roles). Every
// endpoint needs exactly one role (the table in routes.go, documented in
// docs/admin-api.md); a request without it is refused with 403. Every
// authenticated request leaves one record in the verifier's hash-chained
// audit log, naming the operator as "operator:<CN>": a change by the
// verifier's own record of it, a read by an "admin-read" record, a
// refusal or a failed change by a record of its own.
//
// NewHandler serves the API over a Store (*verifier.DB); Client is its Go
// client, with the same methods as the Store, so embassyctl drives either.
// TLSConfig is the listener's TLS configuration.
package admin
