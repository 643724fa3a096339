-- Media a tenant uploaded (or the gateway fetched from a `media_url`) to send. The bytes
-- live here, in the system of record, so a queued media message survives a crash exactly
-- like a text: the session's actor uploads them to WhatsApp when it sends. One upload may
-- be sent to many recipients. `session_id` is not a foreign key (history outlives a
-- deleted session unless purged); a tenant's deletion takes its media with it.
CREATE TABLE media (
    id UUID PRIMARY KEY,
    tenant_id UUID NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    session_id UUID NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('image', 'video', 'audio', 'document')),
    -- The type found in the content itself, not the one the client declared.
    mime_type TEXT NOT NULL,
    file_name TEXT,
    size BIGINT NOT NULL,
    -- SHA-256 of the bytes, hex: what a recipient's decrypted copy must hash to.
    sha256 TEXT NOT NULL,
    bytes BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX media_session_idx ON media (session_id, created_at);
CREATE INDEX media_created_idx ON media (created_at);
-- The sweeper asks whether a queued message still needs an upload.
CREATE INDEX messages_media_idx ON messages ((body ->> 'media_id')) WHERE body ? 'media_id';
