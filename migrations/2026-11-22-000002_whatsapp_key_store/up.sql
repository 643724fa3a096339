-- What whatsapp-rust persists for one linked device ("store"): Signal
-- identities, sessions, prekeys, sender keys, app-state keys and versions,
-- LID mappings, device lists, tokens, sent messages... One row set per store,
-- every value sealed with AES-256-GCM (the row's identity is the AAD, so a row
-- cannot be moved to another store or key), every key replaced by an HMAC so
-- phone numbers and JIDs never sit in the table in clear.
CREATE TABLE wa_store_entries (
    store_id UUID NOT NULL,
    kind SMALLINT NOT NULL,
    -- HMAC of the entry's key: equality lookups without the key itself.
    lookup BYTEA NOT NULL,
    -- HMACs of grouping keys (a user, a collection, a group, a device) for
    -- lookups and deletes by group.
    grp BYTEA,
    grp2 BYTEA,
    -- Non-personal numbers the store sorts or filters on (prekey ids).
    num BIGINT,
    -- Expiry inputs (unix seconds).
    ts BIGINT,
    ts2 BIGINT,
    flag BOOLEAN NOT NULL DEFAULT FALSE,
    value BYTEA NOT NULL,
    PRIMARY KEY (store_id, kind, lookup)
);
CREATE INDEX wa_store_entries_grp ON wa_store_entries (store_id, kind, grp) WHERE grp IS NOT NULL;
CREATE INDEX wa_store_entries_grp2 ON wa_store_entries (store_id, kind, grp2) WHERE grp2 IS NOT NULL;
CREATE INDEX wa_store_entries_ts ON wa_store_entries (store_id, kind, ts) WHERE ts IS NOT NULL;

CREATE TABLE wa_store_devices (
    store_id UUID PRIMARY KEY,
    value BYTEA NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
