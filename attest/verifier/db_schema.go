package verifier

import "errors"

// migrations are applied in order; schema_version holds how many ran. Never
// edit a migration that has shipped: append a new one.
var migrations = []string{
	// 1: initial schema.
	`
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE appliances (
	id            TEXT PRIMARY KEY,
	ek_public     BLOB NOT NULL,           -- PKIX DER
	ek_cert       BLOB,                    -- DER, when enrolled from a certificate
	remote_share  BLOB NOT NULL,           -- 32 bytes
	created_at    INTEGER NOT NULL,        -- unix seconds
	created_by    TEXT NOT NULL
);
CREATE TABLE enrollments (                 -- the activated AK, one per appliance
	appliance     TEXT PRIMARY KEY REFERENCES appliances(id),
	ak_public     BLOB NOT NULL,           -- TPMT_PUBLIC
	ak_name       TEXT NOT NULL,
	activated_at  INTEGER NOT NULL
);
CREATE TABLE enroll_sessions (
	id            TEXT PRIMARY KEY,
	appliance     TEXT NOT NULL,
	ak_public     BLOB NOT NULL,
	secret        BLOB NOT NULL,
	expires       INTEGER NOT NULL,        -- unix nanoseconds
	used          INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE baselines (                   -- firmware baseline per appliance
	appliance     TEXT NOT NULL REFERENCES appliances(id),
	pcr           INTEGER NOT NULL,
	value         BLOB NOT NULL,
	PRIMARY KEY (appliance, pcr)
);
CREATE TABLE nonces (
	nonce         BLOB PRIMARY KEY,
	appliance     TEXT NOT NULL,
	expires       INTEGER NOT NULL,        -- unix nanoseconds
	used_at       INTEGER                  -- unix nanoseconds, NULL if unused
);
CREATE INDEX nonces_expires ON nonces(expires);
CREATE TABLE epochs (
	appliance     TEXT PRIMARY KEY REFERENCES appliances(id),
	last_epoch    INTEGER NOT NULL,
	updated_at    INTEGER NOT NULL
);
CREATE TABLE leases (
	appliance     TEXT PRIMARY KEY REFERENCES appliances(id),
	release       TEXT NOT NULL,
	granted_at    INTEGER NOT NULL,
	until         INTEGER NOT NULL
);
CREATE TABLE revocations (
	appliance     TEXT PRIMARY KEY REFERENCES appliances(id),
	revoked_at    INTEGER NOT NULL,
	revoked_by    TEXT NOT NULL,
	reason        TEXT NOT NULL
);
CREATE TABLE release_keys (
	key_id        TEXT PRIMARY KEY,
	public_key    BLOB NOT NULL,
	added_at      INTEGER NOT NULL
);
CREATE TABLE releases (
	digest        TEXT PRIMARY KEY,        -- hex SHA-256 of the payload
	name          TEXT NOT NULL,
	release       TEXT NOT NULL,
	envelope      BLOB NOT NULL,
	published_at  INTEGER NOT NULL,
	published_by  TEXT NOT NULL,
	withdrawn_at  INTEGER
);
CREATE TABLE ek_roots (
	fingerprint   TEXT PRIMARY KEY,        -- hex SHA-256 of the DER
	der           BLOB NOT NULL,
	subject       TEXT NOT NULL
);
CREATE TABLE audit (
	seq           INTEGER PRIMARY KEY,
	time          INTEGER NOT NULL,        -- unix nanoseconds
	actor         TEXT NOT NULL,
	appliance     TEXT NOT NULL,
	action        TEXT NOT NULL,
	outcome       TEXT NOT NULL,
	check_name    TEXT NOT NULL,
	pcr           INTEGER,
	detail        TEXT NOT NULL,
	prev_hash     BLOB NOT NULL,
	hash          BLOB NOT NULL
);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
	BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
	BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
`,
	// 2: the NBD server identity each appliance reported in a quoted
	// heartbeat, for the home state's clients to pin.
	`
CREATE TABLE server_identities (
	appliance     TEXT PRIMARY KEY REFERENCES appliances(id),
	cert          BLOB NOT NULL,           -- DER
	sha256        TEXT NOT NULL,           -- hex sha256 of cert
	release       TEXT NOT NULL,           -- release the reporting boot matched
	recorded_at   INTEGER NOT NULL
);
`,
	// 3: the verifier's share of a remote secret dealt k of n (keys.Deal);
	// remote_share holds its value. Rows enrolled before have no set and
	// are refused at attestation until re-enrolled.
	`
ALTER TABLE appliances ADD COLUMN share_set BLOB;        -- 16 bytes, keys.SetID
ALTER TABLE appliances ADD COLUMN share_k INTEGER;
ALTER TABLE appliances ADD COLUMN share_n INTEGER;
ALTER TABLE appliances ADD COLUMN share_index INTEGER;
ALTER TABLE appliances ADD COLUMN share_commit BLOB;     -- 32 bytes
`,
	// 4: an appliance's newest audit records (its last refusal, on the
	// fleet page and in ApplianceInfo) without scanning the whole log.
	`
CREATE INDEX audit_appliance ON audit(appliance, seq);
`,
}

// SchemaVersion is the schema version this package migrates to.
var SchemaVersion = len(migrations)

// ErrSchemaTooNew reports a database migrated by a newer verifier.
var ErrSchemaTooNew = errors.New("verifier: database schema is newer than this program")
